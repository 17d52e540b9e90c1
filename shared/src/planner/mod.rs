//! The planner: turns a submission into a validated DAG of task specs.
//!
//! Layout:
//! - `dag`: DAG validation (ids, dependencies, cycles) and sink discovery.
//! - `template`: the deterministic decomposition by job type and the aggregation tail.
//! - `llm`: the optional HTTP planner endpoint; any failure falls back to the template.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::{NewJob, PlannerMode, TaskId, TaskSpec};
use crate::routing::RoutingTable;

mod dag;
mod llm;
mod template;

pub use dag::{sinks, validate_dag};
pub use template::{template, with_aggregation_tail};

/// Planner settings, loaded once by the binary and passed down.
#[derive(Clone)]
pub struct PlannerConfig {
    /// The LLM planner endpoint (`SPLAI_LLM_PLANNER_ENDPOINT`); `None` means templates only.
    pub llm_endpoint: Option<String>,
    /// Bearer token for the endpoint (`SPLAI_LLM_PLANNER_API_KEY`); never printed.
    pub llm_api_key: Option<String>,
    /// How long one call to the endpoint may take before the planner falls back.
    pub llm_timeout: Duration,
    /// The most tasks one job may have, whoever planned it.
    pub max_tasks: usize,
}

// Hand-written so that `{:?}` on a config (as startup logs tend to do) cannot leak the key.
impl fmt::Debug for PlannerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlannerConfig")
            .field("llm_endpoint", &self.llm_endpoint)
            .field(
                "llm_api_key",
                &self.llm_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("llm_timeout", &self.llm_timeout)
            .field("max_tasks", &self.max_tasks)
            .finish()
    }
}

/// Why a job's task list is not an acceptable DAG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The job has no tasks.
    #[error("a job needs at least one task")]
    Empty,
    /// The job has more tasks than the configured limit.
    #[error("job has {count} tasks; the limit is {max}")]
    TooManyTasks {
        /// How many tasks the job has.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// Two tasks share an id.
    #[error("duplicate task id `{0}`")]
    DuplicateTaskId(TaskId),
    /// A task depends on an id that no task in the job has.
    #[error("task `{task}` depends on unknown task `{dependency}`")]
    UnknownDependency {
        /// The depending task.
        task: TaskId,
        /// The id that matches no task.
        dependency: TaskId,
    },
    /// A task lists itself as a dependency.
    #[error("task `{0}` depends on itself")]
    SelfDependency(TaskId),
    /// The dependencies form a cycle. The path lists each task once, each depending on the
    /// next, and the last depending on the first.
    #[error("dependency cycle: {}", cycle_path(.0))]
    Cycle(Vec<TaskId>),
    /// A task lists the same dependency twice.
    #[error("task `{task}` lists dependency `{dependency}` more than once")]
    DuplicateDependency {
        /// The depending task.
        task: TaskId,
        /// The repeated dependency.
        dependency: TaskId,
    },
}

/// Renders `[a, b, c]` as `a -> b -> c -> a`, closing the loop so the message reads as a cycle.
fn cycle_path(path: &[TaskId]) -> String {
    let mut ids: Vec<&str> = path.iter().map(TaskId::as_str).collect();
    if let Some(first) = ids.first().copied() {
        ids.push(first);
    }
    ids.join(" -> ")
}

/// Turns submissions into validated task DAGs.
#[derive(Debug, Clone)]
pub struct Planner {
    config: PlannerConfig,
    http: reqwest::Client,
    routing: Option<Arc<RoutingTable>>,
}

impl Planner {
    /// A planner with its own HTTP client.
    ///
    /// # Panics
    /// When the TLS backend cannot be initialised (as [`reqwest::Client::new`] does); this
    /// happens at startup, not per request.
    pub fn new(config: PlannerConfig) -> Planner {
        Planner::with_client(config, reqwest::Client::new())
    }

    /// A planner sharing an HTTP client built elsewhere (clients are built once per process).
    pub fn with_client(config: PlannerConfig, http: reqwest::Client) -> Planner {
        Planner {
            config,
            http,
            routing: None,
        }
    }

    /// The same planner, recording `routing`'s backend and model on every inference task it
    /// plans (see [`RoutingTable::apply`]). Without a table, tasks keep only what the job or
    /// the client named.
    pub fn with_routing(mut self, routing: Option<Arc<RoutingTable>>) -> Planner {
        self.routing = routing;
        self
    }

    /// The routing table, if one is configured.
    pub fn routing(&self) -> Option<&RoutingTable> {
        self.routing.as_deref()
    }

    /// The settings this planner runs with.
    pub fn config(&self) -> &PlannerConfig {
        &self.config
    }

    /// Plans a job: a client-supplied DAG is validated and returned unchanged; otherwise the
    /// job's planner mode decides. The LLM planner never fails a job: any error falls back to
    /// the template. With a routing table, the job's route is then recorded on every inference
    /// task that does not name its own backend or model, client DAGs included.
    ///
    /// # Errors
    /// When the resulting DAG is invalid (see [`PlanError`]), e.g. a client DAG with a cycle or
    /// a template that exceeds `max_tasks`.
    pub async fn plan(&self, job: &NewJob) -> Result<Vec<TaskSpec>, PlanError> {
        let mut specs = if let Some(tasks) = &job.tasks {
            validate_dag(tasks, self.config.max_tasks)?;
            tasks.clone()
        } else {
            let specs = match job.planner_mode {
                PlannerMode::Template => template(job),
                PlannerMode::Hybrid => with_aggregation_tail(template(job)),
                PlannerMode::LlmPlanner => self.plan_with_llm_or_template(job).await,
            };
            validate_dag(&specs, self.config.max_tasks)?;
            specs
        };
        if let Some(routing) = &self.routing {
            routing.apply(job, &mut specs);
        }
        Ok(specs)
    }

    async fn plan_with_llm_or_template(&self, job: &NewJob) -> Vec<TaskSpec> {
        match llm::plan_with_llm(&self.http, &self.config, job).await {
            Ok(specs) => specs,
            Err(llm::LlmPlanError::NotConfigured) => {
                tracing::info!(
                    job_type = %job.job_type,
                    "no LLM planner endpoint configured; using the template"
                );
                template(job)
            }
            // The error never carries the API key: it goes out only in a header, and neither
            // reqwest's errors nor ours echo request headers.
            Err(error) => {
                tracing::warn!(
                    job_type = %job.job_type,
                    error = %error.chain(),
                    "LLM planner failed; falling back to the template"
                );
                template(job)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::TaskType;

    fn config(max_tasks: usize) -> PlannerConfig {
        PlannerConfig {
            llm_endpoint: None,
            llm_api_key: Some("sk-do-not-print".to_owned()),
            llm_timeout: Duration::from_secs(1),
            max_tasks,
        }
    }

    fn job(job_type: &str, input: serde_json::Value, planner_mode: PlannerMode) -> NewJob {
        NewJob {
            job_type: job_type.to_owned(),
            input,
            planner_mode,
            ..Default::default()
        }
    }

    fn ids(specs: &[TaskSpec]) -> Vec<&str> {
        specs.iter().map(|s| s.task_id.as_str()).collect()
    }

    /// Debug output shows that a key is set but never the key itself.
    #[test]
    fn config_debug_redacts_api_key() {
        let shown = format!("{:?}", config(10));

        assert!(!shown.contains("sk-do-not-print"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(
            format!(
                "{:?}",
                PlannerConfig {
                    llm_api_key: None,
                    ..config(10)
                }
            )
            .contains("llm_api_key: None")
        );
    }

    /// A client-supplied DAG is returned unchanged, whatever the planner mode says.
    #[tokio::test]
    async fn client_tasks_bypass_the_planner() {
        let mut submitted = template(&job("rag", json!("q"), PlannerMode::Template));
        submitted[1].max_retries = Some(7);
        let new_job = NewJob {
            tasks: Some(submitted.clone()),
            // An endpoint that would fail the test if contacted; bypass means it never is.
            ..job("batch_analysis", json!([1, 2, 3]), PlannerMode::LlmPlanner)
        };
        let planner = Planner::new(PlannerConfig {
            llm_endpoint: Some("http://127.0.0.1:1/x".into()),
            ..config(10)
        });

        assert_eq!(planner.plan(&new_job).await, Ok(submitted));
    }

    /// A client-supplied DAG is still validated.
    #[tokio::test]
    async fn invalid_client_tasks_are_rejected() {
        let mut submitted = template(&job("rag", json!("q"), PlannerMode::Template));
        let generate = submitted[1].task_id.clone();
        submitted[0].dependencies.push(generate);
        let new_job = NewJob {
            tasks: Some(submitted),
            ..job("rag", json!("q"), PlannerMode::Template)
        };

        let err = Planner::new(config(10)).plan(&new_job).await.unwrap_err();

        assert_eq!(
            err.to_string(),
            "dependency cycle: retrieve -> generate -> retrieve"
        );
    }

    /// Template mode returns the job type's template.
    #[tokio::test]
    async fn template_mode_plans_by_job_type() {
        let new_job = job("batch_analysis", json!(["a", "b"]), PlannerMode::Template);

        let specs = Planner::new(config(10)).plan(&new_job).await.unwrap();

        assert_eq!(ids(&specs), ["analyze-0", "analyze-1", "aggregate"]);
    }

    /// Hybrid mode ends the template in an aggregation task.
    #[tokio::test]
    async fn hybrid_mode_adds_aggregation_tail() {
        let new_job = job("chat", json!("hi"), PlannerMode::Hybrid);

        let specs = Planner::new(config(10)).plan(&new_job).await.unwrap();

        assert_eq!(ids(&specs), ["generate", "aggregate"]);
        assert_eq!(specs[1].task_type, TaskType::Aggregation);
    }

    /// With a routing table, planned inference tasks carry the route; the job's explicit
    /// model still wins, and non-inference tasks are untouched.
    #[tokio::test]
    async fn routing_is_recorded_on_planned_inference_tasks() {
        let table = crate::routing::RoutingTable::parse(
            "default_backend: ollama\ndefault_model: small\nrules:\n  - latency_class: batch\n    use_backend: vllm\n",
            "r.yaml",
        )
        .unwrap();
        let planner = Planner::new(config(10)).with_routing(Some(Arc::new(table)));
        let new_job = NewJob {
            latency_class: Some("batch".into()),
            model: Some("big".into()),
            ..job("batch_analysis", json!(["a"]), PlannerMode::Template)
        };

        let specs = planner.plan(&new_job).await.unwrap();

        assert_eq!(specs[0].constraints.backend.as_deref(), Some("vllm"));
        assert_eq!(specs[0].constraints.model.as_deref(), Some("big"));
        assert_eq!(specs[1].constraints, Default::default());
        let plain = Planner::new(config(10)).plan(&new_job).await.unwrap();
        assert_eq!(plain[0].constraints.backend, None);
    }

    /// A template larger than the limit is refused rather than truncated.
    #[tokio::test]
    async fn oversized_template_is_rejected() {
        let new_job = job("batch_analysis", json!([1, 2, 3]), PlannerMode::Template);

        let err = Planner::new(config(3)).plan(&new_job).await.unwrap_err();

        assert_eq!(err, PlanError::TooManyTasks { count: 4, max: 3 });
    }
}
