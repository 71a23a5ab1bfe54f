//! OpenTelemetry: traces (every `tracing` span at or above the configured level) and metrics
//! (the node counters), exported over OTLP/HTTP (JSON). Off unless `[telemetry] otlp_endpoint`
//! or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `OTEL_SDK_DISABLED=true` turns it off.
//! The other standard `OTEL_*` variables (headers, timeouts, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`) are read by the SDK.
//!
//! Trace context crosses the mesh hop as a W3C `traceparent` carried in peer frames, so one
//! publish can be followed from its origin to a subscriber in another region
//! ([`traceparent`], [`with_remote_parent`]).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetryConfig;
use crate::hub::Counters;

/// The exporters; flushed and stopped by [`Otel::shutdown`].
#[derive(Debug, Clone)]
pub struct Otel {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
}

/// Whether export is configured, and where to (None: the exporter's env/default).
fn endpoint(config: &TelemetryConfig) -> Option<Option<String>> {
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    match &config.otlp_endpoint {
        Some(e) => Some(Some(e.clone())),
        None => std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").map(|_| None),
    }
}

impl Otel {
    /// Builds the providers when export is configured.
    pub fn new(
        config: &TelemetryConfig,
        node_id: &str,
        region: &str,
    ) -> anyhow::Result<Option<Otel>> {
        let Some(base) = endpoint(config) else {
            return Ok(None);
        };
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attributes([
                KeyValue::new("service.instance.id", node_id.to_string()),
                KeyValue::new("cloud.region", region.to_string()),
            ])
            .build();
        let signal = |path: &str| {
            base.as_ref()
                .map(|b| format!("{}/v1/{path}", b.trim_end_matches('/')))
        };
        let mut spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson);
        if let Some(url) = signal("traces") {
            spans = spans.with_endpoint(url);
        }
        let mut metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson);
        if let Some(url) = signal("metrics") {
            metrics = metrics.with_endpoint(url);
        }
        let tracer = SdkTracerProvider::builder()
            .with_batch_exporter(spans.build()?)
            .with_resource(resource.clone())
            .build();
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(metrics.build()?)
            .with_interval(Duration::from_secs(config.metrics_interval_secs.max(1)))
            .build();
        let meter = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        Ok(Some(Otel { tracer, meter }))
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer.tracer("edgegate"))
    }

    /// Exports the node's counters as OpenTelemetry metrics (observed at each export).
    pub fn observe(&self, counters: Arc<Counters>, node_id: &str) {
        let meter = self.meter.meter("edgegate");
        let node = KeyValue::new("node", node_id.to_string());
        type Read = fn(&Counters) -> u64;
        let series: [(&'static str, &'static str, Read); 7] = [
            (
                "edgegate.messages.published",
                "Messages accepted for publishing",
                |c| {
                    Counters::get(&c.published_reliable)
                        + Counters::get(&c.published_datagram)
                        + Counters::get(&c.published_latest)
                },
            ),
            (
                "edgegate.messages.delivered",
                "Messages handed to subscriber queues",
                |c| Counters::get(&c.deliveries),
            ),
            (
                "edgegate.slow_consumers",
                "Sessions closed as slow consumers",
                |c| Counters::get(&c.slow_consumers),
            ),
            (
                "edgegate.messages.dropped",
                "Messages dropped (conflated, queue full, send)",
                |c| {
                    Counters::get(&c.conflated)
                        + Counters::get(&c.dropped_latest)
                        + Counters::get(&c.dropped_datagrams)
                        + Counters::get(&c.dropped_datagram_send)
                },
            ),
            ("edgegate.sessions.accepted", "Sessions accepted", |c| {
                Counters::get(&c.sessions_total)
            }),
            ("edgegate.handshake.failures", "Failed handshakes", |c| {
                Counters::get(&c.handshake_failures)
            }),
            ("edgegate.request.errors", "Refused requests", |c| {
                Counters::get(&c.request_errors)
            }),
        ];
        for (name, help, read) in series {
            let c = counters.clone();
            let attrs = [node.clone()];
            let _ = meter
                .u64_observable_counter(name)
                .with_description(help)
                .with_callback(move |o| o.observe(read(&c), &attrs))
                .build();
        }
        let c = counters.clone();
        let attrs = [node];
        let _ = meter
            .i64_observable_gauge("edgegate.sessions")
            .with_description("Client sessions open now")
            .with_callback(move |o| {
                o.observe(
                    c.sessions_wt.load(std::sync::atomic::Ordering::Relaxed)
                        + c.sessions_ws.load(std::sync::atomic::Ordering::Relaxed),
                    &attrs,
                )
            })
            .build();
    }

    /// Flushes and stops the exporters (bounded by the SDK's own timeouts).
    pub fn shutdown(&self) {
        let _ = self.tracer.force_flush();
        let _ = self.meter.force_flush();
        let _ = self.tracer.shutdown();
        let _ = self.meter.shutdown();
    }

    /// Exports what is buffered now (tests, drain).
    pub fn flush(&self) {
        let _ = self.tracer.force_flush();
        let _ = self.meter.force_flush();
    }
}

/// The W3C `traceparent` of the current span, if it is being traced.
pub fn traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Makes `span` a child of the remote span named by `traceparent` (from a peer frame).
/// Malformed values are ignored.
pub fn with_remote_parent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let parts: Vec<&str> = traceparent.split('-').collect();
    let [version, trace, id, flags] = parts.as_slice() else {
        return;
    };
    if *version != "00" {
        return;
    }
    let (Ok(trace), Ok(id), Ok(flags)) = (
        TraceId::from_hex(trace),
        SpanId::from_hex(id),
        u8::from_str_radix(flags, 16),
    ) else {
        return;
    };
    let sc = SpanContext::new(
        trace,
        id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    if sc.is_valid() {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}
