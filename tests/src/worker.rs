//! A real `splai-worker` process pointed at a gateway: started and waited on until it has
//! registered, signalled like an orchestrator would (SIGTERM, SIGKILL), killed when dropped.
//!
//! Its stderr is drained on a thread (a full pipe would block the worker) and kept for
//! assertion messages; it is echoed only when `TEST_LOG` is set.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::binary;

/// What the worker logs (at info) once the gateway accepted its registration.
const REGISTERED: &str = "registered with the gateway";

/// Longest wait for a fresh worker to register: host detection, the network-isolation probe
/// and the model listing (3 s timeout) run first.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `splai-worker`. Killed (SIGKILL) when dropped.
pub struct SplaiWorker {
    child: Child,
    id: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl SplaiWorker {
    /// Starts a worker called `id` against the gateway at `server_base`, with extra
    /// environment (which overrides the defaults set here), and waits until it registered.
    ///
    /// `SPLAI_*` and `AWS_*` variables of the test process are not inherited, so a
    /// developer's settings cannot leak in; pass `SPLAI_ARTIFACT_ROOT` to keep each test's artifacts apart.
    ///
    /// # Panics
    /// When the worker exits, or does not register, within 30 s; the message carries its log.
    pub async fn start(server_base: &str, id: &str, env: &[(&str, &str)]) -> SplaiWorker {
        let mut cmd = Command::new(binary("splai-worker"));
        // Nor AWS_* ones: a worker reaches storage only as the test says (S3 tests show a
        // worker with no credentials of its own uploading through a presigned URL).
        for (k, _) in std::env::vars_os() {
            let k_str = k.to_string_lossy();
            if k_str.starts_with("SPLAI_") || k_str.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("SPLAI_CONTROL_PLANE_URL", server_base)
            .env("SPLAI_WORKER_ID", id)
            .env("SPLAI_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn splai-worker");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (registered, on_registered) = oneshot::channel();
        drain(stderr, id.to_owned(), log.clone(), registered);
        let mut worker = SplaiWorker {
            child,
            id: id.to_owned(),
            log,
        };
        match tokio::time::timeout(REGISTRATION_TIMEOUT, on_registered).await {
            Ok(Ok(())) => worker,
            Ok(Err(_)) => {
                let status = worker.child.wait().ok();
                panic!(
                    "worker {id} exited ({status:?}) before registering:\n{}",
                    worker.log()
                )
            }
            Err(_) => panic!(
                "worker {id} did not register within {REGISTRATION_TIMEOUT:?}:\n{}",
                worker.log()
            ),
        }
    }

    /// The worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Everything the worker logged so far, one line per entry.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// SIGTERM: the worker's graceful shutdown. Does nothing once the process was reaped (its
    /// pid may belong to someone else by then).
    pub fn sigterm(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
            // ESRCH (it exited between the check and the signal) leaves nothing to do.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }

    /// SIGKILL, and reap: no shutdown, no hand-back, no last report.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, or `None` if it
    /// is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("query the worker process") {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SplaiWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads the worker's stderr to its end on a thread: keeps every line, echoes it when
/// `TEST_LOG` is set, and fires `registered` at the first registration line (dropping it
/// unfired at EOF, which the waiter reads as an early exit).
fn drain(
    stderr: ChildStderr,
    id: String,
    log: Arc<Mutex<Vec<String>>>,
    registered: oneshot::Sender<()>,
) {
    let echo = std::env::var_os("TEST_LOG").is_some();
    std::thread::spawn(move || {
        let mut registered = Some(registered);
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        // `read_until` rather than `lines`: a non-UTF-8 byte must not stop the draining.
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
            buf.clear();
            if echo {
                eprintln!("[{id}] {line}");
            }
            if line.contains(REGISTERED)
                && let Some(tx) = registered.take()
            {
                let _ = tx.send(());
            }
            log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
}
