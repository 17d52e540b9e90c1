//! Model routing (`SPLAI_MODEL_ROUTING_FILE`): which backend and model a job's inference runs on.
//!
//! The file is YAML, loaded once at start-up:
//!
//! ```yaml
//! default_backend: ollama
//! default_model: llama3-8b-q4
//! rules:
//!   - name: reasoning-gpu
//!     latency_class: interactive
//!     reasoning_required: true
//!     use_backend: vllm
//!     use_model: llama3-70b
//! ```
//!
//! [`RoutingTable::route`] is pure; [`RoutingTable::apply`] records the answer on the planned
//! `llm_inference` tasks as placement constraints, which the queue turns into hard claim
//! requirements.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::domain::{NewJob, TaskSpec, TaskType};

/// A parsed routing file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingTable {
    /// The backend when no rule names one.
    #[serde(default)]
    pub default_backend: Option<String>,
    /// The model when neither the request nor a rule names one.
    #[serde(default)]
    pub default_model: Option<String>,
    /// Rules in file order; the first that matches wins.
    #[serde(default)]
    pub rules: Vec<RoutingRule>,
}

/// One routing rule: every match field it sets must equal the job's; unset fields match anything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingRule {
    /// Shown in decisions; `rules[<index>]` when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Matches the job's `latency_class` exactly.
    #[serde(default)]
    pub latency_class: Option<String>,
    /// Matches the job's `reasoning_required`.
    #[serde(default)]
    pub reasoning_required: Option<bool>,
    /// Matches the job's `data_classification` exactly.
    #[serde(default)]
    pub data_classification: Option<String>,
    /// The backend to use; the default backend when absent.
    #[serde(default)]
    pub use_backend: Option<String>,
    /// The model to use (unless the request names one); the default model when absent.
    #[serde(default)]
    pub use_model: Option<String>,
}

impl RoutingRule {
    fn matches(&self, job: &NewJob) -> bool {
        let field = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        field(&self.latency_class, &job.latency_class)
            && field(&self.data_classification, &job.data_classification)
            && self
                .reasoning_required
                .is_none_or(|w| w == job.reasoning_required)
    }
}

/// Where a job's inference goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
pub struct Route {
    /// The backend a worker must offer, if any.
    pub backend: Option<String>,
    /// The model a worker must serve, if any.
    pub model: Option<String>,
    /// The rule that matched (its name, or `rules[<index>]`); `None` when the defaults applied.
    pub rule: Option<String>,
}

/// Why a routing file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    File(#[from] crate::yaml_file::YamlFileError),
    /// A rule would change nothing.
    #[error("{path}: rule `{rule}` sets neither use_backend nor use_model")]
    EmptyRule {
        /// The file.
        path: String,
        /// The rule's name or index.
        rule: String,
    },
}

impl RoutingTable {
    /// Reads and parses a routing file.
    ///
    /// # Errors
    /// An unreadable file, or any [`RoutingTable::parse`] error.
    pub fn load(path: &Path) -> Result<RoutingTable, RoutingError> {
        let (text, shown) = crate::yaml_file::read(path)?;
        RoutingTable::parse(&text, &shown)
    }

    /// Parses routing YAML; `path` only labels errors.
    ///
    /// # Errors
    /// Malformed YAML, unknown or mistyped fields (with the line and column), or a rule with
    /// neither `use_backend` nor `use_model`.
    pub fn parse(text: &str, path: &str) -> Result<RoutingTable, RoutingError> {
        // An empty file is a table with no defaults and no rules, not a parse error.
        let table: RoutingTable = crate::yaml_file::parse(text, path)?;
        if let Some((i, rule)) = table
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.use_backend.is_none() && r.use_model.is_none())
        {
            return Err(RoutingError::EmptyRule {
                path: path.to_owned(),
                rule: rule_label(rule, i),
            });
        }
        Ok(table)
    }

    /// Routes a job.
    ///
    /// Precedence, reading the operator document's "the request's explicit model overrides the
    /// default first" as: the client's own choice is never overridden by the operator's table.
    /// - model: the request's `model`, else the first matching rule's `use_model`, else
    ///   `default_model`;
    /// - backend: the first matching rule's `use_backend`, else `default_backend` (a request
    ///   cannot name a backend).
    ///
    /// A rule matches when each match field it sets (`latency_class`, `reasoning_required`,
    /// `data_classification`) equals the job's; rules are tried in file order and the first
    /// match wins, even when the request's model makes its `use_model` moot.
    pub fn route(&self, job: &NewJob) -> Route {
        let matched = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.matches(job));
        let (rule_backend, rule_model, rule) = match matched {
            Some((i, r)) => (
                r.use_backend.clone(),
                r.use_model.clone(),
                Some(rule_label(r, i)),
            ),
            None => (None, None, None),
        };
        Route {
            backend: rule_backend.or_else(|| self.default_backend.clone()),
            model: job
                .model
                .clone()
                .or(rule_model)
                .or_else(|| self.default_model.clone()),
            rule,
        }
    }

    /// Records the job's route on every planned `llm_inference` task, field by field: a task
    /// whose constraints already name a backend (or a model) keeps its own. Other task types,
    /// `embedding` included, are left alone: the routing file names generation models, and the
    /// operator document says nothing of embeddings.
    pub fn apply(&self, job: &NewJob, specs: &mut [TaskSpec]) -> Route {
        let route = self.route(job);
        for spec in specs
            .iter_mut()
            .filter(|s| s.task_type == TaskType::LlmInference)
        {
            let c = &mut spec.constraints;
            if c.backend.is_none() {
                c.backend.clone_from(&route.backend);
            }
            if c.model.is_none() {
                c.model.clone_from(&route.model);
            }
        }
        route
    }
}

fn rule_label(rule: &RoutingRule, index: usize) -> String {
    rule.name
        .clone()
        .unwrap_or_else(|| format!("rules[{index}]"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Constraints, TaskId};
    use crate::yaml_file::YamlFileError;

    const SEED: &str = "\
default_backend: ollama
default_model: llama3-8b-q4
rules:
  - name: reasoning-gpu
    latency_class: interactive
    reasoning_required: true
    use_backend: vllm
    use_model: llama3-70b
  - name: confidential-local
    data_classification: confidential
    use_backend: llamacpp
  - name: batch-small
    latency_class: batch
    use_model: phi3
";

    fn table() -> RoutingTable {
        RoutingTable::parse(SEED, "routing.yaml").unwrap()
    }

    fn job() -> NewJob {
        NewJob {
            job_type: "chat".into(),
            ..Default::default()
        }
    }

    fn route(t: &RoutingTable, j: NewJob) -> (Option<String>, Option<String>, Option<String>) {
        let r = t.route(&j);
        (r.backend, r.model, r.rule)
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    /// The operator document's example parses into defaults and ordered rules.
    #[test]
    fn seed_example_parses() {
        let t = table();
        assert_eq!(t.default_backend.as_deref(), Some("ollama"));
        assert_eq!(t.default_model.as_deref(), Some("llama3-8b-q4"));
        assert_eq!(t.rules.len(), 3);
        assert_eq!(t.rules[0].reasoning_required, Some(true));
    }

    /// With no rule matching, the defaults apply and no rule is named.
    #[test]
    fn no_match_uses_defaults() {
        assert_eq!(
            route(&table(), job()),
            (s("ollama"), s("llama3-8b-q4"), None)
        );
    }

    /// A rule needs every match field it sets: latency_class and reasoning_required together.
    #[test]
    fn rule_matches_only_when_all_its_fields_match() {
        let interactive = NewJob {
            latency_class: s("interactive"),
            ..job()
        };
        assert_eq!(route(&table(), interactive.clone()).2, None);
        let reasoning = NewJob {
            reasoning_required: true,
            ..job()
        };
        assert_eq!(route(&table(), reasoning).2, None);
        let both = NewJob {
            reasoning_required: true,
            ..interactive
        };
        assert_eq!(
            route(&table(), both),
            (s("vllm"), s("llama3-70b"), s("reasoning-gpu"))
        );
    }

    /// data_classification matches exactly; a rule without use_model keeps the default model.
    #[test]
    fn data_classification_rule_routes_backend_and_keeps_default_model() {
        let j = NewJob {
            data_classification: s("confidential"),
            ..job()
        };
        assert_eq!(
            route(&table(), j),
            (s("llamacpp"), s("llama3-8b-q4"), s("confidential-local"))
        );
        let other = NewJob {
            data_classification: s("Confidential"),
            ..job()
        };
        assert_eq!(route(&table(), other).2, None);
    }

    /// A rule without use_backend keeps the default backend.
    #[test]
    fn model_only_rule_keeps_default_backend() {
        let j = NewJob {
            latency_class: s("batch"),
            ..job()
        };
        assert_eq!(
            route(&table(), j),
            (s("ollama"), s("phi3"), s("batch-small"))
        );
    }

    /// When several rules match, the first in file order wins.
    #[test]
    fn first_matching_rule_wins() {
        let j = NewJob {
            latency_class: s("interactive"),
            reasoning_required: true,
            data_classification: s("confidential"),
            ..job()
        };
        assert_eq!(route(&table(), j.clone()).2, s("reasoning-gpu"));

        let mut reversed = table();
        reversed.rules.swap(0, 1);
        assert_eq!(
            route(&reversed, j),
            (s("llamacpp"), s("llama3-8b-q4"), s("confidential-local"))
        );
    }

    /// The request's model beats both the default and a matching rule's model; the rule
    /// still picks the backend.
    #[test]
    fn explicit_model_overrides_default_and_rule_model() {
        let plain = NewJob {
            model: s("mistral"),
            ..job()
        };
        assert_eq!(route(&table(), plain), (s("ollama"), s("mistral"), None));
        let matching = NewJob {
            model: s("mistral"),
            latency_class: s("interactive"),
            reasoning_required: true,
            ..job()
        };
        assert_eq!(
            route(&table(), matching),
            (s("vllm"), s("mistral"), s("reasoning-gpu"))
        );
    }

    /// A rule with no match fields matches every job; unnamed rules are labelled by index.
    #[test]
    fn catch_all_rule_is_labelled_by_index() {
        let t = RoutingTable::parse("rules:\n  - use_backend: vllm\n", "r.yaml").unwrap();
        assert_eq!(route(&t, job()), (s("vllm"), None, s("rules[0]")));
    }

    /// An empty table routes nowhere.
    #[test]
    fn empty_file_routes_nothing() {
        let t = RoutingTable::parse("  \n", "r.yaml").unwrap();
        assert_eq!(t, RoutingTable::default());
        assert_eq!(route(&t, job()), (None, None, None));
    }

    /// A mistyped field fails with the file, the line and the problem.
    #[test]
    fn parse_error_names_file_and_line() {
        let text = "default_backend: ollama\nrules:\n  - name: r\n    reasoning_required: maybe\n    use_backend: vllm\n";
        let e = RoutingTable::parse(text, "/etc/routing.yaml").unwrap_err();
        let shown = e.to_string();
        assert!(
            matches!(e, RoutingError::File(YamlFileError::Parse { line: 4, .. })),
            "{shown}"
        );
        assert!(shown.starts_with("/etc/routing.yaml: line 4"), "{shown}");
        assert!(shown.contains("reasoning_required"), "{shown}");
    }

    /// Unknown keys (a typo such as `use_modle`) are errors, not silently ignored.
    #[test]
    fn unknown_field_is_rejected_with_its_line() {
        let text = "rules:\n  - name: r\n    use_modle: x\n";
        let e = RoutingTable::parse(text, "r.yaml").unwrap_err();
        assert!(
            matches!(e, RoutingError::File(YamlFileError::Parse { line: 3, .. })),
            "{e}"
        );
        assert!(e.to_string().contains("use_modle"), "{e}");
    }

    /// A rule that sets neither use_backend nor use_model is refused by name.
    #[test]
    fn rule_without_a_target_is_rejected() {
        let e = RoutingTable::parse("rules:\n  - name: noop\n    latency_class: x\n", "r.yaml")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "r.yaml: rule `noop` sets neither use_backend nor use_model"
        );
    }

    /// A missing file is reported with its path.
    #[test]
    fn load_names_a_missing_file() {
        let e = RoutingTable::load(Path::new("/nonexistent/routing.yaml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/routing.yaml"),
            "{e}"
        );
    }

    fn spec(id: &str, task_type: TaskType, constraints: Constraints) -> TaskSpec {
        TaskSpec {
            task_id: TaskId::parse(id).unwrap(),
            task_type,
            inputs: Default::default(),
            dependencies: Vec::new(),
            max_retries: None,
            timeout_sec: None,
            resources: Default::default(),
            constraints,
        }
    }

    /// Inference tasks get the route; their own constraints win field by field; other task
    /// types are untouched.
    #[test]
    fn apply_fills_only_unset_inference_constraints() {
        let own_model = Constraints {
            model: s("gpt-x"),
            ..Default::default()
        };
        let own_both = Constraints {
            backend: s("openai"),
            model: s("gpt-x"),
            ..Default::default()
        };
        let mut specs = vec![
            spec("a", TaskType::LlmInference, Constraints::default()),
            spec("b", TaskType::LlmInference, own_model),
            spec("c", TaskType::LlmInference, own_both.clone()),
            spec("d", TaskType::Embedding, Constraints::default()),
            spec("e", TaskType::Aggregation, Constraints::default()),
        ];

        let route = table().apply(&job(), &mut specs);

        assert_eq!(route.rule, None);
        let c = |i: usize| {
            (
                specs[i].constraints.backend.clone(),
                specs[i].constraints.model.clone(),
            )
        };
        assert_eq!(c(0), (s("ollama"), s("llama3-8b-q4")));
        assert_eq!(c(1), (s("ollama"), s("gpt-x")));
        assert_eq!(specs[2].constraints, own_both);
        assert_eq!(specs[3].constraints, Constraints::default());
        assert_eq!(specs[4].constraints, Constraints::default());
    }
}
