//! `tool_execution`: one command in a fresh sandbox directory with a cleared environment, a
//! timeout, captured output, no network where the host can isolate it, and its whole process
//! group killed when it times out or the attempt is dropped.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use splai_shared::engine::Assignment;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::OnceCell;

use super::inputs::{input, input_f64};
use super::{Executors, TaskError, input_str};
use crate::config::{ExecutorConfig, ToolNetwork};

/// Most bytes of stdout (and of stderr) kept; the rest is read and dropped so the command
/// never blocks on a full pipe.
const OUTPUT_LIMIT: usize = 1 << 20;

/// Lines of stderr quoted when a command fails.
const STDERR_TAIL_LINES: usize = 5;

/// The only directories searched for a program: the command's own `PATH`.
const SEARCH_PATH: [&str; 2] = ["/usr/bin", "/bin"];

/// How long the isolation probe may take before the host is deemed unable to isolate.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether this host can give a command private network and PID namespaces
/// (`unshare --net --pid --map-root-user` works). Probed once, then cached.
pub async fn network_isolation_available() -> bool {
    static AVAILABLE: OnceCell<bool> = OnceCell::const_new();
    *AVAILABLE
        .get_or_init(|| probe("unshare", [UNSHARE, &["true"]].concat()))
        .await
}

/// Whether `setpriv --pdeathsig` works here, so a command dies with a worker that is killed
/// outright (no destructor runs then). Probed once, then cached.
async fn parent_death_signal_available() -> bool {
    static AVAILABLE: OnceCell<bool> = OnceCell::const_new();
    *AVAILABLE
        .get_or_init(|| probe("setpriv", [PDEATHSIG, &["true"]].concat()))
        .await
}

/// `setpriv` arguments that SIGKILL the command when the worker dies. The kernel sends it when
/// the thread that spawned the command exits; commands are spawned from the runtime's worker
/// threads, which live as long as the worker.
const PDEATHSIG: &[&str] = &["--pdeathsig", "KILL", "--"];

/// `unshare` arguments: no network, and a PID namespace that the kernel empties when its
/// first process dies (`--kill-child`), so no descendant outlives the command.
const UNSHARE: &[&str] = &[
    "--net",
    "--pid",
    "--kill-child=SIGKILL",
    "--map-root-user",
    "--",
];

async fn probe(program: &str, args: Vec<&str>) -> bool {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, cmd.status()).await,
        Ok(Ok(status)) if status.success()
    )
}

/// What to run: a program and its arguments, never through a shell unless `command` asked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Invocation {
    program: String,
    args: Vec<String>,
}

/// How a command ended.
struct Finished {
    status: ExitStatus,
    stdout: Captured,
    stderr: Captured,
}

/// Up to [`OUTPUT_LIMIT`] bytes of one stream.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Runs the task's command.
pub(super) async fn run(ex: &Executors, task: &Assignment) -> Result<Value, TaskError> {
    let config = &ex.config;
    let invocation = invocation(task, config.tool_allowlist.as_deref())?;
    let limit = time_limit(task, config)?;
    let isolate = isolate_network(config.tool_network).await?;
    let dir = prepare_sandbox(&config.sandbox_root, task).await?;
    let program = resolve_program(&invocation.program, &dir)?;
    let started = Instant::now();
    let finished = execute(&program, &invocation.args, &dir, isolate, limit).await?;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let stdout = String::from_utf8_lossy(&finished.stdout.bytes).into_owned();
    let stderr = String::from_utf8_lossy(&finished.stderr.bytes).into_owned();
    if !finished.status.success() {
        return Err(TaskError::Retryable(failure_message(
            finished.status,
            &stderr,
        )));
    }
    Ok(json!({
        "exit_code": finished.status.code(),
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": finished.stdout.truncated,
        "stderr_truncated": finished.stderr.truncated,
        "duration_ms": duration_ms,
        "sandbox_dir": dir.display().to_string(),
        "network_isolated": isolate,
    }))
}

/// `argv` runs directly; `command` runs through `/bin/sh -c`, unless an allowlist is set:
/// then only `argv` with an allowed program (compared by basename) may run.
fn invocation(task: &Assignment, allowlist: Option<&[String]>) -> Result<Invocation, TaskError> {
    if let Some(v) = input(task, "argv") {
        let argv: Option<Vec<String>> = v
            .as_array()
            .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_owned)).collect());
        let Some((program, args)) = argv.as_deref().and_then(<[String]>::split_first) else {
            return Err(TaskError::invalid(
                "`argv` must be a non-empty array of strings",
            ));
        };
        if let Some(allowed) = allowlist {
            let name = basename(program);
            if !allowed.iter().any(|a| basename(a) == name) {
                return Err(TaskError::invalid(format!(
                    "tool `{program}` is not in SPLAI_TOOL_ALLOWLIST ({})",
                    allowed.join(", ")
                )));
            }
        }
        return Ok(Invocation {
            program: program.clone(),
            args: args.to_vec(),
        });
    }
    match input_str(task, "command") {
        Some(_) if allowlist.is_some() => Err(TaskError::invalid(
            "tool_execution refuses shell `command`s while SPLAI_TOOL_ALLOWLIST is set: pass \
             `argv` with an allowed program",
        )),
        Some(command) => Ok(Invocation {
            program: "/bin/sh".to_owned(),
            args: vec!["-c".to_owned(), command],
        }),
        None => Err(TaskError::invalid(
            "tool_execution needs `argv` (an array of strings) or `command` (a shell string)",
        )),
    }
}

fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// The task's `timeout_sec` input (seconds, fractions allowed), else SPLAI_TOOL_TIMEOUT_SECONDS,
/// and never longer than the task's own timeout.
fn time_limit(task: &Assignment, config: &ExecutorConfig) -> Result<Duration, TaskError> {
    let asked = input_f64(task, "timeout_sec")?
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(config.tool_timeout);
    Ok(asked.min(Duration::from_secs(u64::from(task.timeout_sec.max(1)))))
}

/// Whether to run the command in a private network namespace.
async fn isolate_network(mode: ToolNetwork) -> Result<bool, TaskError> {
    match mode {
        ToolNetwork::Host => Ok(false),
        ToolNetwork::Auto => Ok(network_isolation_available().await),
        ToolNetwork::None if network_isolation_available().await => Ok(true),
        ToolNetwork::None => Err(TaskError::Permanent(
            "SPLAI_TOOL_NETWORK=none but this host cannot isolate the network (`unshare --net \
             --map-root-user` is unavailable or not permitted): allow unprivileged user \
             namespaces, or set SPLAI_TOOL_NETWORK=host or auto"
                .to_owned(),
        )),
    }
}

/// A fresh `<sandbox root>/<job>/<task>/attempt-<n>`: whatever an earlier run of the same
/// attempt left is removed.
async fn prepare_sandbox(root: &Path, task: &Assignment) -> Result<PathBuf, TaskError> {
    let dir = root
        .join(path_segment(task.job_id.as_str()))
        .join(path_segment(task.task_id.as_str()))
        .join(format!("attempt-{}", task.attempt));
    let failed = |e: std::io::Error| {
        TaskError::Retryable(format!("cannot prepare the sandbox {}: {e}", dir.display()))
    };
    match tokio::fs::remove_dir_all(&dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
        _ => {}
    }
    tokio::fs::create_dir_all(&dir).await.map_err(failed)?;
    Ok(dir)
}

/// An id as one directory name: ids may contain `/` and start with `.`, which must not
/// reach outside the sandbox root.
fn path_segment(id: &str) -> String {
    let s = id.replace(['/', '\\'], "_");
    if s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

/// The program's path, checked before running so a missing program is a permanent error
/// whether or not the command runs under `unshare`.
fn resolve_program(program: &str, dir: &Path) -> Result<PathBuf, TaskError> {
    let found = if program.contains('/') {
        let path = dir.join(program);
        path.is_file().then_some(path)
    } else {
        SEARCH_PATH
            .iter()
            .map(|d| Path::new(d).join(program))
            .find(|p| p.is_file())
    };
    found.ok_or_else(|| {
        TaskError::invalid(format!(
            "tool `{program}` was not found (searched {})",
            SEARCH_PATH.join(":")
        ))
    })
}

/// The command: in private network and PID namespaces when `isolate`, tied to the worker's
/// life where `setpriv` allows, with only the sandbox's environment, in its own process
/// group, killed if dropped.
fn command(
    program: &Path,
    args: &[String],
    dir: &Path,
    isolate: bool,
    die_with_worker: bool,
) -> Command {
    let mut wrapper: Vec<&str> = Vec::new();
    if die_with_worker {
        wrapper.push("setpriv");
        wrapper.extend(PDEATHSIG);
    }
    if isolate {
        wrapper.push("unshare");
        wrapper.extend(UNSHARE);
    }
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", SEARCH_PATH.join(":"))
        .env("HOME", dir)
        .env("TMPDIR", dir)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// Runs the program in its own process group and collects its output. When it times out, or
/// this future is dropped, the whole group is killed.
#[tracing::instrument(skip_all, fields(program = %program.display(), isolate = isolate))]
async fn execute(
    program: &Path,
    args: &[String],
    dir: &Path,
    isolate: bool,
    limit: Duration,
) -> Result<Finished, TaskError> {
    let die_with_worker = parent_death_signal_available().await;
    let mut cmd = command(program, args, dir, isolate, die_with_worker);
    let mut child = cmd.spawn().map_err(|e| {
        let message = format!("cannot start `{}`: {e}", program.display());
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                TaskError::Permanent(message)
            }
            _ => TaskError::Retryable(message),
        }
    })?;
    // Declared after `child`, so it is dropped first: the group is killed while its leader
    // is still unreaped and its id cannot have been reused.
    let mut group = ProcessGroup::of(child.id());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let collect = async {
        tokio::join!(
            async {
                let status = child.wait().await;
                // Background children would keep the pipes open: they go with the leader.
                group.kill();
                status
            },
            read_capped(stdout),
            read_capped(stderr),
        )
    };
    let (status, stdout, stderr) = tokio::time::timeout(limit, collect)
        .await
        .map_err(|_| TaskError::Retryable(format!("tool timed out after {}s", seconds(limit))))?;
    group.disarm();
    let status = status.map_err(|e| TaskError::Retryable(format!("waiting for the tool: {e}")))?;
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

/// Kills a process group with SIGKILL when dropped, unless disarmed.
struct ProcessGroup {
    pgid: Option<Pid>,
}

impl ProcessGroup {
    /// The group led by `pid` (the child was started with `process_group(0)`).
    fn of(pid: Option<u32>) -> Self {
        let pgid = pid.and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
        Self { pgid }
    }

    fn kill(&self) {
        if let Some(pgid) = self.pgid {
            // ESRCH (nobody left) is the expected case after a clean exit.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    /// The group is gone; never signal its id again (it may be reused).
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> Captured {
    let mut out = Captured::default();
    let Some(mut pipe) = pipe else {
        return out;
    };
    let mut buf = vec![0_u8; 16 * 1024];
    // A read error ends the capture like EOF: what was read so far is the output.
    while let Ok(n @ 1..) = pipe.read(&mut buf).await {
        let room = OUTPUT_LIMIT - out.bytes.len();
        if n > room {
            out.truncated = true;
        }
        out.bytes.extend_from_slice(&buf[..n.min(room)]);
    }
    out
}

/// "exit code N" or "killed by signal N", with the last lines of stderr.
fn failure_message(status: ExitStatus, stderr: &str) -> String {
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("tool exited with code {code}"),
        (None, Some(signal)) => format!("tool was killed by signal {signal}"),
        (None, None) => "tool failed".to_owned(),
    };
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..];
    if tail.is_empty() {
        format!("{how} (no stderr)")
    } else {
        format!("{how}: {}", tail.join("\n"))
    }
}

/// Seconds without a useless fraction: `30`, `0.25`.
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        d.as_secs_f64().to_string()
    }
}

#[cfg(test)]
mod tests;
