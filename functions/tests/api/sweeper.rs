//! The scheduled sweeper pass (`sweeper::Sweeper`, the work of the Lambda `sweeper` function):
//! with no server loop running, a pass requeues an expired lease; copies started at once on
//! one database requeue it once; a copy that finds the lock held does nothing; with a TTL, a
//! pass prunes old finished jobs and their artifacts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use splai_functions::config::Config;
use splai_functions::retention::Retention;
use splai_functions::server::{self, Built, Routes};
use splai_functions::sweeper::{LOCK, SweepOutcome, Sweeper};
use splai_shared::artifacts::ArtifactKey;
use splai_shared::clock::ManualClock;
use splai_shared::domain::{JobId, Status, WorkerId, WorkerRegistration};
use splai_shared::testing::{a_single_task_job, report_for};

const LEASE: Duration = Duration::from_secs(10);
const HOLD: Duration = Duration::from_secs(60);

/// What one process (a Lambda cold start) builds, on the database `db` and the shared clock.
async fn cold_start(db: &Path, clock: &Arc<ManualClock>) -> Built {
    let mut config = Config::from_lookup(|_| None).expect("config");
    config.backends.sqlite_path = db.to_path_buf();
    config.artifact_root = db.with_file_name("artifacts");
    config.engine.lease = LEASE;
    server::build(&config, clock.clone()).await.expect("build")
}

fn sweeper(b: &Built) -> Sweeper {
    Sweeper::new(b.engine.clone(), b.deliverer.clone(), HOLD)
}

fn requeued(outcome: &SweepOutcome) -> usize {
    match outcome {
        SweepOutcome::Swept { requeued, .. } => *requeued,
        SweepOutcome::Skipped => 0,
    }
}

/// Registers a CPU worker with the echo backend.
async fn cpu_worker(b: &Built, id: &str) -> WorkerId {
    let worker = WorkerId::parse(id).expect("worker id");
    let reg = WorkerRegistration {
        backends: vec!["echo".into()],
        cpu: 4.0,
        ..Default::default()
    };
    b.engine
        .register_worker(&worker, &reg)
        .await
        .expect("register");
    worker
}

/// A job whose only task is leased to a worker that then vanished, its lease run out.
async fn expired_lease(b: &Built, clock: &ManualClock) -> WorkerId {
    let e = &b.engine;
    let worker = cpu_worker(b, "w-gone").await;
    e.submit(a_single_task_job()).await.expect("submit");
    let got = e.assign(&worker, 1, Duration::ZERO).await.expect("claim");
    assert_eq!(got.len(), 1);
    clock.advance(LEASE + Duration::from_secs(1));
    worker
}

/// Two processes sweep at once: the lease is requeued once (one pass holds the lock; the
/// other skips, or sweeps after it and finds nothing), and the task comes back as attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sweeps_requeue_an_expired_lease_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("splai.db");
    let clock = Arc::new(ManualClock::new());
    let (a, b) = (cold_start(&db, &clock).await, cold_start(&db, &clock).await);
    let worker = expired_lease(&a, &clock).await;

    let (sa, sb) = (sweeper(&a), sweeper(&b));
    let (ra, rb) = tokio::join!(sa.run_once(), sb.run_once());
    let (ra, rb) = (ra.expect("sweep a"), rb.expect("sweep b"));
    assert_eq!(requeued(&ra) + requeued(&rb), 1, "{ra:?} {rb:?}");

    let again = b
        .engine
        .assign(&worker, 10, Duration::ZERO)
        .await
        .expect("claim");
    assert_eq!(again.len(), 1, "requeued once, claimable once");
    assert_eq!(again[0].attempt, 2);
    // The lock was given up: the next pass runs.
    assert!(matches!(
        sa.run_once().await.expect("sweep"),
        SweepOutcome::Swept { .. }
    ));
}

/// While another copy holds the lock a pass does nothing; once its deadline passes (the
/// holder died) the next pass sweeps.
#[tokio::test]
async fn a_held_lock_skips_the_pass_until_it_lapses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new());
    let a = cold_start(&dir.path().join("splai.db"), &clock).await;
    let worker = expired_lease(&a, &clock).await;
    let now = a.engine.now();
    let locks = &a.engine.backends().locks;
    assert!(
        locks
            .try_lock(LOCK, "a-copy-that-died", now, now + HOLD)
            .await
            .expect("lock")
    );

    let s = sweeper(&a);
    assert_eq!(s.run_once().await.expect("sweep"), SweepOutcome::Skipped);
    assert!(
        a.engine
            .assign(&worker, 1, Duration::ZERO)
            .await
            .expect("claim")
            .is_empty(),
        "nothing was requeued"
    );

    clock.advance(HOLD);
    assert_eq!(requeued(&s.run_once().await.expect("sweep")), 1);
    let task = a
        .engine
        .assign(&worker, 1, Duration::ZERO)
        .await
        .expect("claim");
    assert_eq!(task.len(), 1);
    assert_eq!(
        a.engine.job(&task[0].job_id).await.expect("job").status,
        Status::Running
    );
}

/// A one-task job run to completion by a worker that stored its output as an artifact file;
/// returns the job and the file.
async fn completed_job(b: &Built, dir: &Path) -> (JobId, std::path::PathBuf) {
    let e = &b.engine;
    let worker = cpu_worker(b, "w-done").await;
    let job = e.submit(a_single_task_job()).await.expect("submit").job_id;
    let got = e.assign(&worker, 1, Duration::ZERO).await.expect("claim");
    let a = &got[0];
    let key = ArtifactKey::output(a.job_id.clone(), a.task_id.clone());
    let stored = b
        .state
        .artifacts
        .put(
            &key,
            br#"{"text":"hi"}"#.to_vec().into(),
            "application/json",
        )
        .await
        .expect("put the output");
    let report = report_for(a, Status::Completed, Some(stored.url), None, true);
    e.report(&[report]).await.expect("report");
    assert_eq!(e.job(&job).await.expect("job").status, Status::Completed);
    let file = dir.join(format!("artifacts/{}/{}/output.json", a.job_id, a.task_id));
    assert!(file.is_file(), "{}", file.display());
    (job, file)
}

/// With `SPLAI_JOB_TTL`, a pass deletes a completed job that finished more than the TTL ago,
/// and its artifact file, so the API answers 404 for it; a job finished since stays, whole.
#[tokio::test]
async fn a_pass_prunes_an_old_completed_job_and_its_artifacts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new());
    let b = cold_start(&dir.path().join("splai.db"), &clock).await;
    let ttl = Duration::from_secs(30 * 86_400);
    let (old, old_file) = completed_job(&b, dir.path()).await;
    clock.advance(ttl + Duration::from_secs(1));
    let (recent, recent_file) = completed_job(&b, dir.path()).await;
    let s = sweeper(&b).with_retention(Retention::new(b.state.artifacts.clone(), ttl));

    let outcome = s.run_once().await.expect("sweep");

    assert!(
        matches!(outcome, SweepOutcome::Swept { pruned: 1, .. }),
        "{outcome:?}"
    );
    assert!(!old_file.exists(), "the old job's artifact is deleted");
    assert!(
        !old_file
            .parent()
            .and_then(Path::parent)
            .expect("job folder")
            .exists()
    );
    assert!(recent_file.is_file(), "the recent job's artifact stays");
    let config = Config::from_lookup(|_| None).expect("config");
    let app = server::app(Routes::All, b.state.clone(), &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let status = |id: JobId| async move {
        reqwest::get(format!("http://{addr}/v1/jobs/{id}"))
            .await
            .expect("GET the job")
            .status()
    };
    assert_eq!(status(old).await, reqwest::StatusCode::NOT_FOUND);
    assert_eq!(status(recent).await, reqwest::StatusCode::OK);
    // Nothing more is due: a second pass prunes nothing.
    assert!(matches!(
        s.run_once().await.expect("sweep"),
        SweepOutcome::Swept { pruned: 0, .. }
    ));
}
