//! Tool sandbox tests: real processes, short timeouts.

use std::time::Duration;

use serde_json::json;
use splai_shared::domain::TaskType;

use super::*;
use crate::executor::testing::{a_task, executors};

fn tool(inputs: Value) -> Assignment {
    a_task(TaskType::ToolExecution, inputs)
}

/// Whether `pid` still runs (a zombie has already died; only its parent has not reaped it).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
            !state.starts_with('Z')
        }
    }
}

/// Waits (bounded) for `pid` to die; SIGKILL delivery is asynchronous.
#[track_caller]
fn assert_dies(pid: u32) {
    for _ in 0..200 {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("process {pid} outlived the tool's process group");
}

/// Reads the pid a command wrote to `child.pid` in its sandbox.
async fn child_pid(sandbox: &Path) -> u32 {
    let file = sandbox.join("job-1/t1/attempt-1/child.pid");
    for _ in 0..200 {
        if let Ok(text) = tokio::fs::read_to_string(&file).await
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the command never wrote {}", file.display());
}

/// A background grandchild that would outlive its shell, for the kill tests.
const ORPHAN_MAKER: &str = "sleep 30 & echo $! > child.pid; wait";

/// The command sees only PATH, HOME, TMPDIR and LANG, and runs in its sandbox directory.
#[tokio::test]
async fn environment_is_cleared_and_cwd_is_the_sandbox() {
    let (ex, dir) = executors(|_| {});
    let out = run(&ex, &tool(json!({"argv": ["env"]}))).await.unwrap();
    let sandbox = dir.path().join("sandboxes/job-1/t1/attempt-1");
    let sandbox = sandbox.display().to_string();
    let mut lines: Vec<&str> = out["stdout"].as_str().unwrap().lines().collect();
    lines.sort_unstable();
    let expected = [
        format!("HOME={sandbox}"),
        "LANG=C.UTF-8".to_owned(),
        "PATH=/usr/bin:/bin".to_owned(),
        format!("TMPDIR={sandbox}"),
    ];
    assert_eq!(lines, expected);
    let pwd = run(&ex, &tool(json!({"argv": ["pwd"]}))).await.unwrap();
    assert_eq!(pwd["stdout"], format!("{sandbox}\n"));
    assert_eq!(out["sandbox_dir"], sandbox.as_str());
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["network_isolated"], false);
}

/// `argv` runs without a shell: shell syntax reaches the program verbatim.
#[tokio::test]
async fn argv_runs_without_a_shell() {
    let (ex, _dir) = executors(|_| {});
    let out = run(&ex, &tool(json!({"argv": ["echo", "$HOME", "a;b"]})))
        .await
        .unwrap();
    assert_eq!(out["stdout"], "$HOME a;b\n");
}

/// On timeout the whole process group dies, including a child that outlives its parent.
#[tokio::test]
async fn timeout_kills_the_process_group() {
    let (ex, dir) = executors(|_| {});
    let task = tool(json!({"command": ORPHAN_MAKER, "timeout_sec": 1}));
    let sandboxes = dir.path().join("sandboxes");
    let (result, pid) = tokio::join!(run(&ex, &task), child_pid(&sandboxes));
    assert_eq!(
        result.unwrap_err(),
        TaskError::Retryable("tool timed out after 1s".into())
    );
    assert_dies(pid);
}

/// Dropping the attempt (the runtime's soft timeout) kills the whole process group too.
#[tokio::test]
async fn dropping_the_attempt_kills_the_process_group() {
    let (ex, dir) = executors(|_| {});
    let task = tool(json!({"command": ORPHAN_MAKER}));
    let sandboxes = dir.path().join("sandboxes");
    let pid = {
        let attempt = run(&ex, &task);
        tokio::pin!(attempt);
        tokio::select! {
            r = &mut attempt => panic!("the command should still be running: {r:?}"),
            pid = child_pid(&sandboxes) => pid,
        }
        // The attempt is dropped here, with its command still running.
    };
    assert_dies(pid);
}

/// A non-zero exit is retryable and quotes the exit code and the end of stderr.
#[tokio::test]
async fn non_zero_exit_fails_with_code_and_stderr() {
    let (ex, _dir) = executors(|_| {});
    let task = tool(json!({"command": "echo first >&2; echo oops >&2; exit 3"}));
    let e = run(&ex, &task).await.unwrap_err();
    assert_eq!(
        e,
        TaskError::Retryable("tool exited with code 3: first\noops".into())
    );
}

/// Output beyond 1 MiB is dropped and flagged.
#[tokio::test]
async fn large_output_is_truncated_and_flagged() {
    let (ex, _dir) = executors(|_| {});
    let task = tool(json!({"command": "yes | head -c 1500000"}));
    let out = run(&ex, &task).await.unwrap();
    assert_eq!(out["stdout"].as_str().unwrap().len(), OUTPUT_LIMIT);
    assert_eq!(out["stdout_truncated"], true);
    assert_eq!(out["stderr_truncated"], false);
}

/// With an allowlist, shell commands and unlisted programs are refused; listed ones run.
#[tokio::test]
async fn allowlist_refuses_commands_and_unlisted_programs() {
    let (ex, _dir) = executors(|c| c.tool_allowlist = Some(vec!["echo".into()]));
    let refused = [json!({"command": "echo hi"}), json!({"argv": ["/bin/ls"]})];
    for inputs in refused {
        let e = run(&ex, &tool(inputs)).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("SPLAI_TOOL_ALLOWLIST"), "{e}");
    }
    let out = run(&ex, &tool(json!({"argv": ["/usr/bin/echo", "hi"]})))
        .await
        .unwrap();
    assert_eq!(out["stdout"], "hi\n");
}

/// A task with nothing to run, or a program that does not exist, fails permanently.
#[tokio::test]
async fn missing_command_or_program_is_permanent() {
    let (ex, _dir) = executors(|_| {});
    for inputs in [
        json!({}),
        json!({"argv": []}),
        json!({"argv": ["no-such-tool-xyz"]}),
    ] {
        let e = run(&ex, &tool(inputs)).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
    }
}

/// The tool's timeout never exceeds the task's own.
#[test]
fn time_limit_is_capped_by_the_task_timeout() {
    let (ex, _dir) = executors(|c| c.tool_timeout = Duration::from_secs(30));
    let mut task = tool(json!({}));
    task.timeout_sec = 10;
    assert_eq!(
        time_limit(&task, &ex.config).unwrap(),
        Duration::from_secs(10)
    );
    task.timeout_sec = 60;
    assert_eq!(
        time_limit(&task, &ex.config).unwrap(),
        Duration::from_secs(30)
    );
    task.inputs.insert("timeout_sec".into(), json!(2));
    assert_eq!(
        time_limit(&task, &ex.config).unwrap(),
        Duration::from_secs(2)
    );
}

/// Ids cannot lead the sandbox outside its root.
#[test]
fn path_segment_keeps_ids_inside_the_sandbox_root() {
    assert_eq!(path_segment("../../etc"), "_.._.._etc");
    assert_eq!(path_segment(".."), "_..");
    assert_eq!(path_segment("analyze-0"), "analyze-0");
}

/// With SPLAI_TOOL_NETWORK=none the command sees only loopback (where the host can isolate).
#[tokio::test]
async fn network_none_runs_in_a_private_namespace() {
    let (ex, _dir) = executors(|c| c.tool_network = ToolNetwork::None);
    let task = tool(json!({"argv": ["cat", "/proc/net/dev"]}));
    if !network_isolation_available().await {
        let e = run(&ex, &task).await.unwrap_err();
        assert!(
            !e.is_retryable() && e.to_string().contains("SPLAI_TOOL_NETWORK"),
            "{e}"
        );
        return;
    }
    let out = run(&ex, &task).await.unwrap();
    assert_eq!(out["network_isolated"], true);
    let interfaces: Vec<&str> = out["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"]);
}
