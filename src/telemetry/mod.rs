//! Observability: logging (human or JSON lines on stderr, filtered by `RUST_LOG` or
//! `[log] filter`), Prometheus metrics ([`metrics`]) and OpenTelemetry export ([`otel`]).

pub mod metrics;
pub mod otel;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber: log lines to stderr (stdout stays for the `ready` line)
/// and, when `otel` is given, OpenTelemetry spans filtered by `otel_filter`. Calling it
/// twice is harmless (the second call does nothing).
pub fn init(config: &LogConfig, otel: Option<&otel::Otel>, otel_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match config.format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let otel = otel.map(|o| {
        o.layer()
            .with_filter(EnvFilter::try_new(otel_filter).unwrap_or_else(|_| EnvFilter::new("info")))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
}
