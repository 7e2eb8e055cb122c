//! JSON logging setup.

use tracing_subscriber::EnvFilter;

/// Log levels accepted in `LOG_LEVEL` (case-insensitive; `WARNING` is an alias of `WARN`,
/// as the seeds use Python's names).
pub const LEVELS: &[&str] = &[
    "TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL",
];

/// Maps a `LOG_LEVEL` value to a tracing level name, or `None` if it is not a level.
pub fn parse_level(level: &str) -> Option<&'static str> {
    match level.to_ascii_uppercase().as_str() {
        "TRACE" => Some("trace"),
        "DEBUG" => Some("debug"),
        "INFO" => Some("info"),
        "WARN" | "WARNING" => Some("warn"),
        "ERROR" | "CRITICAL" => Some("error"),
        _ => None,
    }
}

/// Installs the process-wide JSON logger at `level` (already validated with
/// [`parse_level`]). Events are flattened so a line reads
/// `{"timestamp":…,"level":"INFO","event":"REQUEST_COMPLETED","latency_ms":1.5,…}`.
///
/// Calling it twice is harmless (the second call is ignored), so tests may call it.
pub fn init(level: &str) {
    init_with_writer(level, std::io::stdout);
}

/// [`init`], writing each JSON line to `writer` instead of stdout (the supervisor, whose
/// stdout is a person's terminal, logs to a file).
pub fn init_with_writer<W>(level: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let directive = parse_level(level).unwrap_or("info");
    // Our own crates log at the chosen level; dependencies only warn and above, so a
    // DEBUG run is not drowned in hyper's connection chatter.
    let filter = EnvFilter::new(format!("warn,bulwark={directive}"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_python_style_level_names() {
        assert_eq!(parse_level("warning"), Some("warn"));
        assert_eq!(parse_level("INFO"), Some("info"));
        assert_eq!(parse_level("critical"), Some("error"));
        assert_eq!(parse_level("loud"), None);
    }
}
