//! The telemetry variables (SPEC §9), read once.

use std::collections::HashMap;

use anyhow::{Context, bail};

/// Where spans go (`SPLAI_OTEL_EXPORTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// No export (the default): spans only feed the logs.
    None,
    /// Spans printed to stdout.
    Stdout,
    /// OTLP over gRPC (`otlpgrpc`, or `otlp`).
    OtlpGrpc,
    /// OTLP over HTTP (`otlphttp`); binary protobuf unless `OTEL_EXPORTER_OTLP_PROTOCOL` is
    /// `http/json`.
    OtlpHttp,
}

/// Which traces are recorded (`SPLAI_OTEL_SAMPLER`, `SPLAI_OTEL_SAMPLER_RATIO`). Always parent
/// based: a trace the caller sampled stays sampled through every process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Every trace (the default).
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// This fraction of new traces.
    Ratio(f64),
}

/// How log lines are written (`SPLAI_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON lines when stderr is not a terminal, text otherwise (the default).
    Auto,
    /// Always JSON lines.
    Json,
    /// Always human-readable text.
    Text,
}

/// Every telemetry setting.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// `SPLAI_LOG`: the log and span filter (`info` by default).
    pub filter: String,
    /// `SPLAI_OTEL_FILTER`: which spans are exported (`info` by default), apart from the logs.
    pub span_filter: String,
    /// `SPLAI_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `SPLAI_OTEL_EXPORTER`.
    pub exporter: Exporter,
    /// `SPLAI_OTEL_ENDPOINT`; the exporter's standard default when absent.
    pub endpoint: Option<String>,
    /// `SPLAI_OTEL_INSECURE`: plain `http://` to an endpoint given without a scheme.
    pub insecure: bool,
    /// `SPLAI_OTEL_HEADERS` (`key=value,key=value`): sent with every export.
    pub headers: HashMap<String, String>,
    /// Whether OTLP over HTTP sends JSON (`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`).
    pub http_json: bool,
    /// `SPLAI_OTEL_SAMPLER` and `SPLAI_OTEL_SAMPLER_RATIO`.
    pub sampler: Sampler,
    /// `SPLAI_ENVIRONMENT`: the `deployment.environment` resource attribute.
    pub environment: Option<String>,
}

impl TelemetryConfig {
    /// Reads the variables through `var`.
    ///
    /// # Errors
    /// A value that is not one of the documented ones, naming the variable.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let exporter = match get("SPLAI_OTEL_EXPORTER").as_deref() {
            None | Some("none") => Exporter::None,
            Some("stdout") => Exporter::Stdout,
            Some("otlpgrpc" | "otlp") => Exporter::OtlpGrpc,
            Some("otlphttp") => Exporter::OtlpHttp,
            Some(other) => bail!(
                "SPLAI_OTEL_EXPORTER={other}: expected none, stdout, otlpgrpc, otlp or otlphttp"
            ),
        };
        let ratio = match get("SPLAI_OTEL_SAMPLER_RATIO") {
            None => 1.0,
            Some(r) => r
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .with_context(|| {
                    format!("SPLAI_OTEL_SAMPLER_RATIO={r}: expected a number from 0 to 1")
                })?,
        };
        let sampler = match get("SPLAI_OTEL_SAMPLER").as_deref() {
            None | Some("always_on") => Sampler::AlwaysOn,
            Some("always_off") => Sampler::AlwaysOff,
            Some("ratio") => Sampler::Ratio(ratio),
            Some(other) => {
                bail!("SPLAI_OTEL_SAMPLER={other}: expected always_on, always_off or ratio")
            }
        };
        let log_format = match get("SPLAI_LOG_FORMAT").as_deref() {
            None | Some("auto") => LogFormat::Auto,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => bail!("SPLAI_LOG_FORMAT={other}: expected auto, json or text"),
        };
        let insecure = match get("SPLAI_OTEL_INSECURE").as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(other) => bail!("SPLAI_OTEL_INSECURE={other}: expected true or false"),
        };
        Ok(Self {
            filter: get("SPLAI_LOG").unwrap_or_else(|| "info".to_owned()),
            span_filter: get("SPLAI_OTEL_FILTER").unwrap_or_else(|| "info".to_owned()),
            log_format,
            exporter,
            endpoint: get("SPLAI_OTEL_ENDPOINT"),
            insecure,
            headers: headers(get("SPLAI_OTEL_HEADERS").as_deref().unwrap_or(""))?,
            http_json: get("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() == Some("http/json"),
            sampler,
            environment: get("SPLAI_ENVIRONMENT"),
        })
    }

    /// Reads the process environment.
    ///
    /// # Errors
    /// As [`from_lookup`](Self::from_lookup).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// The endpoint with a scheme: one given without is `http://` when insecure, else
    /// `https://`.
    pub fn endpoint_url(&self) -> Option<String> {
        self.endpoint.as_ref().map(|e| {
            if e.contains("://") {
                e.clone()
            } else if self.insecure {
                format!("http://{e}")
            } else {
                format!("https://{e}")
            }
        })
    }
}

/// `key=value,key=value`; a header value may itself contain `=`.
fn headers(raw: &str) -> anyhow::Result<HashMap<String, String>> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => bail!("SPLAI_OTEL_HEADERS: `{}` is not key=value", redact(pair)),
        })
        .collect()
}

/// Header values are often credentials: only the key part of a bad pair is echoed.
fn redact(pair: &str) -> String {
    match pair.split_once('=') {
        Some((k, _)) => format!("{k}=…"),
        None if pair.len() > 8 => format!("{}…", &pair[..pair.floor_char_boundary(4)]),
        None => pair.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> anyhow::Result<TelemetryConfig> {
        TelemetryConfig::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn defaults_export_nothing_and_sample_everything() {
        let c = read(&[]).expect("defaults");
        assert_eq!(c.exporter, Exporter::None);
        assert_eq!(c.sampler, Sampler::AlwaysOn);
        assert_eq!(c.log_format, LogFormat::Auto);
        assert_eq!(c.filter, "info");
        assert!(c.headers.is_empty());
    }

    #[test]
    fn every_variable_is_read() {
        let c = read(&[
            ("SPLAI_OTEL_EXPORTER", "otlphttp"),
            ("SPLAI_OTEL_ENDPOINT", "collector:4318"),
            ("SPLAI_OTEL_INSECURE", "true"),
            (
                "SPLAI_OTEL_HEADERS",
                "authorization=Bearer a=b, x-team = ml",
            ),
            ("SPLAI_OTEL_SAMPLER", "ratio"),
            ("SPLAI_OTEL_SAMPLER_RATIO", "0.25"),
            ("SPLAI_ENVIRONMENT", "staging"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ])
        .expect("valid");
        assert_eq!(c.exporter, Exporter::OtlpHttp);
        assert_eq!(c.endpoint_url().as_deref(), Some("http://collector:4318"));
        assert_eq!(c.headers["authorization"], "Bearer a=b");
        assert_eq!(c.headers["x-team"], "ml");
        assert_eq!(c.sampler, Sampler::Ratio(0.25));
        assert_eq!(c.environment.as_deref(), Some("staging"));
        assert!(c.http_json);
        let secure = read(&[("SPLAI_OTEL_ENDPOINT", "collector:4317")]).expect("valid");
        assert_eq!(
            secure.endpoint_url().as_deref(),
            Some("https://collector:4317")
        );
        assert_eq!(
            read(&[("SPLAI_OTEL_EXPORTER", "otlp")])
                .expect("alias")
                .exporter,
            Exporter::OtlpGrpc
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("SPLAI_OTEL_EXPORTER", "jaeger"),
            ("SPLAI_OTEL_SAMPLER", "sometimes"),
            ("SPLAI_OTEL_SAMPLER_RATIO", "1.5"),
            ("SPLAI_OTEL_INSECURE", "yes"),
            ("SPLAI_LOG_FORMAT", "xml"),
            ("SPLAI_OTEL_HEADERS", "novalue"),
        ] {
            let e = read(&[(var, value)]).expect_err(var).to_string();
            assert!(e.contains(var), "{e}");
        }
    }

    #[test]
    fn a_bad_header_pair_does_not_echo_a_secret() {
        let e = read(&[("SPLAI_OTEL_HEADERS", "ok=1,supersecrettoken")])
            .expect_err("no =")
            .to_string();
        assert!(!e.contains("supersecrettoken"), "{e}");
    }
}
