use super::parse::parse;
use super::*;

fn registry() -> (Registry, Counter, Histogram) {
    let r = Registry::new(2);
    let c = r.counter(
        "jobs_total",
        "Jobs.",
        &[Label::Capped("tenant"), Label::Fixed("status")],
    );
    let h = r.histogram(
        "wait_seconds",
        "Wait.",
        &[Label::Fixed("kind")],
        &[0.5, 1.0],
    );
    (r, c, h)
}

/// Past the cap, new values are counted under `other`; admitted values keep their own series,
/// and the cap is shared by every family using the label.
#[test]
fn capped_labels_fold_into_other() {
    let (r, c, _) = registry();
    let other = r.counter("other_total", "Other.", &[Label::Capped("tenant")]);
    c.inc(&["a", "ok"]);
    c.inc(&["b", "ok"]);
    c.inc(&["c", "ok"]);
    c.add(&["d", "failed"], 2);
    c.inc(&["a", "failed"]);
    other.inc(&["e"]);
    other.inc(&["b"]);
    let text = prometheus_text(&r.snapshot());
    let p = parse(&text).unwrap();
    let v = |t, s| p.value("jobs_total", &[("tenant", t), ("status", s)]);
    assert_eq!(v("a", "ok"), Some(1.0));
    assert_eq!(v("b", "ok"), Some(1.0));
    assert_eq!(v("other", "ok"), Some(1.0));
    assert_eq!(v("other", "failed"), Some(2.0));
    assert_eq!(v("a", "failed"), Some(1.0));
    assert_eq!(p.named("jobs_total").count(), 5, "{text}");
    assert!(!text.contains("\"c\"") && !text.contains("\"d\"") && !text.contains("\"e\""));
    assert_eq!(p.value("other_total", &[("tenant", "other")]), Some(1.0));
    assert_eq!(p.value("other_total", &[("tenant", "b")]), Some(1.0));
}

/// Histograms render cumulative buckets ending in `+Inf`, a sum and a count, identically in
/// both formats.
#[test]
fn histogram_renders_buckets_sum_and_count_in_both_formats() {
    let (r, _, h) = registry();
    for v in [0.25, 0.5, 0.75, 4.0] {
        h.observe(&["x"], v);
    }
    let snap = r.snapshot();
    let p = parse(&prometheus_text(&snap)).unwrap();
    assert_eq!(p.types["wait_seconds"], "histogram");
    assert_eq!(p.types["jobs_total"], "counter");
    let b = |le| p.value("wait_seconds_bucket", &[("kind", "x"), ("le", le)]);
    assert_eq!(
        (b("0.5"), b("1"), b("+Inf")),
        (Some(2.0), Some(3.0), Some(4.0))
    );
    assert_eq!(p.value("wait_seconds_sum", &[("kind", "x")]), Some(5.5));
    assert_eq!(p.value("wait_seconds_count", &[("kind", "x")]), Some(4.0));
    let j = json(&snap);
    let s = &j["wait_seconds"]["series"][0];
    assert_eq!(j["wait_seconds"]["type"], "histogram");
    assert_eq!(s["labels"]["kind"], "x");
    assert_eq!(s["sum"], 5.5);
    assert_eq!(s["count"], 4);
    assert_eq!(
        s["buckets"],
        serde_json::json!([{"le":"0.5","count":2},{"le":"1","count":3},{"le":"+Inf","count":4}])
    );
}

/// Label values are escaped so that a hostile value cannot forge another series.
#[test]
fn label_values_are_escaped() {
    let r = Registry::new(10);
    let c = r.counter("x_total", "X.", &[Label::Capped("tenant")]);
    let evil = "a\"} 1\nx_total{tenant=\"b";
    c.inc(&[evil]);
    let p = parse(&prometheus_text(&r.snapshot())).unwrap();
    assert_eq!(p.samples.len(), 1);
    assert_eq!(p.value("x_total", &[("tenant", evil)]), Some(1.0));
}

/// A gauge is set, not added; families without series still declare their type.
#[test]
fn gauges_set_and_empty_families_are_declared() {
    let r = Registry::new(10);
    let g = r.gauge("depth", "Depth.", &[Label::Fixed("priority")]);
    r.counter("never_total", "Never.", &[]);
    g.set(&["batch"], 5);
    g.set(&["batch"], 3);
    let text = prometheus_text(&r.snapshot());
    let p = parse(&text).unwrap();
    assert_eq!(p.value("depth", &[("priority", "batch")]), Some(3.0));
    assert_eq!(p.types["never_total"], "counter");
    assert_eq!(p.named("never_total").count(), 0);
}
