//! End-to-end test support: builds the workspace binaries once per test run and runs them as
//! real processes.
//!
//! Cargo only exposes `CARGO_BIN_EXE_*` for a package's own binaries, so this crate asks cargo
//! to build the binaries (a no-op when they are fresh) and reads their paths from cargo's JSON
//! messages. Cargo releases its build lock before running tests, so this does not block.

pub mod lambda;
pub mod model_server;
pub mod otlp_collector;
pub mod worker;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// The path of a workspace binary (`splai`, `splai-worker`, `gateway`, ...), built on first
/// use: a release build when the caller is itself built with optimisations (a benchmark
/// binary), else a debug build (the tests).
///
/// Every binary comes from one `cargo build --workspace --bins`: one feature resolution for
/// all of them, the same one `cargo lambda watch` builds the functions with. Building each
/// package on its own resolved features differently and rebuilt most dependencies once per
/// binary, which on a cold cache cost CI tens of minutes.
///
/// # Panics
/// When cargo cannot build them, or builds no binary of that name; the test cannot run
/// without it.
pub fn binary(bin: &str) -> PathBuf {
    // Concurrent first callers wait for the one build.
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(build_workspace_binaries)
        .get(bin)
        .cloned()
        .unwrap_or_else(|| panic!("the workspace has no binary named {bin}"))
}

/// Builds every binary of the workspace; their paths by name.
fn build_workspace_binaries() -> HashMap<String, PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--workspace",
        "--bins",
        "--message-format=json",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build --workspace --bins failed"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?.to_owned();
            let path = PathBuf::from(m["executable"].as_str()?);
            Some((name, path))
        })
        .collect()
}

/// A `splai serve` process on an ephemeral port. Killed when dropped.
pub struct SplaiServer {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl SplaiServer {
    /// Starts `splai serve` on `db` with extra environment, and waits until it listens.
    ///
    /// # Panics
    /// When the process exits before it listens.
    pub fn start(db: &Path, env: &[(&str, &str)]) -> SplaiServer {
        SplaiServer::start_on(db, "127.0.0.1:0", env)
    }

    /// Like [`SplaiServer::start`], listening on `listen` (e.g. a port a previous server on
    /// the same database used, so clients configured with its URL find the new one).
    ///
    /// # Panics
    /// When the process exits before it listens (e.g. the address is taken).
    pub fn start_on(db: &Path, listen: &str, env: &[(&str, &str)]) -> SplaiServer {
        Self::spawn(&["serve", "--listen", listen], db, env)
    }

    /// Starts `splai dev` (the server plus its in-process worker) on `db` with extra
    /// environment, and waits until it listens.
    ///
    /// # Panics
    /// When the process exits before it listens.
    pub fn start_dev(db: &Path, env: &[(&str, &str)]) -> SplaiServer {
        Self::spawn(&["dev", "--listen", "127.0.0.1:0"], db, env)
    }

    fn spawn(args: &[&str], db: &Path, env: &[(&str, &str)]) -> SplaiServer {
        let mut cmd = Command::new(binary("splai"));
        // A developer's own SPLAI_* settings must not leak into the process under test.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SPLAI_")) {
            cmd.env_remove(k);
        }
        cmd.args(args)
            .env("SPLAI_SQLITE_PATH", db)
            .env("SPLAI_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn splai");
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("splai exited before listening")
                .expect("read stderr");
            if let Some(url) = line.strip_prefix("splai listening on ") {
                break url.trim().to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe; its warnings go to
        // the test's output, which cargo shows when the test fails.
        std::thread::spawn(move || {
            lines
                .map_while(Result::ok)
                .for_each(|l| eprintln!("splai: {l}"))
        });
        SplaiServer { child, base }
    }

    /// SIGKILL: no graceful shutdown, nothing flushed beyond what was committed.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs a `splai` client command against this server; returns (success, stdout).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(binary("splai"))
            .args(args)
            .env("SPLAI_SERVER_URL", &self.base)
            .output()
            .expect("run splai");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for SplaiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local address nobody listens on right now, `127.0.0.1:<port>`: bound to an ephemeral
/// port and released, for a server that must keep its address across a restart.
///
/// # Panics
/// When no local port can be bound.
pub fn free_local_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    addr.to_string()
}
