//! Logging and tracing for every SPLAI process: one `init` that installs the log format and,
//! when `SPLAI_OTEL_EXPORTER` asks, an OpenTelemetry exporter fed by the `tracing` spans; and
//! the W3C trace context (`traceparent`) carried between processes, so one trace shows a job
//! from its submit request to the worker's execution of each task.

pub mod config;

use std::io::IsTerminal;

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler as SdkSampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use config::{Exporter, LogFormat, Sampler, TelemetryConfig};

/// Keeps the exporter alive; flushes and shuts it down when dropped (at process exit).
#[must_use = "dropping the guard stops span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends every finished span now (inside Lambda, after each invocation).
    pub fn flush(&self) {
        if let Some(p) = &self.provider
            && let Err(e) = p.force_flush()
        {
            eprintln!("flushing spans failed: {e}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("shutting down span export failed: {e}");
        }
    }
}

/// Installs the global subscriber for `service` (`splai`, `splai-worker`): logs on stderr in
/// the configured format, and span export when configured. Call once, inside the runtime
/// (the gRPC exporter needs it).
///
/// # Errors
/// A filter that does not parse, an exporter that cannot be built, or a second call.
pub fn init(service: &'static str, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&config.filter)
        .with_context(|| format!("SPLAI_LOG={}: not a log filter", config.filter))?;
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let provider = provider(service, config)?;
    // Each output has its own filter: quietening the logs (`SPLAI_LOG=warn`) must not stop
    // the info-level spans that make a trace.
    let span_filter = EnvFilter::try_new(&config.span_filter).with_context(|| {
        format!(
            "SPLAI_OTEL_FILTER={}: not a span filter",
            config.span_filter
        )
    })?;
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(span_filter)
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(Telemetry { provider })
}

fn provider(
    service: &'static str,
    config: &TelemetryConfig,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    let builder = SdkTracerProvider::builder()
        .with_sampler(sampler(config.sampler))
        .with_resource(resource(service, config));
    let endpoint = config.endpoint_url();
    let builder = match config.exporter {
        Exporter::None => return Ok(None),
        Exporter::Stdout => {
            builder.with_batch_exporter(opentelemetry_stdout::SpanExporter::default())
        }
        Exporter::OtlpGrpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_metadata(tonic_metadata(config)?);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            builder.with_batch_exporter(b.build().context("building the OTLP gRPC exporter")?)
        }
        Exporter::OtlpHttp => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(if config.http_json {
                    Protocol::HttpJson
                } else {
                    Protocol::HttpBinary
                })
                .with_headers(config.headers.clone());
            if let Some(e) = endpoint {
                // The HTTP exporter takes the full traces URL.
                let e = if e.ends_with("/v1/traces") {
                    e
                } else {
                    format!("{}/v1/traces", e.trim_end_matches('/'))
                };
                b = b.with_endpoint(e);
            }
            builder.with_batch_exporter(b.build().context("building the OTLP HTTP exporter")?)
        }
    };
    Ok(Some(builder.build()))
}

fn sampler(s: Sampler) -> SdkSampler {
    let root = match s {
        Sampler::AlwaysOn => SdkSampler::AlwaysOn,
        Sampler::AlwaysOff => SdkSampler::AlwaysOff,
        Sampler::Ratio(r) => SdkSampler::TraceIdRatioBased(r),
    };
    SdkSampler::ParentBased(Box::new(root))
}

fn resource(service: &'static str, config: &TelemetryConfig) -> Resource {
    let mut b = Resource::builder().with_service_name(service);
    if let Some(env) = &config.environment {
        b = b.with_attribute(KeyValue::new("deployment.environment", env.clone()));
    }
    b.build()
}

fn tonic_metadata(config: &TelemetryConfig) -> anyhow::Result<MetadataMap> {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &config.headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .with_context(|| format!("SPLAI_OTEL_HEADERS: `{k}` is not a header name"))?;
        let value = http::HeaderValue::from_str(v)
            .with_context(|| format!("SPLAI_OTEL_HEADERS: the value of `{k}` is not valid"))?;
        headers.insert(name, value);
    }
    Ok(MetadataMap::from_headers(headers))
}

/// The `traceparent` of `span`, or `None` when it is not recorded (export off, or not
/// sampled): what a job stores so its tasks' execution joins the submit's trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span named by `traceparent` (a W3C header value). An
/// absent or malformed value leaves `span` a root: tracing never fails a request.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    let carrier = std::collections::HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
    let cx: Context = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
