//! Logging setup: text or JSON lines on stderr, level from `--log-level`.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. A filter that does not parse falls back to
/// `info` with a warning rather than failing the command.
pub fn init(format: LogFormat, level: &str) {
    let (filter, bad) = match EnvFilter::try_new(level) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    // Colour codes only for a person at a terminal, never into a pipe or a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    if result.is_err() {
        return; // already installed (tests)
    }
    if let Some(e) = bad {
        tracing::warn!(level, error = %e, "invalid --log-level, using info");
    }
}
