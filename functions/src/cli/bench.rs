//! `splai bench`: the embedded default end to end. A real `splai serve` process on a fresh
//! SQLite file, real `splai-worker` processes on the echo backend, N one-task no-op jobs sent
//! through the bulk API twice: first with no worker running, then drained by workers started
//! afterwards; then while the workers run. Last, single jobs sent one at a time to idle workers.
//!
//! Reports the submit rate, the drain rate of the queued jobs (from the workers' start to the
//! last completion, which is how job queues are usually compared: fill, then time the
//! workers), throughput with submit and processing overlapped (first submit to last
//! completion), CPU per task, submit-to-start and submit-to-complete percentiles (from the
//! task timestamps the server recorded), and the pickup latency of the single jobs: from just
//! before the client sends the submit to the moment the worker's executor starts (the worker
//! records it in the output's `_splai`). Client, server and workers share the machine's wall
//! clock.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use splai_shared::domain::Timestamp;
use splai_shared::store::{JobFilter, JobStore};

/// Arguments of `splai bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// No-op tasks to run, one per job.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Tasks each worker runs at once (SPLAI_MAX_PARALLEL_TASKS). 512 measured faster than
    /// 256 on two cores (8 interleaved pairs: drain +5 %, overlapped +13 % at the median).
    #[arg(long, default_value_t = 512)]
    pub parallel: usize,
    /// Jobs per bulk submit request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 2)]
    pub clients: usize,
    /// Single jobs sent one at a time to idle workers, for the pickup latency.
    #[arg(long, default_value_t = 200)]
    pub trickle: usize,
    /// The worker binary; default: `splai-worker` beside this binary.
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,
    /// Where the database and artifacts go, kept for inspection (it must not hold an earlier
    /// run's `bench.db`); default: a fresh temporary directory, removed afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Kills its process on drop, so a failed run leaves nothing behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the benchmark and prints the figures.
///
/// # Errors
/// Processes that do not start, or a run that does not complete.
pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.tasks == 0 || a.workers == 0 || a.batch == 0 || a.clients == 0 {
        bail!("--tasks, --workers, --batch and --clients must be at least 1");
    }
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let db_path = dir.join("bench.db");
    if db_path.exists() {
        // Jobs and workers of an earlier run would be counted as this run's.
        bail!(
            "{} exists: give --dir an empty directory",
            db_path.display()
        );
    }
    let artifacts = dir.join("artifacts");
    let (server, base) = start_server(&db_path, &artifacts)?;
    let worker_bin = match &a.worker_bin {
        Some(p) => p.clone(),
        None => sibling("splai-worker")?,
    };
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    println!(
        "splai bench: {} no-op tasks (one per job), {} worker processes x {} slots, echo backend, \
         bulk submit {} jobs/request from {} clients",
        a.tasks, a.workers, a.parallel, a.batch, a.clients
    );
    // Job types of this run only, so a database that outlives runs (Postgres) is fine.
    let run = format!("bench-{}", unix_ms() as u64);

    // 1. Queued first: the queue is filled with no worker running, then drained by workers
    // started afterwards, from their processes' start to the last completion (how job
    // queues are usually benchmarked: insert N jobs, then time the workers).
    println!("queued first: the jobs submitted with no worker running, then the workers started");
    let queued = format!("{run}-queued");
    let server_before = cpu_secs(&server);
    let bulk = submit_all(&http, &base, &a, &queued).await?;
    print_submit(&a, &bulk, Some(cpu_secs(&server) - server_before));
    let cpu_before = (cpu_secs(&server), 0.0);
    let spawned = Timestamp::now_utc();
    let workers: Vec<Proc> = (0..a.workers)
        .map(|i| start_worker(&worker_bin, &base, i, a.parallel, &artifacts))
        .collect::<anyhow::Result<_>>()?;
    // A worker that cannot start or register fails the run here, not at the drain's timeout.
    wait_for_workers(&http, &base, a.workers).await?;
    wait_until_completed(&http, &base, a.tasks as u64).await?;
    let cpu_after = (cpu_secs(&server), workers.iter().map(cpu_secs).sum::<f64>());
    // The server's own backends (SPLAI_STORE and the rest come from this environment), read
    // directly for the task timestamps it recorded.
    let mut config = crate::config::Config::from_env()?.backends;
    config.sqlite_path = db_path.clone();
    let aws = splai_shared::aws::SharedSdk::default();
    let store = splai_shared::backends::open(&config, &aws).await?.jobs;
    let latencies = task_latencies(store.as_ref(), &queued).await?;
    let last_done = latencies.last_finished.unwrap_or(spawned);
    let elapsed = secs_between(spawned, last_done);
    println!(
        "  drain        {} tasks completed {:.3} s after the workers were started ({:.0} tasks/s)",
        latencies.count,
        elapsed,
        latencies.count as f64 / elapsed
    );
    print_cpu(&a, cpu_before, cpu_after);

    // 2. Submitted while the workers run: from the first submit to the last completion.
    println!("submitted while the workers run:");
    let cpu_before = (cpu_secs(&server), workers.iter().map(cpu_secs).sum::<f64>());
    let bulk = submit_all(&http, &base, &a, &run).await?;
    // The workers ran meanwhile: the server's CPU is not the submit's alone.
    print_submit(&a, &bulk, None);
    wait_until_completed(&http, &base, 2 * a.tasks as u64).await?;
    let cpu_after = (cpu_secs(&server), workers.iter().map(cpu_secs).sum::<f64>());
    let latencies = task_latencies(store.as_ref(), &run).await?;
    let last_done = latencies.last_finished.unwrap_or(bulk.started);
    let elapsed = secs_between(bulk.started, last_done);
    println!(
        "  throughput   {} tasks completed {:.3} s after the first submit ({:.0} tasks/s)",
        latencies.count,
        elapsed,
        latencies.count as f64 / elapsed
    );
    print_cpu(&a, cpu_before, cpu_after);
    print_percentiles("submit->start", &latencies.to_start);
    print_percentiles("submit->done", &latencies.to_done);

    if a.trickle > 0 {
        let pickup = trickle_phase(&http, &base, a.trickle, &format!("{run}-trickle")).await?;
        println!(
            "  idle pickup  {} single jobs, one at a time, to idle long-polling workers:",
            a.trickle
        );
        print_percentiles("submit->executor start", &pickup.to_start);
        print_percentiles("submit->job completed", &pickup.to_done);
    }
    drop(workers);
    drop(server);
    Ok(())
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`; 0 where it
/// cannot be read.
fn cpu_secs(p: &Proc) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", p.0.id())) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // The kernel reports in USER_HZ, 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this binary")?;
    let path = me.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found; build it (`cargo build --release --bins`) or pass --worker-bin",
            path.display()
        );
    }
    Ok(path)
}

fn start_server(db: &Path, artifacts: &Path) -> anyhow::Result<(Proc, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("SPLAI_SQLITE_PATH", db)
        .env("SPLAI_ARTIFACT_ROOT", artifacts)
        .env("SPLAI_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting splai serve")?;
    let stderr = child.stderr.take().context("server stderr")?;
    let proc = Proc(child);
    let mut lines = BufReader::new(stderr).lines();
    let base = loop {
        let line = lines
            .next()
            .context("splai serve exited before listening")??;
        if let Some(url) = line.strip_prefix("splai listening on ") {
            break url.trim().to_owned();
        }
        eprintln!("{line}");
    };
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| eprintln!("{l}")));
    Ok((proc, base))
}

fn start_worker(
    bin: &Path,
    base: &str,
    i: usize,
    parallel: usize,
    artifacts: &Path,
) -> anyhow::Result<Proc> {
    let child = Command::new(bin)
        .env("SPLAI_CONTROL_PLANE_URL", base)
        .env("SPLAI_WORKER_ID", format!("bench-{i}"))
        .env("SPLAI_WORKER_BACKENDS", "echo")
        .env("SPLAI_MAX_PARALLEL_TASKS", parallel.to_string())
        .env("SPLAI_ARTIFACT_ROOT", artifacts)
        .env("SPLAI_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Proc(child))
}

async fn wait_for_workers(http: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<()> {
    for _ in 0..500 {
        let resp: Value = http
            .get(format!("{base}/v1/workers"))
            .send()
            .await?
            .json()
            .await?;
        let up = resp["workers"].as_array().map_or(0, Vec::len);
        if up >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("workers did not register within 10 s")
}

fn noop_job(job_type: &str) -> Value {
    json!({
        "type": job_type,
        "tasks": [{
            "task_id": "noop",
            "type": "llm_inference",
            "inputs": { "prompt": "noop" },
            "constraints": { "backend": "echo" },
        }],
    })
}

struct Bulk {
    started: Timestamp,
    submit_secs: f64,
}

/// Submits `--tasks` jobs of `job_type` through the bulk API from `--clients` concurrent
/// clients; returns once all are accepted.
async fn submit_all(
    http: &reqwest::Client,
    base: &str,
    a: &BenchArgs,
    job_type: &str,
) -> anyhow::Result<Bulk> {
    let body = |n: usize| {
        let jobs: Vec<Value> = (0..n).map(|_| noop_job(job_type)).collect();
        json!({ "jobs": jobs }).to_string()
    };
    let batches: Vec<String> = (0..a.tasks)
        .step_by(a.batch)
        .map(|start| body(a.batch.min(a.tasks - start)))
        .collect();
    let started = Timestamp::now_utc();
    let clock = Instant::now();
    let mut clients = Vec::new();
    for c in 0..a.clients {
        let mine: Vec<String> = batches.iter().skip(c).step_by(a.clients).cloned().collect();
        let (http, url) = (http.clone(), format!("{base}/v1/jobs/batch"));
        clients.push(tokio::spawn(async move {
            for b in mine {
                let resp = http.post(&url).body(b).send().await?;
                let status = resp.status();
                let r: Value = resp.json().await?;
                if !status.is_success() || r["rejected"] != 0 {
                    bail!("bulk submit failed: {status} {r}");
                }
            }
            anyhow::Ok(())
        }));
    }
    for c in clients {
        c.await??;
    }
    Ok(Bulk {
        started,
        submit_secs: clock.elapsed().as_secs_f64(),
    })
}

/// Waits until the server has completed `total` jobs since it started.
async fn wait_until_completed(
    http: &reqwest::Client,
    base: &str,
    total: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while completed(http, base).await? < total {
        if Instant::now() > deadline {
            bail!("the bulk jobs did not complete within 300 s");
        }
        // The completion time comes from the tasks' own timestamps, so polling often would
        // only load the server (metrics count the queue) without sharpening the figure.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The submit line; with the server's CPU for it, when nothing else ran meanwhile.
fn print_submit(a: &BenchArgs, bulk: &Bulk, server_cpu: Option<f64>) {
    let cpu = server_cpu.map_or(String::new(), |secs| {
        format!(", {:.0} us/job in the server", secs * 1e6 / a.tasks as f64)
    });
    println!(
        "  submit       {} jobs accepted in {:.3} s ({:.0} jobs/s{cpu})",
        a.tasks,
        bulk.submit_secs,
        a.tasks as f64 / bulk.submit_secs
    );
}

/// CPU per task of the server and the workers between two readings.
fn print_cpu(a: &BenchArgs, before: (f64, f64), after: (f64, f64)) {
    let per_task = |before: f64, after: f64| (after - before) * 1e6 / a.tasks as f64;
    println!(
        "  cpu          {:.0} us/task in the server, {:.0} us/task in the workers (user+sys)",
        per_task(before.0, after.0),
        per_task(before.1, after.1)
    );
}

async fn completed(http: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let m: Value = http
        .get(format!("{base}/v1/metrics"))
        .send()
        .await?
        .json()
        .await?;
    Ok(m["counters"]["jobs_completed_total"].as_u64().unwrap_or(0))
}

struct Latencies {
    count: usize,
    to_start: Vec<f64>,
    to_done: Vec<f64>,
    last_finished: Option<Timestamp>,
}

/// Per task of every job of `job_type`: started and finished minus the job's creation, in ms.
async fn task_latencies(store: &dyn JobStore, job_type: &str) -> anyhow::Result<Latencies> {
    let mut out = Latencies {
        count: 0,
        to_start: Vec::new(),
        to_done: Vec::new(),
        last_finished: None,
    };
    let mut cursor = None;
    loop {
        let page = store
            .list_jobs(&JobFilter {
                job_type: Some(job_type.to_owned()),
                limit: 500,
                cursor,
                ..Default::default()
            })
            .await?;
        for job in &page.jobs {
            let record = store.load_job(&job.job_id).await?.context("job vanished")?;
            for t in &record.tasks {
                let (Some(start), Some(end)) = (t.started_at, t.finished_at) else {
                    continue;
                };
                out.count += 1;
                out.to_start.push(ms_between(job.created_at, start));
                out.to_done.push(ms_between(job.created_at, end));
                out.last_finished = out.last_finished.max(Some(end));
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

struct Pickup {
    to_start: Vec<f64>,
    to_done: Vec<f64>,
}

/// Sends single jobs one at a time, each once the workers are idle again, and measures from
/// just before the submit to the executor's start (recorded by the worker) and to completion.
async fn trickle_phase(
    http: &reqwest::Client,
    base: &str,
    n: usize,
    job_type: &str,
) -> anyhow::Result<Pickup> {
    let mut sent = Vec::with_capacity(n);
    let mut to_done = Vec::with_capacity(n);
    for _ in 0..n {
        // Let every worker go back to waiting on its long-poll.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let body = noop_job(job_type).to_string();
        let t0 = unix_ms();
        let clock = Instant::now();
        let r: Value = http
            .post(format!("{base}/v1/jobs"))
            .body(body)
            .send()
            .await?
            .json()
            .await?;
        let job = r["job_id"]
            .as_str()
            .context("submit answered no job_id")?
            .to_owned();
        loop {
            let j: Value = http
                .get(format!("{base}/v1/jobs/{job}"))
                .send()
                .await?
                .json()
                .await?;
            if j["status"] == "Completed" {
                break;
            }
            if clock.elapsed() > Duration::from_secs(10) {
                bail!("single job {job} did not complete within 10 s: {j}");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        to_done.push(clock.elapsed().as_secs_f64() * 1000.0);
        sent.push((job, t0));
    }
    let mut to_start = Vec::with_capacity(n);
    for (job, t0) in sent {
        let out: Value = http
            .get(format!("{base}/v1/jobs/{job}/tasks/noop/output"))
            .send()
            .await?
            .json()
            .await?;
        let started = out["_splai"]["started_at"]
            .as_str()
            .context("the output has no _splai.started_at")?;
        let started = Timestamp::parse(started, &time::format_description::well_known::Rfc3339)?;
        to_start.push(started.unix_timestamp_nanos() as f64 / 1e6 - t0);
    }
    Ok(Pickup { to_start, to_done })
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn ms_between(a: Timestamp, b: Timestamp) -> f64 {
    (b - a).as_seconds_f64() * 1000.0
}

fn secs_between(a: Timestamp, b: Timestamp) -> f64 {
    (b - a).as_seconds_f64().max(1e-9)
}

/// The nearest-rank percentile `p` (0–100) of `v`.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn print_percentiles(what: &str, v: &[f64]) {
    let mut v = v.to_vec();
    let (p50, p99, max) = (
        percentile(&mut v, 50.0),
        percentile(&mut v, 99.0),
        percentile(&mut v, 100.0),
    );
    println!("  {what:<24} p50 {p50:>8.2} ms   p99 {p99:>8.2} ms   max {max:>8.2} ms");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank percentiles of a known list.
    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 100.0), 100.0);
        assert_eq!(percentile(&mut [7.0], 99.0), 7.0);
        assert!(percentile(&mut [], 50.0).is_nan());
    }
}
