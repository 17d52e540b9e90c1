//! The Lambda functions under `cargo lambda watch`, the Lambda runtime emulator (installed
//! from PyPI as `cargo-lambda`): each HTTP function answers at
//! `<base>/lambda-url/<function>/...`, and `cargo lambda invoke` sends an event to one. The
//! watcher builds and starts each function on its first request, one process per instance.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The longest a first request may wait: the watcher builds the function then (a no-op after
/// [`crate::binary`], unless its feature resolution differs).
const FIRST_BUILD: Duration = Duration::from_secs(900);

/// A running `cargo lambda watch`, with the functions it started. Killed, process group and
/// all, when dropped.
pub struct LambdaWatch {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    port: String,
    dir: tempfile::TempDir,
}

impl LambdaWatch {
    /// Starts the watcher in the workspace with the functions' environment `env` (given in
    /// an env file, so values may hold commas) and `concurrency` instances per function, then
    /// waits until the gateway function answers its health check. `None`, after printing why
    /// `test` is skipped, when `cargo lambda` is not installed.
    ///
    /// # Panics
    /// When `cargo lambda` is missing under `CI` (a missing tool is never silently green), or
    /// the gateway does not come up.
    pub async fn start(test: &str, env: &[(&str, &str)], concurrency: u32) -> Option<Self> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let installed = Command::new(&cargo)
            .args(["lambda", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: `cargo lambda` is not installed (pip install cargo-lambda)"
            );
            eprintln!("{test}: skipped: `cargo lambda` is not installed");
            return None;
        }
        // The watcher builds the functions with the feature resolution `binary` uses: built
        // here, alongside the other tests' binaries, its build is a no-op.
        crate::binary("gateway");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let env_file = dir.path().join("functions.env");
        let mut f = std::fs::File::create(&env_file).expect("create the env file");
        for (k, v) in env {
            writeln!(f, "{k}={v}").expect("write the env file");
        }
        let addr = crate::free_local_addr();
        let port = addr.rsplit(':').next().expect("a port").to_owned();
        let log = std::fs::File::create(dir.path().join("watch.log")).expect("create the log");
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace")
            .to_path_buf();
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(workspace)
            .args([
                "lambda",
                "watch",
                "--ignore-changes",
                "--invoke-address",
                "127.0.0.1",
            ])
            .args([
                "--invoke-port",
                &port,
                "--concurrency",
                &concurrency.to_string(),
            ])
            .arg("--env-file")
            .arg(&env_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log"))
            .stderr(log);
        // The functions read only what the test gives them.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("SPLAI_") || k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("spawn cargo lambda watch");
        let watch = LambdaWatch {
            child,
            base: format!("http://{addr}"),
            port,
            dir,
        };
        watch.wait_ready("gateway", "/healthz").await;
        Some(watch)
    }

    /// The base URL of the HTTP function `function`.
    pub fn url(&self, function: &str) -> String {
        format!("{}/lambda-url/{function}", self.base)
    }

    /// Waits until `function` answers `path` with a success (its first start builds it).
    ///
    /// # Panics
    /// When it does not within the first-build allowance.
    pub async fn wait_ready(&self, function: &str, path: &str) {
        let url = format!("{}{path}", self.url(function));
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let answer = http
                .get(&url)
                .timeout(FIRST_BUILD)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            if answer.is_some() {
                return;
            }
            assert!(
                started.elapsed() < FIRST_BUILD,
                "{function} did not answer {path} within {FIRST_BUILD:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Sends `event` to the function `function` (`cargo lambda invoke`) and returns its JSON
    /// answer.
    ///
    /// # Panics
    /// When the invocation fails.
    pub async fn invoke(&self, function: &str, event: &str) -> serde_json::Value {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = tokio::process::Command::new(cargo)
            .args([
                "lambda",
                "invoke",
                function,
                "--invoke-address",
                "127.0.0.1",
            ])
            .args(["--invoke-port", &self.port, "--data-ascii", event])
            .output()
            .await
            .expect("run cargo lambda invoke");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "invoking {function} failed: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{function} answered {stdout:?}, not JSON ({e})\n{}",
                self.log()
            )
        })
    }

    /// What the watcher and the functions printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("watch.log")).unwrap_or_default()
    }
}

impl Drop for LambdaWatch {
    fn drop(&mut self) {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        // The group holds the watcher, cargo and every function process it started.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
