//! JSON logging setup.

use tracing_subscriber::EnvFilter;

/// Installs the process-wide JSON logger at `directive` (`info`, `debug`, …: a
/// `tracing` level name, from `bulwark_config::LogLevel::directive`). Events are flattened so a line reads
/// `{"timestamp":…,"level":"INFO","event":"REQUEST_COMPLETED","latency_ms":1.5,…}`.
///
/// Calling it twice is harmless (the second call is ignored), so tests may call it.
pub fn init(directive: &str) {
    init_with_writer(directive, std::io::stdout);
}

/// [`init`], writing each JSON line to `writer` instead of stdout (the supervisor, whose
/// stdout is a person's terminal, logs to a file).
pub fn init_with_writer<W>(directive: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
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
