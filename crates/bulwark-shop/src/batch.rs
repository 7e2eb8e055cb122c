//! Group commit: a task that takes every queued operation (up to a bound), runs them as
//! one batch (one transaction) and answers each. While one batch commits, the next
//! one queues, so the number of transactions per second is bounded by commit latency,
//! not by the number of operations.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// One queued operation and where to send its answer.
type Job<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// The sending side of a batching task. Cloning is cheap; the task stops when every
/// clone is dropped (after finishing the batches already queued).
#[derive(Debug)]
pub struct Batcher<Req, Resp> {
    tx: mpsc::Sender<Job<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

/// The batching task is gone (the service is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("batching task stopped")]
pub struct Closed;

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the task: `run` gets each batch (at most `max_batch` operations, in arrival
    /// order) and returns one answer per operation, in the same order. `capacity` bounds
    /// the queue.
    pub fn spawn<F, Fut>(
        stage: &'static str,
        capacity: usize,
        max_batch: usize,
        tracker: &tokio_util::task::TaskTracker,
        mut run: F,
    ) -> Batcher<Req, Resp>
    where
        F: FnMut(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Resp>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Job<Req, Resp>>(capacity);
        let m = bulwark_obs::metrics::metrics();
        let sizes = m.shop_batch_size.with_label_values(&[stage]);
        let times = m.shop_batch_seconds.with_label_values(&[stage]);
        tracker.spawn(async move {
            let mut jobs = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut jobs, max_batch).await > 0 {
                let (reqs, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) =
                    jobs.drain(..).unzip();
                sizes.observe(reqs.len() as f64);
                let started = std::time::Instant::now();
                let answers = run(reqs).await;
                times.observe(started.elapsed().as_secs_f64());
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // The caller may have given up (timeout, client gone): nothing to do.
                    let _ = reply.send(answer);
                }
            }
        });
        Batcher { tx }
    }

    /// Queues `req` (waiting for room) and waits for its answer.
    pub async fn call(&self, req: Req) -> Result<Resp, Closed> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((req, reply)).await.map_err(|_| Closed)?;
        answer.await.map_err(|_| Closed)
    }
}

/// The answers of a batch that a fast path answered in part: each slot it filled, else
/// (in order) the next of `rest`, which `finish` gives for the operations it left, in
/// their order. `finish` runs only when some are left.
pub(crate) async fn merge_answers<Op, T, E>(
    answers: Vec<Option<Result<T, E>>>,
    left: Vec<Op>,
    finish: impl AsyncFnOnce(Vec<Op>) -> Vec<Result<T, E>>,
    missing: impl Fn() -> E,
) -> Vec<Result<T, E>> {
    let mut rest = if left.is_empty() {
        Vec::new().into_iter()
    } else {
        finish(left).await.into_iter()
    };
    answers
        .into_iter()
        .map(|a| a.or_else(|| rest.next()).unwrap_or_else(|| Err(missing())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn merges_queued_operations_and_answers_each_in_order() {
        let tracker = tokio_util::task::TaskTracker::new();
        let batches = Arc::new(AtomicUsize::new(0));
        let seen = batches.clone();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = gate.clone();
        let b: Batcher<u32, u32> = Batcher::spawn("test", 100, 8, &tracker, move |reqs| {
            seen.fetch_add(1, Ordering::SeqCst);
            let g = g.clone();
            async move {
                // Hold the first batch until everything else is queued.
                let _ = g.acquire().await.map(|p| p.forget());
                reqs.into_iter().map(|r| r * 10).collect()
            }
        });
        let calls: Vec<_> = (0..20u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.call(i).await })
            })
            .collect();
        // On this single-threaded runtime, yielding lets every spawned call queue (and the
        // batcher take its first batch and wait at the gate) before we go on.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(b.tx.capacity() <= 100 - 12, "the other calls are queued");
        gate.add_permits(100);
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap(), Ok(i as u32 * 10));
        }
        // 20 operations, at most 8 per batch, the first batch taken alone: 1 + 8 + 8 + 3.
        let n = batches.load(Ordering::SeqCst);
        assert!((3..=4).contains(&n), "{n} batches");
    }

    #[tokio::test]
    async fn merged_answers_keep_the_order_of_the_batch() {
        let fast = vec![Some(Ok(1)), None, Some(Ok(3)), None];
        let merged = merge_answers(
            fast,
            vec![20, 40],
            async |left: Vec<i32>| left.into_iter().map(|x| Ok(x / 10)).collect(),
            || "missing",
        )
        .await;
        assert_eq!(merged, vec![Ok(1), Ok(2), Ok(3), Ok(4)]);
        // Nothing left: `finish` is not called; a slot it should have filled is an error.
        let merged = merge_answers(
            vec![Some(Ok(1)), None],
            Vec::<i32>::new(),
            async |_| panic!("nothing was left"),
            || "missing",
        )
        .await;
        assert_eq!(merged, vec![Ok(1), Err("missing")]);
    }
}
