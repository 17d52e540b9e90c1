//! The deployment assets in `infra/observability/` name only metrics that exist: every metric
//! in an alert expression or a dashboard query is a family the server (or the worker) serves.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use splai_shared::metrics::parse::parse;

use crate::helpers::*;
use crate::metrics::prometheus;

fn asset(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../infra/observability")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Metric names in a PromQL expression: identifiers outside label matchers, grouping lists,
/// ranges and strings that are not followed by `(` (functions) and are not keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        // Aggregation operators, which may be followed by `by (..)` rather than `(`.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' | '[' | '"' => {
                let close = match c {
                    '{' => '}',
                    '[' => ']',
                    _ => '"',
                };
                i += 1;
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_group => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                skip_group = false;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j] == ' ' {
                    j += 1;
                }
                let call = chars.get(j) == Some(&'(');
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word.as_str())
                {
                    skip_group = true;
                } else if !call && !KEYWORDS.contains(&word.as_str()) {
                    out.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// A sample name's family: histogram series are named `<family>_bucket|_sum|_count`.
fn family_exists(name: &str, types: &std::collections::BTreeMap<String, String>) -> bool {
    types.contains_key(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|f| types.get(f).is_some_and(|t| t == "histogram"))
        })
}

#[tokio::test]
async fn alert_and_dashboard_metrics_exist() {
    let app = spawn_app().await;
    let (_, server) = prometheus(&app).await;
    let worker = splai_worker::metrics::WorkerMetrics::default().render();
    let worker = parse(&worker).expect("worker metrics parse");
    let mut types = server.types.clone();
    types.extend(worker.types.clone());

    let rules: Value = yaml_serde::from_str(&asset("alerts.yml")).expect("alerts.yml is YAML");
    let mut alerts = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_owned();
            let expr = rule["expr"].as_str().expect("expr");
            let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
            for part in ["What it means", "What to check", "What to do"] {
                assert!(runbook.contains(part), "{name}: runbook lacks `{part}`");
            }
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{name}: no metric in `{expr}`");
            for m in names {
                assert!(family_exists(&m, &types), "{name}: `{m}` is not served");
            }
            alerts.push(name);
        }
    }
    assert_eq!(
        alerts,
        [
            "SplaiDeadLetterNonZero",
            "SplaiRetryStorm",
            "SplaiAssignmentErrors",
            "SplaiExpiredLeaseChurn"
        ]
    );

    let dashboard: Value =
        serde_json::from_str(&asset("grafana-dashboard.json")).expect("dashboard is JSON");
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for m in metric_names(expr) {
                assert!(
                    family_exists(&m, &types),
                    "dashboard `{expr}`: `{m}` is not served"
                );
                used.insert(m);
            }
        }
    }
    // The dashboard shows the original's reliability metrics.
    for m in [
        "queue_claimed_total",
        "queue_nacked_total",
        "dead_letter_count",
        "scheduler_assignment_errors_total",
        "queue_expired_requeued_total",
    ] {
        assert!(used.contains(m), "dashboard lacks {m}");
    }

    let scrape: Value =
        yaml_serde::from_str(&asset("prometheus.yml")).expect("prometheus.yml is YAML");
    let paths: Vec<&str> = scrape["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .map(|c| c["metrics_path"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(paths, ["/v1/metrics/prometheus", "/metrics"]);
}

#[test]
fn metric_names_skips_labels_functions_and_groupings() {
    let names = metric_names(
        r#"sum by (queue_backend) (rate(queue_nacked_total{reason="retryable"}[5m])) / on(x) histogram_quantile(0.9, sum by (le) (rate(a_bucket[5m]))) > 0.2 and b"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "queue_nacked_total".to_owned(),
            "a_bucket".to_owned(),
            "b".to_owned()
        ])
    );
}
