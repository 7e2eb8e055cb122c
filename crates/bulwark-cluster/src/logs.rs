//! Service logs: each child's stdout and stderr go, unchanged, to `<data>/logs/<name>.log`
//! (the stand-in for `docker logs`), and optionally to the terminal as a readable merged
//! stream (`app_ap  | INFO  REQUEST_COMPLETED method=POST … latency_ms=1.50`).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};

/// Longest line kept whole; a longer one is cut into pieces of this size, so a child that
/// never writes a newline cannot make the supervisor's memory grow.
pub const MAX_LINE: usize = 64 * 1024;

/// ANSI colours cycled over services, as docker-compose does.
const COLOURS: &[&str] = &["36", "33", "32", "35", "34", "96", "93", "92", "95", "94"];

/// How one service's lines are shown on the terminal.
#[derive(Debug, Clone)]
pub struct Echo {
    /// `app_ap  | `, padded to the longest service name, coloured when on a TTY.
    prefix: String,
    /// The service name, to leave out a redundant `service=` field.
    service: String,
    /// Colour the level (ERROR red, WARN yellow).
    colour: bool,
}

impl Echo {
    /// Echo settings for service number `index` of `width`-wide names. Colours are used
    /// only when stdout is a terminal.
    pub fn new(service: &str, index: usize, width: usize) -> Echo {
        let colour = std::io::stdout().is_terminal();
        let padded = format!("{service:<width$} |");
        let prefix = if colour {
            let c = COLOURS[index % COLOURS.len()];
            format!("\x1b[{c}m{padded}\x1b[0m ")
        } else {
            format!("{padded} ")
        };
        Echo {
            prefix,
            service: service.to_owned(),
            colour,
        }
    }

    /// Queues a message of the supervisor about this service for the terminal.
    pub fn note(&self, text: &str) {
        terminal_line(format!("{}-- {text}\n", self.prefix));
    }

    /// Queues one raw line, formatted, for the terminal.
    fn print(&self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        terminal_line(format!(
            "{}{}\n",
            self.prefix,
            format_line(&text, &self.service, self.colour)
        ));
    }
}

/// `up`'s own log lines (it has no stdout pump: its stdout is the terminal): each event
/// becomes one line appended to the log file and, when echoing, one formatted terminal
/// line. A `tracing` writer: the formatter writes an event into an [`OwnLine`], which is
/// flushed as a whole when dropped.
#[derive(Debug)]
pub struct OwnLog {
    file: std::sync::Mutex<std::fs::File>,
    echo: Option<Echo>,
}

impl OwnLog {
    /// Appends to `file`; echoes with `echo` when given.
    pub fn new(file: std::fs::File, echo: Option<Echo>) -> OwnLog {
        OwnLog {
            file: std::sync::Mutex::new(file),
            echo,
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for OwnLog {
    type Writer = OwnLine<'a>;

    fn make_writer(&'a self) -> OwnLine<'a> {
        OwnLine {
            log: self,
            buf: Vec::new(),
        }
    }
}

/// One event being formatted for [`OwnLog`].
#[derive(Debug)]
pub struct OwnLine<'a> {
    log: &'a OwnLog,
    buf: Vec<u8>,
}

impl std::io::Write for OwnLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for OwnLine<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.buf.last() != Some(&b'\n') {
            self.buf.push(b'\n');
        }
        // The control-plane events are rare; a short blocking append is fine. A failing
        // disk must not take the supervisor down: the error is ignored.
        if let Ok(mut f) = self.log.file.lock() {
            let _ = f.write_all(&self.buf);
        }
        if let Some(echo) = &self.log.echo {
            echo.print(&self.buf[..self.buf.len() - 1]);
        }
    }
}

/// Lines waiting for the terminal writer thread.
const TERMINAL_QUEUE: usize = 4096;

/// The terminal writer: a thread fed by a bounded queue, so a slow or paused terminal
/// (`bulwark up | less`) never blocks the runtime. The echo is best-effort: when the queue
/// is full, lines are dropped (and counted) — the log files are the record.
struct Terminal {
    tx: SyncSender<String>,
    dropped: AtomicU64,
}

fn terminal_line(line: String) {
    static TERMINAL: OnceLock<Option<Terminal>> = OnceLock::new();
    let terminal = TERMINAL.get_or_init(|| {
        let (tx, rx) = sync_channel::<String>(TERMINAL_QUEUE);
        std::thread::Builder::new()
            .name("bulwark-up-terminal".to_owned())
            .spawn(move || {
                for line in rx {
                    // A closed terminal must not take the supervisor down: errors are ignored.
                    let _ = std::io::stdout().lock().write_all(line.as_bytes());
                }
            })
            .ok()
            .map(|_| Terminal {
                tx,
                dropped: AtomicU64::new(0),
            })
    });
    let Some(t) = terminal else { return };
    let dropped = t.dropped.load(Ordering::Relaxed);
    if dropped > 0
        && t.tx
            .try_send(format!(
                "… {dropped} log lines not shown (terminal too slow; see the log files)\n"
            ))
            .is_ok()
    {
        t.dropped.fetch_sub(dropped, Ordering::Relaxed);
    }
    if let Err(TrySendError::Full(_)) = t.tx.try_send(line) {
        t.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies a child's stdout and stderr into its log file (appending: restarts keep history)
/// and to the terminal, line by line, until both reach end of file.
///
/// Only whole lines are written, so lines of the two streams never interleave mid-line.
pub async fn pump(
    stdout: impl AsyncRead + Unpin,
    stderr: impl AsyncRead + Unpin,
    file: PathBuf,
    echo: Option<Echo>,
) {
    let mut out = match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .await
    {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("bulwark up: cannot open log file {}: {e}", file.display());
            None
        }
    };
    let (mut a, mut b) = (LineSplitter::new(stdout), LineSplitter::new(stderr));
    let mut open = [true, true];
    while open.iter().any(|o| *o) {
        let (which, lines) = tokio::select! {
            r = a.next_batch(), if open[0] => (0, r),
            r = b.next_batch(), if open[1] => (1, r),
        };
        let lines = match lines {
            Some(lines) => lines,
            None => {
                open[which] = false;
                continue;
            }
        };
        if let Some(f) = out.as_mut() {
            let mut batch = Vec::new();
            for l in &lines {
                batch.extend_from_slice(l);
                batch.push(b'\n');
            }
            if let Err(e) = async {
                f.write_all(&batch).await?;
                f.flush().await
            }
            .await
            {
                eprintln!("bulwark up: cannot write log file {}: {e}", file.display());
                out = None;
            }
        }
        if let Some(echo) = &echo {
            for l in &lines {
                echo.print(l);
            }
        }
    }
}

/// Splits a byte stream into lines, returning every complete line available after each read.
struct LineSplitter<R> {
    reader: R,
    /// Bytes of an unfinished line (at most [`MAX_LINE`]).
    carry: Vec<u8>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineSplitter<R> {
    fn new(reader: R) -> Self {
        LineSplitter {
            reader,
            carry: Vec::new(),
            eof: false,
        }
    }

    /// The next non-empty batch of lines (without their `\n`), or `None` at end of stream.
    async fn next_batch(&mut self) -> Option<Vec<Vec<u8>>> {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            if self.eof {
                return None;
            }
            let n = self.reader.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                self.eof = true;
                if self.carry.is_empty() {
                    return None;
                }
                return Some(vec![std::mem::take(&mut self.carry)]);
            }
            let mut lines = Vec::new();
            for &byte in &chunk[..n] {
                if byte == b'\n' {
                    let mut line = std::mem::take(&mut self.carry);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    lines.push(line);
                } else {
                    self.carry.push(byte);
                    if self.carry.len() >= MAX_LINE {
                        lines.push(std::mem::take(&mut self.carry));
                    }
                }
            }
            if !lines.is_empty() {
                return Some(lines);
            }
        }
    }
}

/// Renders one log line for humans: a JSON object becomes `LEVEL EVENT key=value …`,
/// keeping the fields in the order they were emitted; anything else passes through.
pub fn format_line(raw: &str, service: &str, colour: bool) -> String {
    let trimmed = raw.trim_end();
    let fields = match parse_ordered(trimmed) {
        Some(f) => f,
        None => return trimmed.to_owned(),
    };
    let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let level = get("level")
        .map(plain)
        .unwrap_or_default()
        .to_ascii_uppercase();
    let mut out = String::new();
    if !level.is_empty() {
        let padded = format!("{level:<5}");
        let code = match level.as_str() {
            "ERROR" | "CRITICAL" => Some("31"),
            "WARN" | "WARNING" => Some("33"),
            _ => None,
        };
        match code {
            Some(c) if colour => {
                let _ = write!(out, "\x1b[{c}m{padded}\x1b[0m ");
            }
            _ => {
                let _ = write!(out, "{padded} ");
            }
        }
    }
    let event = get("event").map(plain);
    if let Some(e) = &event {
        out.push_str(e);
    }
    for (key, value) in &fields {
        let skip = matches!(key.as_str(), "timestamp" | "level" | "event" | "message")
            || (key == "service" && plain(value) == service);
        if skip {
            continue;
        }
        if !out.ends_with(' ') && !out.is_empty() {
            out.push(' ');
        }
        let v = plain(value);
        if v.contains(' ') || v.is_empty() {
            let _ = write!(out, "{key}={v:?}");
        } else {
            let _ = write!(out, "{key}={v}");
        }
    }
    if let Some(m) = get("message") {
        if !out.ends_with(' ') && !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&plain(m));
    }
    out.trim_end().to_owned()
}

/// A JSON value as text: strings without quotes, everything else as compact JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses a JSON object into its fields in document order (`serde_json::Map` would sort
/// them, and enabling `preserve_order` would change map order for the whole workspace).
fn parse_ordered(line: &str) -> Option<Vec<(String, Value)>> {
    if !line.starts_with('{') {
        return None;
    }
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Vec<(String, Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, Value>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(line);
    let fields = (&mut de).deserialize_map(Fields).ok()?;
    de.end().ok()?;
    Some(fields)
}

/// The log file of service `name` under `log_dir`.
pub fn log_path(log_dir: &Path, name: &str) -> PathBuf {
    log_dir.join(format!("{name}.log"))
}

/// Reads the lines of a log file that contain `grep` (all when `None`), and passes them to
/// `each`; with `tail`, only the last `tail` matching lines (kept in a bounded queue, so a
/// large file is streamed, never loaded whole).
pub async fn read_log(
    path: &Path,
    grep: Option<&str>,
    tail: Option<usize>,
    mut each: impl FnMut(&str),
) -> std::io::Result<()> {
    let file = tokio::fs::File::open(path).await?;
    let mut lines = BufReader::new(file).lines();
    let mut last: VecDeque<String> = VecDeque::new();
    while let Some(line) = lines.next_line().await? {
        if grep.is_some_and(|g| !line.contains(g)) {
            continue;
        }
        match tail {
            None => each(&line),
            Some(0) => {}
            Some(n) => {
                if last.len() == n {
                    last.pop_front();
                }
                last.push_back(line);
            }
        }
    }
    last.iter().for_each(|l| each(l));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_become_readable_in_emitted_order() {
        let raw = r#"{"timestamp":"2025-01-01T00:00:00Z","level":"INFO","event":"REQUEST_COMPLETED","method":"POST","path":"/write/K/V","status":200,"latency_ms":"1.50"}"#;
        assert_eq!(
            format_line(raw, "app_ap", false),
            "INFO  REQUEST_COMPLETED method=POST path=/write/K/V status=200 latency_ms=1.50"
        );
    }

    #[test]
    fn messages_services_and_plain_text() {
        let raw =
            r#"{"level":"WARN","message":"hint queue full","service":"app_ap","node":"db_g2"}"#;
        assert_eq!(
            format_line(raw, "app_ap", false),
            "WARN  node=db_g2 hint queue full"
        );
        assert_eq!(
            format_line("1:M 01 Jan Ready to accept", "db_g1", false),
            "1:M 01 Jan Ready to accept"
        );
        assert_eq!(format_line("{not json", "x", false), "{not json");
    }

    #[tokio::test]
    async fn pump_writes_whole_lines_of_both_streams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("svc.log");
        let out: &[u8] = b"one\ntwo\npartial";
        let err: &[u8] = b"e1\n";
        pump(out, err, file.clone(), None).await;
        let text = std::fs::read_to_string(&file).expect("log");
        let mut lines: Vec<_> = text.lines().collect();
        lines.sort();
        assert_eq!(lines, ["e1", "one", "partial", "two"]);
        let mut got = Vec::new();
        read_log(&file, Some("o"), Some(1), |l| got.push(l.to_owned()))
            .await
            .expect("read");
        assert_eq!(got, ["two"]);
    }
}
