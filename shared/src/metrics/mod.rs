//! A small metrics registry: labelled counters, gauges and histograms, rendered from one
//! snapshot to both the JSON of `GET /v1/metrics` and the Prometheus text format.
//!
//! Why not `metrics` + `metrics-exporter-prometheus` (STACK.md §5): that exporter renders only
//! the text format and keeps its values private, so the JSON endpoint would need a second
//! source of truth and the two could disagree. Here both formats are produced from the same
//! [`Snapshot`], so they agree exactly. The hot path takes no global mutex: a series is found
//! under a shared read lock (taken exclusively only the first time a label set is seen) and
//! updated with relaxed atomics.
//!
//! Cardinality is bounded: free-form labels (job type, tenant, worker id, model) go through a
//! [`LabelCap`] shared by every family using that label; after `limit` distinct values,
//! further ones are counted under [`OTHER`]. Job and task ids are never labels.

mod render;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use render::{PROMETHEUS_CONTENT_TYPE, json, prometheus_text};

/// The value that label values past a cap are counted under.
pub const OTHER: &str = "other";

/// Most labels one family may have (keeps label lookups allocation-free).
pub const MAX_LABELS: usize = 4;

/// Default number of distinct values a capped label may take (`SPLAI_METRICS_LABEL_CAP`).
pub const DEFAULT_LABEL_CAP: usize = 100;

/// Buckets for durations in seconds: from a few milliseconds to ten minutes.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// What a family measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Set to the current value.
    Gauge,
    /// Observations counted into buckets with these upper bounds (ascending; `+Inf` implied).
    Histogram(Vec<f64>),
}

impl Kind {
    /// The Prometheus `# TYPE` word.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram(_) => "histogram",
        }
    }
}

/// The distinct values one free-form label has taken, up to a limit.
#[derive(Debug)]
pub struct LabelCap {
    limit: usize,
    seen: RwLock<HashSet<String>>,
}

impl LabelCap {
    /// A cap admitting `limit` distinct values.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            seen: RwLock::new(HashSet::new()),
        }
    }

    /// `value` if it is admitted (seen before, or there is still room), else [`OTHER`].
    pub fn fold<'a>(&self, value: &'a str) -> &'a str {
        {
            let seen = read(&self.seen);
            if seen.contains(value) {
                return value;
            }
            // Full: no write lock for values past the cap, however often they come.
            if seen.len() >= self.limit {
                return OTHER;
            }
        }
        let mut seen = write(&self.seen);
        if seen.contains(value) || seen.len() < self.limit {
            seen.insert(value.to_owned());
            value
        } else {
            OTHER
        }
    }
}

/// One labelled time series' value.
#[derive(Debug)]
enum Cell {
    Counter(AtomicU64),
    Gauge(AtomicI64),
    Histogram {
        /// Per bucket (not cumulative), the last one being `+Inf`.
        buckets: Box<[AtomicU64]>,
        /// The sum of observations, as `f64` bits.
        sum: AtomicU64,
    },
}

#[derive(Debug)]
struct Series {
    labels: Box<[String]>,
    cell: Cell,
}

/// A metric name with its label names and every label set seen so far.
#[derive(Debug)]
pub struct Family {
    name: String,
    help: String,
    kind: Kind,
    labels: Vec<&'static str>,
    /// Per label, the cap its values go through (`None`: a label from a small fixed set).
    caps: Vec<Option<Arc<LabelCap>>>,
    /// By hash of the label values; collisions share a bucket.
    series: RwLock<HashMap<u64, Vec<Series>>>,
}

fn hash_of(values: &[&str]) -> u64 {
    let mut h = DefaultHasher::new();
    for v in values {
        v.hash(&mut h);
    }
    h.finish()
}

impl Family {
    /// Runs `f` on the series for `values` (folded through the caps), creating it if new.
    fn with(&self, values: &[&str], f: impl FnOnce(&Cell)) {
        assert_eq!(
            values.len(),
            self.labels.len(),
            "metric {} takes labels {:?}",
            self.name,
            self.labels
        );
        // Fast path: a series already holding these exact values was admitted by the caps
        // when it was created, so the caps need not be asked again.
        {
            let map = read(&self.series);
            if let Some(s) = map.get(&hash_of(values)).and_then(|b| find(b, values)) {
                f(&s.cell);
                return;
            }
        }
        let mut folded = [""; MAX_LABELS];
        for (i, v) in values.iter().enumerate() {
            folded[i] = match &self.caps[i] {
                Some(cap) => cap.fold(v),
                None => *v,
            };
        }
        let key = &folded[..values.len()];
        let hash = hash_of(key);
        if key != values {
            // Folded into `other`: that series usually exists already.
            let map = read(&self.series);
            if let Some(s) = map.get(&hash).and_then(|b| find(b, key)) {
                f(&s.cell);
                return;
            }
        }
        let mut map = write(&self.series);
        let bucket = map.entry(hash).or_default();
        if find(bucket, key).is_none() {
            bucket.push(Series {
                labels: key.iter().map(|v| (*v).to_owned()).collect(),
                cell: self.new_cell(),
            });
        }
        if let Some(s) = find(bucket, key) {
            f(&s.cell);
        }
    }

    fn new_cell(&self) -> Cell {
        match &self.kind {
            Kind::Counter => Cell::Counter(AtomicU64::new(0)),
            Kind::Gauge => Cell::Gauge(AtomicI64::new(0)),
            Kind::Histogram(bounds) => Cell::Histogram {
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0f64.to_bits()),
            },
        }
    }

    fn snapshot(&self) -> FamilySnapshot {
        let map = read(&self.series);
        let mut series: Vec<SeriesSnapshot> = map
            .values()
            .flatten()
            .map(|s| SeriesSnapshot {
                labels: self
                    .labels
                    .iter()
                    .zip(s.labels.iter())
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
                value: match &s.cell {
                    Cell::Counter(c) => Value::Counter(c.load(Ordering::Relaxed)),
                    Cell::Gauge(g) => Value::Gauge(g.load(Ordering::Relaxed)),
                    Cell::Histogram { buckets, sum } => Value::Histogram {
                        buckets: buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
                        sum: f64::from_bits(sum.load(Ordering::Relaxed)),
                    },
                },
            })
            .collect();
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        FamilySnapshot {
            name: self.name.clone(),
            help: self.help.clone(),
            kind: self.kind.clone(),
            labels: self.labels.iter().map(|l| (*l).to_owned()).collect(),
            series,
        }
    }
}

fn find<'a>(bucket: &'a [Series], key: &[&str]) -> Option<&'a Series> {
    bucket
        .iter()
        .find(|s| s.labels.iter().map(String::as_str).eq(key.iter().copied()))
}

/// Lock poisoning cannot leave these maps inconsistent (every update is one insert), so a
/// poisoned lock is used as is.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A label and whether its values are free-form (and so capped).
#[derive(Debug, Clone, Copy)]
pub enum Label {
    /// Values from a small fixed set (queue backend, status, outcome, priority).
    Fixed(&'static str),
    /// Values from users or the fleet (tenant, job type, worker id, model): capped.
    Capped(&'static str),
}

/// Every family of one process, in registration order.
#[derive(Debug)]
pub struct Registry {
    families: RwLock<Vec<Arc<Family>>>,
    caps: RwLock<HashMap<&'static str, Arc<LabelCap>>>,
    cap_limit: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(DEFAULT_LABEL_CAP)
    }
}

impl Registry {
    /// An empty registry whose capped labels admit `cap_limit` distinct values each.
    pub fn new(cap_limit: usize) -> Self {
        Self {
            families: RwLock::new(Vec::new()),
            caps: RwLock::new(HashMap::new()),
            cap_limit,
        }
    }

    fn cap(&self, label: &'static str) -> Arc<LabelCap> {
        write(&self.caps)
            .entry(label)
            .or_insert_with(|| Arc::new(LabelCap::new(self.cap_limit)))
            .clone()
    }

    fn family(&self, name: &str, help: &str, kind: Kind, labels: &[Label]) -> Arc<Family> {
        assert!(labels.len() <= MAX_LABELS, "metric {name}: too many labels");
        let mut families = write(&self.families);
        let names: Vec<&'static str> = labels
            .iter()
            .map(|l| match l {
                Label::Fixed(n) | Label::Capped(n) => *n,
            })
            .collect();
        // Registering the same family again (a second router over one engine) shares it.
        if let Some(f) = families.iter().find(|f| f.name == name) {
            assert!(
                f.kind == kind && f.labels == names,
                "metric {name} registered twice with different kinds or labels"
            );
            return f.clone();
        }
        let family = Arc::new(Family {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            labels: names,
            caps: labels
                .iter()
                .map(|l| match l {
                    Label::Fixed(_) => None,
                    Label::Capped(n) => Some(self.cap(n)),
                })
                .collect(),
            series: RwLock::new(HashMap::new()),
        });
        families.push(family.clone());
        family
    }

    /// Registers a counter.
    ///
    /// Registering a name again returns the same family.
    ///
    /// # Panics
    /// A name registered again with another kind or labels, or more than [`MAX_LABELS`]
    /// labels (programming errors).
    pub fn counter(&self, name: &str, help: &str, labels: &[Label]) -> Counter {
        Counter(self.family(name, help, Kind::Counter, labels))
    }

    /// Registers a gauge.
    ///
    /// # Panics
    /// As [`Registry::counter`].
    pub fn gauge(&self, name: &str, help: &str, labels: &[Label]) -> Gauge {
        Gauge(self.family(name, help, Kind::Gauge, labels))
    }

    /// Registers a histogram with these bucket upper bounds.
    ///
    /// # Panics
    /// As [`Registry::counter`].
    pub fn histogram(&self, name: &str, help: &str, labels: &[Label], bounds: &[f64]) -> Histogram {
        Histogram(self.family(name, help, Kind::Histogram(bounds.to_vec()), labels))
    }

    /// Every family's current values.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            families: read(&self.families).iter().map(|f| f.snapshot()).collect(),
        }
    }
}

/// A counter family.
#[derive(Debug, Clone)]
pub struct Counter(Arc<Family>);

impl Counter {
    /// Adds `n` to the series with these label values (in registration order).
    pub fn add(&self, labels: &[&str], n: u64) {
        self.0.with(labels, |c| {
            if let Cell::Counter(v) = c {
                v.fetch_add(n, Ordering::Relaxed);
            }
        });
    }

    /// Adds one.
    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1);
    }
}

/// A gauge family.
#[derive(Debug, Clone)]
pub struct Gauge(Arc<Family>);

impl Gauge {
    /// Sets the series with these label values.
    pub fn set(&self, labels: &[&str], value: i64) {
        self.0.with(labels, |c| {
            if let Cell::Gauge(v) = c {
                v.store(value, Ordering::Relaxed);
            }
        });
    }

    /// Adds `delta` (negative to subtract).
    pub fn add(&self, labels: &[&str], delta: i64) {
        self.0.with(labels, |c| {
            if let Cell::Gauge(v) = c {
                v.fetch_add(delta, Ordering::Relaxed);
            }
        });
    }
}

/// A histogram family.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<Family>);

impl Histogram {
    /// Counts one observation into the series with these label values.
    pub fn observe(&self, labels: &[&str], value: f64) {
        let Kind::Histogram(bounds) = &self.0.kind else {
            return;
        };
        let i = bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(bounds.len());
        self.0.with(labels, |c| {
            if let Cell::Histogram { buckets, sum } = c {
                buckets[i].fetch_add(1, Ordering::Relaxed);
                // No atomic f64 add: a compare-and-swap loop, uncontended in practice.
                let _ = sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                    Some((f64::from_bits(bits) + value).to_bits())
                });
            }
        });
    }
}

/// Every family's values at one moment: what both formats render.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// In registration order.
    pub families: Vec<FamilySnapshot>,
}

/// One family's values.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilySnapshot {
    /// The metric name.
    pub name: String,
    /// What it means.
    pub help: String,
    /// Counter, gauge or histogram (with its bounds).
    pub kind: Kind,
    /// Label names.
    pub labels: Vec<String>,
    /// Every series, ordered by label values.
    pub series: Vec<SeriesSnapshot>,
}

/// One series' labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSnapshot {
    /// `(name, value)` in the family's label order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: Value,
}

/// A series' value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter's total.
    Counter(u64),
    /// A gauge's value.
    Gauge(i64),
    /// A histogram's per-bucket counts (not cumulative; the last is `+Inf`) and sum.
    Histogram {
        /// Per bucket.
        buckets: Vec<u64>,
        /// Sum of observations.
        sum: f64,
    },
}

impl Snapshot {
    /// Each counter family's total over all its series, by name.
    pub fn counter_totals(&self) -> std::collections::BTreeMap<String, u64> {
        self.families
            .iter()
            .filter(|f| f.kind == Kind::Counter)
            .map(|f| {
                let total = f
                    .series
                    .iter()
                    .map(|s| match s.value {
                        Value::Counter(n) => n,
                        _ => 0,
                    })
                    .sum();
                (f.name.clone(), total)
            })
            .collect()
    }

    /// The family called `name`.
    pub fn family(&self, name: &str) -> Option<&FamilySnapshot> {
        self.families.iter().find(|f| f.name == name)
    }
}

#[cfg(any(test, feature = "test-utils"))]
pub mod parse;
