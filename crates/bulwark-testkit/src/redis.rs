//! A real `redis-server` managed by a test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{free_port, wait_for};

/// The binary the tests run (Debian's package; v7.0 on the project's machines).
const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// How long a start may take before the test fails.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How long a graceful stop may take before the process is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Ports tried when the first free port is taken before redis-server binds it.
const START_ATTEMPTS: usize = 3;

/// What the server does with writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// `--appendonly yes --appendfsync always`: every write is fsynced before the reply,
    /// so a restart (even after SIGKILL) keeps every acknowledged write.
    AofAlways,
    /// No AOF and no snapshots: a restart starts empty.
    None,
}

/// How to start a [`RedisServer`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Durability of writes.
    pub persistence: Persistence,
    /// Further `--name value` arguments, appended as given.
    pub extra_args: Vec<String>,
}

impl Default for RedisOptions {
    /// Durable (AOF, fsync always), as the replicas run in production.
    fn default() -> Self {
        RedisOptions {
            persistence: Persistence::AofAlways,
            extra_args: Vec::new(),
        }
    }
}

/// A `redis-server` process on a free loopback port with its own temporary directory.
/// Killed (SIGKILL) when dropped; the directory is removed then too.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    opts: RedisOptions,
    /// Working directory (AOF files); kept across restarts so data survives them.
    dir: tempfile::TempDir,
    /// The running process; `None` after stop/kill.
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING. Panics if it cannot.
    pub async fn start(opts: RedisOptions) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("bulwark-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let mut server = RedisServer {
            port: 0,
            opts,
            dir,
            child: None,
        };
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.spawn().await {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// The port it listens on (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its working directory (the AOF lives here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running (started and not stopped or killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Graceful stop (SIGTERM, as `SHUTDOWN` does), waiting for the process to exit;
    /// killed if it takes longer than 10 s.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = pid_of(&child);
            let _ = kill(pid, Signal::SIGCONT); // a paused server cannot handle SIGTERM
            let _ = kill(pid, Signal::SIGTERM);
            let exited = wait_for(STOP_DEADLINE, || {
                let done = matches!(child.try_wait(), Ok(Some(_)));
                async move { done }
            })
            .await;
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Immediate crash (SIGKILL), reaping the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, then starts it again on the same port and directory
    /// (so an AOF-persisted server comes back with its data). Panics if it cannot.
    pub async fn restart(&mut self) {
        self.stop().await;
        // The port was just released by our own process; retry briefly in case the
        // kernel has not let go of it yet.
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match self.spawn().await {
                Ok(()) => return,
                Err(e) => last_error = e,
            }
        }
        panic!(
            "redis-server did not restart on port {}: {last_error}",
            self.port
        );
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing is answered. For
    /// tests of hung replicas.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            let _ = kill(pid_of(child), Signal::SIGSTOP);
        }
    }

    /// Thaws a [`Self::pause`]d process (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            let _ = kill(pid_of(child), Signal::SIGCONT);
        }
    }

    /// Starts the process and waits for PING; on failure the process is gone.
    async fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"));
        match self.opts.persistence {
            Persistence::AofAlways => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
            Persistence::None => cmd.args(["--appendonly", "no"]),
        };
        cmd.args(&self.opts.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {REDIS_SERVER}: {e}"))?;
        let addr = self.addr();
        let up = wait_for(START_DEADLINE, || {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            let addr = addr.clone();
            async move { exited || ping(&addr).await }
        })
        .await;
        if up && matches!(child.try_wait(), Ok(None)) {
            self.child = Some(child);
            return Ok(());
        }
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        Err(format!(
            "port {} not answering PING (log tail: {})",
            self.port,
            log.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        ))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

/// Whether a RESP `PING` on `addr` gets `+PONG` within 500 ms.
async fn ping(addr: &str) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn set_then_get(addr: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 12];
        s.read_exact(&mut buf).await.expect("read");
        buf
    }

    #[tokio::test]
    async fn aof_server_keeps_data_across_kill_and_restart_and_can_pause() {
        let mut r = RedisServer::start(RedisOptions::default()).await;
        assert_eq!(set_then_get(&r.addr()).await, b"+OK\r\n$1\r\nv\r\n");
        r.kill();
        assert!(!ping(&r.addr()).await);
        r.restart().await;
        let mut s = TcpStream::connect(r.addr()).await.expect("connect");
        s.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 7];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(
            buf, b"$1\r\nv\r\n",
            "acknowledged write lost across SIGKILL"
        );

        r.pause();
        assert!(!ping(&r.addr()).await, "paused server answered");
        r.resume();
        assert!(wait_for(Duration::from_secs(5), || ping_owned(r.addr())).await);
        r.stop().await;
        assert!(!r.is_running());
    }

    async fn ping_owned(addr: String) -> bool {
        ping(&addr).await
    }
}
