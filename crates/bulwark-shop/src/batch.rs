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
        let metrics = bulwark_obs::metrics::metrics().shop_batch_stage(stage);
        tracker.spawn(async move {
            let mut jobs = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut jobs, max_batch).await > 0 {
                let (reqs, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) =
                    jobs.drain(..).unzip();
                let (size, started) = (reqs.len(), std::time::Instant::now());
                let answers = run(reqs).await;
                metrics.observe(size, started.elapsed());
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

/// Answers a batch in order, fast path first: `fast` answers an operation, or gives
/// `None` to leave it; the operations left go, in their order, to `finish` (called only
/// when some are left), whose answers fill their slots. A slot `finish` did not fill
/// gets `missing()`.
pub(crate) async fn answer_fast_first<Op, T, E>(
    ops: Vec<Op>,
    mut fast: impl FnMut(&Op) -> Option<Result<T, E>>,
    finish: impl AsyncFnOnce(Vec<Op>) -> Vec<Result<T, E>>,
    missing: impl Fn() -> E,
) -> Vec<Result<T, E>> {
    let mut answers = Vec::with_capacity(ops.len());
    let mut left = Vec::new();
    for op in ops {
        let answer = fast(&op);
        if answer.is_none() {
            left.push(op);
        }
        answers.push(answer);
    }
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
        let small = |x: &i32| (*x < 10).then_some(Ok(*x));
        let merged = answer_fast_first(
            vec![1, 20, 3, 40],
            small,
            async |left: Vec<i32>| left.into_iter().map(|x| Ok(x / 10)).collect(),
            || "missing",
        )
        .await;
        assert_eq!(merged, vec![Ok(1), Ok(2), Ok(3), Ok(4)]);
        // A slot `finish` did not fill is an error.
        let merged =
            answer_fast_first(vec![1, 20], small, async |_| Vec::new(), || "missing").await;
        assert_eq!(merged, vec![Ok(1), Err("missing")]);
        // Nothing left: `finish` is not called.
        let merged = answer_fast_first(
            vec![1],
            small,
            async |_| panic!("nothing was left"),
            || "missing",
        )
        .await;
        assert_eq!(merged, vec![Ok(1)]);
    }
}
