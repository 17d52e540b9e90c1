//! The two renderings of a [`Snapshot`]: Prometheus text exposition (version 0.0.4) and JSON.
//! Both read the same values, so they always agree.

use std::fmt::Write;

use serde_json::{Map, json};

use super::{FamilySnapshot, Kind, Snapshot, Value};

/// The Prometheus text exposition format's content type.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The snapshot in the Prometheus text format: `# HELP` and `# TYPE` for every family (also
/// those with no series yet), then one line per series; histograms as cumulative `_bucket`
/// lines with `le`, then `_sum` and `_count`.
pub fn prometheus_text(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for f in &snapshot.families {
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.type_name());
        for s in &f.series {
            let labels = |extra: Option<(&str, &str)>| {
                let mut pairs: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_value(v)))
                    .collect();
                if let Some((k, v)) = extra {
                    pairs.push(format!("{k}=\"{v}\""));
                }
                if pairs.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", pairs.join(","))
                }
            };
            match &s.value {
                Value::Counter(n) => {
                    let _ = writeln!(out, "{}{} {n}", f.name, labels(None));
                }
                Value::Gauge(n) => {
                    let _ = writeln!(out, "{}{} {n}", f.name, labels(None));
                }
                Value::Histogram { buckets, sum } => {
                    for (le, count) in cumulative(f, buckets) {
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {count}",
                            f.name,
                            labels(Some(("le", le.as_str())))
                        );
                    }
                    let count: u64 = buckets.iter().sum();
                    let _ = writeln!(out, "{}_sum{} {}", f.name, labels(None), float(*sum));
                    let _ = writeln!(out, "{}_count{} {count}", f.name, labels(None));
                }
            }
        }
    }
    out
}

/// The snapshot as JSON: `{ name: { type, help, labels, series: [{ labels: {..}, value }] } }`;
/// a histogram series has `buckets` (cumulative, `le` as in the text format), `sum` and
/// `count` instead of `value`.
pub fn json(snapshot: &Snapshot) -> serde_json::Value {
    let mut out = Map::new();
    for f in &snapshot.families {
        let series: Vec<serde_json::Value> = f
            .series
            .iter()
            .map(|s| {
                let labels: Map<String, serde_json::Value> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                match &s.value {
                    Value::Counter(n) => json!({ "labels": labels, "value": n }),
                    Value::Gauge(n) => json!({ "labels": labels, "value": n }),
                    Value::Histogram { buckets, sum } => {
                        let cum: Vec<serde_json::Value> = cumulative(f, buckets)
                            .into_iter()
                            .map(|(le, count)| json!({ "le": le, "count": count }))
                            .collect();
                        let count: u64 = buckets.iter().sum();
                        json!({ "labels": labels, "buckets": cum, "sum": sum, "count": count })
                    }
                }
            })
            .collect();
        out.insert(
            f.name.clone(),
            json!({
                "type": f.kind.type_name(),
                "help": f.help,
                "labels": f.labels,
                "series": series,
            }),
        );
    }
    serde_json::Value::Object(out)
}

/// `(le, cumulative count)` per bucket, ending with `+Inf`.
fn cumulative(f: &FamilySnapshot, buckets: &[u64]) -> Vec<(String, u64)> {
    let Kind::Histogram(bounds) = &f.kind else {
        return Vec::new();
    };
    let mut acc = 0;
    buckets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            acc += n;
            let le = bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| float(*b));
            (le, acc)
        })
        .collect()
}

/// A float as Prometheus writes it (`+Inf`, `-Inf`, `NaN`; otherwise the shortest form that
/// reads back to the same value).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        let sign = if v > 0.0 { "+Inf" } else { "-Inf" };
        sign.to_owned()
    } else {
        format!("{v}")
    }
}

fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}
