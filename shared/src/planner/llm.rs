//! The LLM planner client: asks an HTTP endpoint for a DAG; the caller falls back on any error.

use std::error::Error as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{NewJob, Priority, TaskSpec};

use super::{PlanError, PlannerConfig, validate_dag};

/// Why the LLM planner produced no usable plan. Never fatal: the planner falls back.
#[derive(Debug, thiserror::Error)]
pub(super) enum LlmPlanError {
    /// No endpoint is configured; templates are the intended mode, not a failure.
    #[error("no LLM planner endpoint is configured")]
    NotConfigured,
    /// The request could not be sent or its body not read (connect, timeout, reset).
    #[error("LLM planner request failed")]
    Transport(#[source] reqwest::Error),
    /// The endpoint answered with a non-2xx status.
    #[error("LLM planner answered HTTP {0}")]
    Status(reqwest::StatusCode),
    /// The body was not `{"tasks": [TaskSpec, ...]}`.
    #[error("LLM planner returned an unreadable body")]
    Body(#[source] serde_json::Error),
    /// The tasks parsed but do not form a valid DAG.
    #[error("LLM planner returned an invalid DAG")]
    InvalidDag(#[source] PlanError),
}

impl LlmPlanError {
    /// The message with its whole cause chain, for one log field (the root cause of a
    /// transport error, e.g. "connection refused", sits several sources deep).
    pub(super) fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            source = cause.source();
        }
        out
    }
}

/// What the endpoint is told about the job: enough to plan, nothing about the tenant.
#[derive(Serialize)]
struct PlanRequest<'a> {
    job_type: &'a str,
    input: &'a Value,
    model: Option<&'a str>,
    priority: Priority,
    latency_class: Option<&'a str>,
    reasoning_required: bool,
    data_classification: Option<&'a str>,
    max_tasks: usize,
}

#[derive(Deserialize)]
struct PlanResponse {
    tasks: Vec<TaskSpec>,
}

/// Asks the configured endpoint to plan `job` and returns its tasks once they form a valid DAG.
///
/// # Errors
/// [`LlmPlanError`] when no endpoint is configured, the call fails or times out, the status is
/// not 2xx, the body is not a task list, or the tasks are not a valid DAG.
#[tracing::instrument(skip_all, fields(job_type = %job.job_type))]
pub(super) async fn plan_with_llm(
    http: &reqwest::Client,
    config: &PlannerConfig,
    job: &NewJob,
) -> Result<Vec<TaskSpec>, LlmPlanError> {
    let endpoint = config
        .llm_endpoint
        .as_deref()
        .ok_or(LlmPlanError::NotConfigured)?;
    let body = PlanRequest {
        job_type: &job.job_type,
        input: &job.input,
        model: job.model.as_deref(),
        priority: job.priority,
        latency_class: job.latency_class.as_deref(),
        reasoning_required: job.reasoning_required,
        data_classification: job.data_classification.as_deref(),
        max_tasks: config.max_tasks,
    };
    // The timeout is per request, not per client, because the client may be shared.
    let mut request = http.post(endpoint).timeout(config.llm_timeout).json(&body);
    if let Some(key) = &config.llm_api_key {
        // `bearer_auth` marks the header sensitive, so reqwest's own logging hides it too.
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(LlmPlanError::Transport)?;
    let status = response.status();
    if !status.is_success() {
        return Err(LlmPlanError::Status(status));
    }
    let bytes = response.bytes().await.map_err(LlmPlanError::Transport)?;
    let plan: PlanResponse = serde_json::from_slice(&bytes).map_err(LlmPlanError::Body)?;
    validate_dag(&plan.tasks, config.max_tasks).map_err(LlmPlanError::InvalidDag)?;
    Ok(plan.tasks)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde_json::json;

    use super::*;
    use crate::domain::{PlannerMode, TaskType};
    use crate::planner::{Planner, template};

    const KEY: &str = "sk-test-secret";

    /// How the double answers.
    #[derive(Clone)]
    enum Reply {
        Json(StatusCode, Value),
        Raw(StatusCode, &'static str),
        Hang,
    }

    /// What the double saw: the Authorization header and the JSON body of each request.
    #[derive(Default)]
    struct Seen {
        requests: Mutex<Vec<(Option<String>, Value)>>,
    }

    struct Double {
        url: String,
        seen: Arc<Seen>,
    }

    async fn answer(
        State((reply, seen)): State<(Reply, Arc<Seen>)>,
        headers: HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> Response {
        let auth = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned());
        seen.requests.lock().unwrap().push((auth, body));
        match reply {
            Reply::Json(status, body) => (status, axum::Json(body)).into_response(),
            Reply::Raw(status, body) => (status, body).into_response(),
            Reply::Hang => std::future::pending().await,
        }
    }

    /// Starts a planner endpoint double on an ephemeral port; it lives as long as the test's
    /// runtime. The listener is bound before returning, so no readiness wait is needed.
    async fn spawn_double(reply: Reply) -> Double {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route("/plan", post(answer))
            .with_state((reply, seen.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Double {
            url: format!("http://{addr}/plan"),
            seen,
        }
    }

    /// An address nothing listens on: bound, then released.
    async fn closed_port() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    fn config(endpoint: Option<String>) -> PlannerConfig {
        PlannerConfig {
            llm_endpoint: endpoint,
            llm_api_key: Some(KEY.to_owned()),
            llm_timeout: Duration::from_secs(5),
            max_tasks: 50,
        }
    }

    fn llm_job() -> NewJob {
        NewJob {
            job_type: "chat".to_owned(),
            input: json!("plan me"),
            model: Some("llama3".to_owned()),
            latency_class: Some("fast".to_owned()),
            reasoning_required: true,
            planner_mode: PlannerMode::LlmPlanner,
            ..Default::default()
        }
    }

    fn two_step_plan() -> Value {
        json!({"tasks": [
            {"task_id": "research", "type": "retrieval", "inputs": {"query": "plan me"}},
            {"id": "write", "type": "llm_inference", "dependencies": ["research"], "max_retries": 1},
        ]})
    }

    async fn plan(config: PlannerConfig) -> Vec<TaskSpec> {
        Planner::new(config).plan(&llm_job()).await.unwrap()
    }

    /// A valid plan from the endpoint is used as is; the job and bearer key reach it.
    #[tokio::test]
    async fn llm_plan_is_used_and_request_carries_job_and_key() {
        let double = spawn_double(Reply::Json(StatusCode::OK, two_step_plan())).await;

        let specs = plan(config(Some(double.url.clone()))).await;

        let ids: Vec<&str> = specs.iter().map(|s| s.task_id.as_str()).collect();
        assert_eq!(ids, ["research", "write"]);
        assert_eq!(specs[0].task_type, TaskType::Retrieval);
        assert_eq!(specs[1].max_retries, Some(1));
        let requests = double.seen.requests.lock().unwrap();
        let [(auth, body)] = requests.as_slice() else {
            panic!("expected one request, saw {}", requests.len())
        };
        assert_eq!(auth.as_deref(), Some("Bearer sk-test-secret"));
        assert_eq!(
            body,
            &json!({
                "job_type": "chat", "input": "plan me", "model": "llama3", "priority": "standard",
                "latency_class": "fast", "reasoning_required": true, "data_classification": null,
                "max_tasks": 50,
            })
        );
    }

    /// Without a key no Authorization header is sent.
    #[tokio::test]
    async fn no_key_sends_no_authorization_header() {
        let double = spawn_double(Reply::Json(StatusCode::OK, two_step_plan())).await;
        let config = PlannerConfig {
            llm_api_key: None,
            ..config(Some(double.url.clone()))
        };

        plan(config).await;

        assert_eq!(double.seen.requests.lock().unwrap()[0].0, None);
    }

    /// An HTTP 500 falls back to the template.
    #[tokio::test]
    async fn server_error_falls_back_to_template() {
        let double = spawn_double(Reply::Raw(StatusCode::INTERNAL_SERVER_ERROR, "boom")).await;
        let config = config(Some(double.url.clone()));

        let err = plan_with_llm(&reqwest::Client::new(), &config, &llm_job())
            .await
            .unwrap_err();
        let specs = plan(config).await;

        assert!(
            matches!(err, LlmPlanError::Status(StatusCode::INTERNAL_SERVER_ERROR)),
            "{err:?}"
        );
        assert_eq!(specs, template(&llm_job()));
        assert_eq!(
            double.seen.requests.lock().unwrap()[1].0.as_deref(),
            Some("Bearer sk-test-secret")
        );
    }

    /// A 2xx body that is not a task list falls back to the template.
    #[tokio::test]
    async fn unreadable_body_falls_back_to_template() {
        let double = spawn_double(Reply::Raw(StatusCode::OK, "Sure! Here is your plan: ...")).await;
        let config = config(Some(double.url.clone()));

        let err = plan_with_llm(&reqwest::Client::new(), &config, &llm_job())
            .await
            .unwrap_err();
        let specs = plan(config).await;

        assert!(matches!(err, LlmPlanError::Body(_)), "{err:?}");
        assert_eq!(specs, template(&llm_job()));
    }

    /// A well-formed but cyclic plan falls back to the template, and the cause is reported.
    #[tokio::test]
    async fn invalid_dag_falls_back_to_template() {
        let cyclic = json!({"tasks": [
            {"task_id": "a", "type": "llm_inference", "dependencies": ["b"]},
            {"task_id": "b", "type": "llm_inference", "dependencies": ["a"]},
        ]});
        let double = spawn_double(Reply::Json(StatusCode::OK, cyclic)).await;
        let config = config(Some(double.url.clone()));

        let err = plan_with_llm(&reqwest::Client::new(), &config, &llm_job())
            .await
            .unwrap_err();
        let specs = plan(config).await;

        assert_eq!(
            err.chain(),
            "LLM planner returned an invalid DAG: dependency cycle: a -> b -> a"
        );
        assert_eq!(specs, template(&llm_job()));
    }

    /// An endpoint nobody listens on falls back to the template.
    #[tokio::test]
    async fn unreachable_endpoint_falls_back_to_template() {
        let config = config(Some(format!("http://{}/plan", closed_port().await)));

        let err = plan_with_llm(&reqwest::Client::new(), &config, &llm_job())
            .await
            .unwrap_err();
        let specs = plan(config).await;

        assert!(
            matches!(&err, LlmPlanError::Transport(e) if e.is_connect()),
            "{err:?}"
        );
        assert!(!err.chain().contains(KEY));
        assert_eq!(specs, template(&llm_job()));
    }

    /// An endpoint that never answers is abandoned after the configured timeout.
    #[tokio::test]
    async fn hanging_endpoint_times_out_and_falls_back() {
        let double = spawn_double(Reply::Hang).await;
        let config = PlannerConfig {
            llm_timeout: Duration::from_millis(100),
            ..config(Some(double.url.clone()))
        };

        let err = plan_with_llm(&reqwest::Client::new(), &config, &llm_job())
            .await
            .unwrap_err();
        let specs = plan(config).await;

        assert!(
            matches!(&err, LlmPlanError::Transport(e) if e.is_timeout()),
            "{err:?}"
        );
        assert_eq!(specs, template(&llm_job()));
    }

    /// With no endpoint the template is used without any request.
    #[tokio::test]
    async fn no_endpoint_uses_template() {
        let err = plan_with_llm(&reqwest::Client::new(), &config(None), &llm_job())
            .await
            .unwrap_err();
        let specs = plan(config(None)).await;

        assert!(matches!(err, LlmPlanError::NotConfigured));
        assert_eq!(specs, template(&llm_job()));
    }
}
