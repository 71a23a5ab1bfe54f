//! Observability: logging set-up (human or JSON lines on stderr, filtered by `RUST_LOG` or
//! `[log] filter`) and Prometheus metrics ([`metrics`]).

pub mod metrics;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Logs go to stderr so stdout stays for the `ready` line.
/// Calling it twice is harmless (the second call does nothing).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
