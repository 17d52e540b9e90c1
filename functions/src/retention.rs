//! Retention (`SPLAI_JOB_TTL`): terminal jobs older than the TTL are pruned from the store with
//! everything of theirs, then their artifacts are deleted. Run by the local server once a
//! minute and by every scheduled sweeper pass, only when a TTL is set.

use std::sync::Arc;
use std::time::Duration;

use splai_shared::artifacts::ArtifactStore;
use splai_shared::engine::{Engine, EngineError};

/// Jobs one store call prunes.
const BATCH: usize = 100;

/// Batches one pass prunes at most, so that a pass (a Lambda invocation) stays short; a
/// backlog drains over the next passes.
const MAX_BATCHES: usize = 10;

/// The longest TTL accepted: a century, so that `now - ttl` cannot leave the calendar.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses `SPLAI_JOB_TTL`: whole seconds, or a number with a unit (`s`, `m`, `h`, `d`), e.g.
/// `3600`, `720h`, `30d`. `0` (in any unit) keeps jobs forever: `None`.
///
/// # Errors
/// Anything else, or more than a century.
pub fn parse_ttl(raw: &str) -> Result<Option<Duration>, String> {
    let raw = raw.trim();
    let (digits, unit) = match raw.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&raw[..i], c),
        _ => (raw, 's'),
    };
    let scale: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        other => return Err(format!("unknown unit `{other}`; use s, m, h or d")),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{raw}` is not a whole number of seconds, or a number with s, m, h or d"
        ));
    }
    let secs = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&s| s <= MAX_TTL.as_secs())
        .ok_or_else(|| format!("`{raw}` is longer than a century"))?;
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

/// Prunes jobs finished more than `ttl` ago and deletes their artifacts.
pub struct Retention {
    artifacts: Arc<dyn ArtifactStore>,
    ttl: Duration,
}

impl Retention {
    /// Retention after `ttl` (from `SPLAI_JOB_TTL`), deleting artifacts from `artifacts`.
    pub fn new(artifacts: Arc<dyn ArtifactStore>, ttl: Duration) -> Self {
        Self { artifacts, ttl }
    }

    /// One pass: prunes up to [`MAX_BATCHES`] batches of jobs that finished more than the TTL
    /// ago, then deletes each pruned job's artifacts. Returns how many jobs were pruned.
    ///
    /// The store rows go first: a job is pruned once, so an artifact delete that fails is
    /// logged (with the job id) and left, never retried; the artifact bucket's lifecycle rule
    /// (`infra/template.yaml`) removes such leftovers on S3.
    ///
    /// # Errors
    /// The store failed; jobs pruned by earlier batches stay pruned.
    pub async fn prune_once(&self, engine: &Engine) -> Result<usize, EngineError> {
        let before = engine.now() - self.ttl;
        let mut pruned = 0;
        for _ in 0..MAX_BATCHES {
            let ids = engine.prune(before, BATCH).await?;
            pruned += ids.len();
            for id in &ids {
                if let Err(e) = self.artifacts.delete_job(id).await {
                    tracing::warn!(job_id = %id, error = %e, "could not delete a pruned job's artifacts");
                }
            }
            if ids.len() < BATCH {
                break;
            }
        }
        if pruned > 0 {
            tracing::info!(pruned, "pruned jobs past SPLAI_JOB_TTL");
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds alone or with a unit; zero in any unit is "keep forever".
    #[test]
    fn ttl_takes_seconds_or_a_unit() {
        let secs = |s: u64| Ok(Some(Duration::from_secs(s)));
        assert_eq!(parse_ttl("3600"), secs(3_600));
        assert_eq!(parse_ttl(" 90s "), secs(90));
        assert_eq!(parse_ttl("15m"), secs(900));
        assert_eq!(parse_ttl("720h"), secs(720 * 3_600));
        assert_eq!(parse_ttl("30d"), secs(30 * 86_400));
        assert_eq!(parse_ttl("0"), Ok(None));
        assert_eq!(parse_ttl("0d"), Ok(None));
    }

    /// Anything else is refused: no number, a fraction, a sign, an unknown unit, a unit
    /// alone, spaces inside, more than a century.
    #[test]
    fn ttl_refuses_what_it_cannot_read() {
        for bad in [
            "",
            "h",
            "1.5h",
            "-1",
            "+5",
            "10w",
            "10 h",
            "1h30m",
            "ten",
            "36501d",
            "99999999999999999999",
        ] {
            assert!(parse_ttl(bad).is_err(), "`{bad}` accepted");
        }
        assert!(parse_ttl("36500d").is_ok());
    }
}
