//! What the host offers (CPU, memory, GPU, cached models) and how loaded it is.

use std::path::Path;
use std::process::Command;

use splai_shared::domain::Heartbeat;

/// CPU cores available to this process.
pub fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// Total memory in MB, from `/proc/meminfo` (0 where it cannot be read).
pub fn memory_mb() -> u64 {
    meminfo("MemTotal:").map_or(0, |kb| kb / 1024)
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// GPU memory in MB of the first NVIDIA GPU, when `nvidia-smi` answers.
pub fn nvidia_gpu_memory_mb() -> Option<u64> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=memory.total", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Marks a model directory whose download has not finished (written by `model_download`).
const INCOMPLETE_MARKER: &str = ".splai-download-incomplete";

/// Models in the cache: every directory `<org>/<name>` (or `<name>`) holding files, except
/// downloads still running or abandoned partway.
pub fn cached_models(cache: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(top) = std::fs::read_dir(cache) else {
        return out;
    };
    for entry in top.flatten().filter(|e| e.path().is_dir()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let children: Vec<_> = std::fs::read_dir(entry.path())
            .map(|d| d.flatten().collect())
            .unwrap_or_default();
        let nested: Vec<_> = children.iter().filter(|c| c.path().is_dir()).collect();
        if !nested.is_empty() && nested.len() == children.len() {
            // An organisation directory: each child directory is one model.
            for c in nested.into_iter().filter(|c| complete(&c.path())) {
                out.push(format!("{name}/{}", c.file_name().to_string_lossy()));
            }
        } else if !children.is_empty() && complete(&entry.path()) {
            out.push(name);
        }
    }
    out.sort();
    out
}

fn complete(model_dir: &Path) -> bool {
    std::fs::read_dir(model_dir).is_ok_and(|mut d| d.next().is_some())
        && !model_dir.join(INCOMPLETE_MARKER).exists()
}

/// Load figures for a heartbeat.
pub fn load(running_tasks: usize) -> Heartbeat {
    let cpu_util = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |l| (l / cpus()).clamp(0.0, 1.0));
    let memory_util = match (meminfo("MemTotal:"), meminfo("MemAvailable:")) {
        (Some(total), Some(avail)) if total > 0 => 1.0 - avail as f64 / total as f64,
        _ => 0.0,
    };
    Heartbeat {
        running_tasks: u32::try_from(running_tasks).unwrap_or(u32::MAX),
        cpu_util,
        memory_util,
        ..Heartbeat::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Organisation directories expand to `org/name`; empty directories are not models.
    #[test]
    fn cached_models_lists_directories_with_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("meta-llama/Llama-3-8B")).unwrap();
        std::fs::write(p.join("meta-llama/Llama-3-8B/config.json"), "{}").unwrap();
        std::fs::create_dir_all(p.join("tiny")).unwrap();
        std::fs::write(p.join("tiny/model.bin"), "x").unwrap();
        std::fs::create_dir_all(p.join("empty")).unwrap();
        std::fs::create_dir_all(p.join("org/half")).unwrap();
        std::fs::write(p.join("org/half/.splai-download-incomplete"), "").unwrap();
        assert_eq!(cached_models(p), ["meta-llama/Llama-3-8B", "tiny"]);
    }
}
