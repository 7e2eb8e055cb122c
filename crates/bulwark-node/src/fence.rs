//! Layout fencing (docs/design/sharding.md, section 3): the node's `min_layout`. A call
//! routed with an older layout (`BW.AT <layout> <command> …`) is refused and changes
//! nothing, so a gateway holding a stale map can never write where a key no longer lives.
//!
//! `BW.FENCE <layout>` raises the minimum (never lowers it) and replies only once the new
//! value is durable in `<dir>/layout.fence` and every fenced call admitted under the old
//! value has finished: calls hold a read guard while they run, the fence takes the write
//! guard. So "fence acknowledged" means "no older call is running or will run here".

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{RwLock, RwLockReadGuard};

/// The file, in the node's data directory.
pub const FENCE_FILE: &str = "layout.fence";

/// The node's `min_layout` and where it is kept.
#[derive(Debug)]
pub struct Fence {
    min: RwLock<u64>,
    /// The same value, readable without waiting for a fence being raised (INFO).
    shown: AtomicU64,
    path: PathBuf,
}

impl Fence {
    /// Reads `<dir>/layout.fence` (absent: 0, nothing fenced). A file that is not one
    /// decimal number is an error naming it: a node must not forget a fence it took.
    pub fn open(dir: &Path) -> Result<Fence, String> {
        let path = dir.join(FENCE_FILE);
        let min = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|e| format!("{}: not a layout version ({e}): {text:?}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Fence {
            min: RwLock::new(min),
            shown: AtomicU64::new(min),
            path,
        })
    }

    /// Admits a call routed with `layout`: a guard to hold while it runs, or the minimum
    /// it is older than.
    pub async fn admit(&self, layout: u64) -> Result<RwLockReadGuard<'_, u64>, u64> {
        let guard = self.min.read().await;
        if layout < *guard {
            return Err(*guard);
        }
        Ok(guard)
    }

    /// Raises the minimum to `layout` (if higher) once every admitted call has finished,
    /// durably; returns the minimum now in force.
    pub async fn raise(&self, layout: u64) -> std::io::Result<u64> {
        let mut guard = self.min.write().await;
        if layout > *guard {
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || write_durably(&path, layout))
                .await
                .map_err(std::io::Error::other)??;
            *guard = layout;
            self.shown.store(layout, Ordering::Relaxed);
        }
        Ok(*guard)
    }

    /// The minimum in force (INFO `layout_fence`).
    pub fn current(&self) -> u64 {
        self.shown.load(Ordering::Relaxed)
    }
}

/// Temporary file, fsync, rename, fsync the directory: a crash leaves the old value or
/// the new one.
fn write_durably(path: &Path, layout: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("fence.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{layout}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn raises_durably_never_lowers_and_refuses_older_calls() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Fence::open(dir.path()).unwrap();
        assert!(fence.admit(0).await.is_ok());
        assert_eq!(fence.raise(3).await.unwrap(), 3);
        assert_eq!(fence.raise(2).await.unwrap(), 3);
        assert_eq!(fence.admit(2).await.unwrap_err(), 3);
        assert!(fence.admit(3).await.is_ok());
        let again = Fence::open(dir.path()).unwrap();
        assert_eq!(again.current(), 3);
        std::fs::write(dir.path().join(FENCE_FILE), "three\n").unwrap();
        let e = Fence::open(dir.path()).unwrap_err();
        assert!(e.contains("layout.fence") && e.contains("three"), "{e}");
    }

    #[tokio::test]
    async fn a_fence_waits_for_the_calls_it_fences() {
        let dir = tempfile::tempdir().unwrap();
        let fence = std::sync::Arc::new(Fence::open(dir.path()).unwrap());
        let running = fence.admit(1).await.unwrap();
        let raising = tokio::spawn({
            let fence = fence.clone();
            async move { fence.raise(2).await.unwrap() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !raising.is_finished(),
            "the fence waited for the running call"
        );
        drop(running);
        assert_eq!(raising.await.unwrap(), 2);
    }
}
