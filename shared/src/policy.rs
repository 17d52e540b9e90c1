//! Policy (`SPLAI_POLICY_FILE`): which jobs may be submitted, which tasks a worker may run, and
//! per-tenant quotas.
//!
//! The file is YAML, loaded once at start-up:
//!
//! ```yaml
//! default_action: allow
//! tenant_quotas:
//!   tenant-a:
//!     max_running_jobs: 20
//!     max_running_tasks: 200
//! rules:
//!   - name: deny-confidential-external
//!     effect: deny
//!     reason: confidential_external_forbidden
//!     match:
//!       data_classification: confidential
//!       model: external_api
//! ```
//!
//! Rules are tried in file order and the first whose every set match field equals the
//! subject's wins; when none matches, `default_action` applies. A match field the subject does
//! not know (a worker's locality at submit, say) never matches. [`Policy::evaluate_submit`] and
//! [`Policy::evaluate_assignment`] are pure; quotas need counts from the store and are checked
//! by the callers.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::domain::{NewJob, Priority, TenantId, WorkerCaps};

/// What a rule, or the default, does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Let it through.
    #[default]
    Allow,
    /// Refuse it.
    Deny,
}

/// A tenant's limits; unset limits are unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantQuota {
    /// Most jobs of the tenant queued or running at once, checked at submit.
    #[serde(default)]
    pub max_running_jobs: Option<u64>,
    /// Most tasks of the tenant running at once, checked at assignment.
    #[serde(default)]
    pub max_running_tasks: Option<u64>,
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// What happens when no rule matches (`allow` unless set).
    #[serde(default)]
    pub default_action: Effect,
    /// Limits per tenant id.
    #[serde(default)]
    pub tenant_quotas: BTreeMap<String, TenantQuota>,
    /// Rules in file order; the first that matches wins.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

/// One policy rule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Shown in decisions; `rules[<index>]` when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// `allow` or `deny` (`action` is accepted as a synonym).
    #[serde(alias = "action")]
    pub effect: Effect,
    /// Why, shown to a denied client and in the audit log.
    #[serde(default)]
    pub reason: Option<String>,
    /// The conditions; an empty match matches everything.
    #[serde(default, rename = "match")]
    pub matches: RuleMatch,
}

/// A rule's conditions: every set field must equal the subject's.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    /// The job's tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The job's type.
    #[serde(default)]
    pub job_type: Option<String>,
    /// The task's type (`llm_inference`, ...); known at assignment only.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The job's requested model.
    #[serde(default)]
    pub model: Option<String>,
    /// The job's data classification.
    #[serde(default)]
    pub data_classification: Option<String>,
    /// The job's priority class.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// The job's network isolation.
    #[serde(default)]
    pub network_isolation: Option<String>,
    /// The worker's id; known at assignment only.
    #[serde(default)]
    pub worker_locality: Option<String>,
    /// Whether the task needs a GPU; known at assignment only.
    #[serde(default)]
    pub requires_gpu: Option<bool>,
}

/// What a rule is matched against. Fields left `None` are unknown and match no rule that sets
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subject {
    /// The job's tenant.
    pub tenant: Option<String>,
    /// The job's type.
    pub job_type: Option<String>,
    /// The task's type.
    pub task_type: Option<String>,
    /// The job's model.
    pub model: Option<String>,
    /// The job's data classification.
    pub data_classification: Option<String>,
    /// The job's priority.
    pub priority: Option<Priority>,
    /// The job's network isolation.
    pub network_isolation: Option<String>,
    /// The worker (its id).
    pub worker_locality: Option<String>,
    /// Whether the task needs a GPU.
    pub requires_gpu: Option<bool>,
}

impl Subject {
    /// A submission: job fields only.
    pub fn of_job(job: &NewJob) -> Subject {
        Subject {
            tenant: Some(
                job.tenant
                    .clone()
                    .unwrap_or_else(TenantId::default_tenant)
                    .to_string(),
            ),
            job_type: Some(job.job_type.clone()),
            model: job.model.clone(),
            data_classification: job.data_classification.clone(),
            priority: Some(job.priority),
            network_isolation: job.network_isolation.clone(),
            ..Subject::default()
        }
    }
}

impl RuleMatch {
    fn matches(&self, s: &Subject) -> bool {
        fn eq<T: PartialEq>(want: &Option<T>, have: &Option<T>) -> bool {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        }
        eq(&self.tenant, &s.tenant)
            && eq(&self.job_type, &s.job_type)
            && eq(&self.task_type, &s.task_type)
            && eq(&self.model, &s.model)
            && eq(&self.data_classification, &s.data_classification)
            && eq(&self.priority, &s.priority)
            && eq(&self.network_isolation, &s.network_isolation)
            && eq(&self.worker_locality, &s.worker_locality)
            && eq(&self.requires_gpu, &s.requires_gpu)
    }
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Decision {
    /// Whether it may proceed.
    pub allowed: bool,
    /// The rule that decided (its name, or `rules[<index>]`); `None` for the default action.
    pub rule: Option<String>,
    /// The rule's reason; `default_allow`/`default_deny` for the default action, or the rule's
    /// effect when it gives none.
    pub reason: String,
}

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    File(#[from] crate::yaml_file::YamlFileError),
}

impl Policy {
    /// Reads and parses a policy file.
    ///
    /// # Errors
    /// An unreadable file, or any [`Policy::parse`] error.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let (text, shown) = crate::yaml_file::read(path)?;
        Policy::parse(&text, &shown)
    }

    /// Parses policy YAML; `path` only labels errors. An empty file allows everything.
    ///
    /// # Errors
    /// Malformed YAML, or unknown or mistyped fields, with the line and column.
    pub fn parse(text: &str, path: &str) -> Result<Policy, PolicyError> {
        Ok(crate::yaml_file::parse(text, path)?)
    }

    /// First matching rule, else the default action.
    pub fn evaluate(&self, subject: &Subject) -> Decision {
        match self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches.matches(subject))
        {
            Some((i, r)) => Decision {
                allowed: r.effect == Effect::Allow,
                rule: Some(r.name.clone().unwrap_or_else(|| format!("rules[{i}]"))),
                reason: r.reason.clone().unwrap_or_else(|| match r.effect {
                    Effect::Allow => "allowed".to_owned(),
                    Effect::Deny => "denied".to_owned(),
                }),
            },
            None => Decision {
                allowed: self.default_action == Effect::Allow,
                rule: None,
                reason: match self.default_action {
                    Effect::Allow => "default_allow".to_owned(),
                    Effect::Deny => "default_deny".to_owned(),
                },
            },
        }
    }

    /// May this job be submitted? Rules on task type, worker or GPU do not match here.
    pub fn evaluate_submit(&self, job: &NewJob) -> Decision {
        self.evaluate(&Subject::of_job(job))
    }

    /// May this worker run this task? `job` is the task's job subject (see
    /// [`Subject::of_job`]-like fields), completed with the task and worker fields.
    pub fn evaluate_assignment(
        &self,
        job: &Subject,
        task_type: &str,
        requires_gpu: bool,
        worker: &WorkerCaps,
    ) -> Decision {
        let subject = Subject {
            task_type: Some(task_type.to_owned()),
            requires_gpu: Some(requires_gpu),
            worker_locality: worker.worker_id.as_ref().map(ToString::to_string),
            ..job.clone()
        };
        self.evaluate(&subject)
    }

    /// The tenant's quota, if the file sets one.
    pub fn quota(&self, tenant: &TenantId) -> Option<&TenantQuota> {
        self.tenant_quotas.get(tenant.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WorkerId;

    const SEED: &str = "\
default_action: allow
tenant_quotas:
  tenant-a:
    max_running_jobs: 20
    max_running_tasks: 200
rules:
  - name: deny-confidential-external
    effect: deny
    reason: confidential_external_forbidden
    match:
      data_classification: confidential
      model: external_api
  - name: allow-confidential
    effect: allow
    match:
      data_classification: confidential
  - name: deny-all-confidential-shadowed
    effect: deny
    reason: never_reached
    match:
      data_classification: confidential
";

    fn job(class: Option<&str>, model: Option<&str>) -> NewJob {
        NewJob {
            tenant: Some(TenantId::parse("tenant-a".to_owned()).unwrap()),
            job_type: "chat".into(),
            data_classification: class.map(Into::into),
            model: model.map(Into::into),
            ..NewJob::default()
        }
    }

    #[test]
    fn seed_parses_and_first_match_wins() {
        let p = Policy::parse(SEED, "p.yaml").unwrap();
        let t = TenantId::parse("tenant-a".to_owned()).unwrap();
        assert_eq!(p.quota(&t).unwrap().max_running_jobs, Some(20));
        let d = p.evaluate_submit(&job(Some("confidential"), Some("external_api")));
        assert_eq!(
            d,
            Decision {
                allowed: false,
                rule: Some("deny-confidential-external".into()),
                reason: "confidential_external_forbidden".into()
            }
        );
        // The allow rule comes before the shadowed deny.
        let d = p.evaluate_submit(&job(Some("confidential"), Some("local")));
        assert!(d.allowed);
        assert_eq!(d.rule.as_deref(), Some("allow-confidential"));
        // Nothing matches: the default.
        let d = p.evaluate_submit(&job(None, Some("external_api")));
        assert_eq!(
            (d.allowed, d.rule, d.reason.as_str()),
            (true, None, "default_allow")
        );
    }

    #[test]
    fn default_deny_applies_when_nothing_matches() {
        let p = Policy::parse(
            "default_action: deny\nrules:\n  - effect: allow\n    match: {tenant: ok}\n",
            "p",
        )
        .unwrap();
        let d = p.evaluate_submit(&job(None, None));
        assert_eq!((d.allowed, d.reason.as_str()), (false, "default_deny"));
        let mut ok = job(None, None);
        ok.tenant = Some(TenantId::parse("ok".to_owned()).unwrap());
        let d = p.evaluate_submit(&ok);
        assert_eq!((d.allowed, d.rule.as_deref()), (true, Some("rules[0]")));
    }

    #[test]
    fn each_match_field_decides() {
        let cases: &[(&str, Subject)] = &[
            (
                "tenant: t",
                Subject {
                    tenant: Some("t".into()),
                    ..Subject::default()
                },
            ),
            (
                "job_type: j",
                Subject {
                    job_type: Some("j".into()),
                    ..Subject::default()
                },
            ),
            (
                "task_type: llm_inference",
                Subject {
                    task_type: Some("llm_inference".into()),
                    ..Subject::default()
                },
            ),
            (
                "model: m",
                Subject {
                    model: Some("m".into()),
                    ..Subject::default()
                },
            ),
            (
                "data_classification: c",
                Subject {
                    data_classification: Some("c".into()),
                    ..Subject::default()
                },
            ),
            (
                "priority: batch",
                Subject {
                    priority: Some(Priority::Batch),
                    ..Subject::default()
                },
            ),
            (
                "network_isolation: n",
                Subject {
                    network_isolation: Some("n".into()),
                    ..Subject::default()
                },
            ),
            (
                "worker_locality: w",
                Subject {
                    worker_locality: Some("w".into()),
                    ..Subject::default()
                },
            ),
            (
                "requires_gpu: true",
                Subject {
                    requires_gpu: Some(true),
                    ..Subject::default()
                },
            ),
        ];
        for (field, subject) in cases {
            let text = format!("rules:\n  - name: r\n    effect: deny\n    match: {{{field}}}\n");
            let p = Policy::parse(&text, "p").unwrap();
            assert!(!p.evaluate(subject).allowed, "{field} should match");
            assert!(
                p.evaluate(&Subject::default()).allowed,
                "{field}: unknown never matches"
            );
        }
    }

    #[test]
    fn assignment_sees_task_and_worker() {
        let p = Policy::parse(
            "rules:\n  - name: no-gpu-on-w1\n    effect: deny\n    reason: w1_has_no_gpu\n    match: {worker_locality: w1, requires_gpu: true}\n",
            "p",
        )
        .unwrap();
        let caps = |id: &str| WorkerCaps {
            worker_id: Some(WorkerId::parse(id.to_owned()).unwrap()),
            ..WorkerCaps::default()
        };
        let s = Subject::of_job(&job(None, None));
        assert!(
            !p.evaluate_assignment(&s, "llm_inference", true, &caps("w1"))
                .allowed
        );
        assert!(
            p.evaluate_assignment(&s, "llm_inference", true, &caps("w2"))
                .allowed
        );
        assert!(
            p.evaluate_assignment(&s, "llm_inference", false, &caps("w1"))
                .allowed
        );
    }

    #[test]
    fn parse_errors_name_the_line() {
        let e = Policy::parse(
            "default_action: allow\nrules:\n  - effect: maybe\n",
            "p.yaml",
        )
        .unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("p.yaml: line 3"), "{shown}");
        let e = Policy::parse("default_action: allow\nbogus: 1\n", "p.yaml").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
