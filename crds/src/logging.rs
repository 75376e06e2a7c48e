//! The log setup `edge-agent` and `edge-operator` share: to stderr, filtered by `RUST_LOG`,
//! as text or as JSON.
//!
//! - **Text** (the default) uses colors only when stderr is a terminal, so `kubectl logs`
//!   and journald never show escape sequences.
//! - **JSON** (`--log-format json`, or `EDGEPIPE_LOG_FORMAT=json`; in a cluster
//!   `spec.agent.logFormat` and the chart's `logFormat`) writes one object per line for
//!   Loki, Fluent Bit and the like, with stable fields: `timestamp` (RFC 3339), `level`,
//!   `target`, `message`, and each event field by its name.

use std::io::IsTerminal;

pub use crate::spec::LogFormat;

/// The environment variable that chooses the format when no flag does.
pub const FORMAT_ENV: &str = "EDGEPIPE_LOG_FORMAT";

/// The format to use: `flag` when given, else [`FORMAT_ENV`] when it holds a valid
/// format, else text.
pub fn choose(flag: Option<LogFormat>, env: Option<&str>) -> LogFormat {
    flag.or_else(|| env.and_then(|v| v.parse().ok()))
        .unwrap_or_default()
}

/// The `--log-format` flag both command lines take (`#[command(flatten)]`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// Log lines as `text` or `json` (default: `EDGEPIPE_LOG_FORMAT`, else text).
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl LogArgs {
    /// Installs the global subscriber with this flag (see [`init`]).
    pub fn init(&self, default_filter: &str) {
        init(default_filter, self.log_format);
    }
}

/// Installs the global subscriber: `RUST_LOG`, else `default_filter`; `format` from
/// [`choose`] with the process environment.
pub fn init(default_filter: &str, flag: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let env = std::env::var(FORMAT_ENV).ok();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match choose(flag, env.as_deref()) {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_environment_then_text() {
        assert_eq!(choose(Some(LogFormat::Json), Some("text")), LogFormat::Json);
        assert_eq!(choose(None, Some("JSON")), LogFormat::Json);
        assert_eq!(choose(None, Some("yaml")), LogFormat::Text);
        assert_eq!(choose(None, None), LogFormat::Text);
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
