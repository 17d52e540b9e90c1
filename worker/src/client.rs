//! The worker's only connection: HTTP(S) to the gateway's worker endpoints.

use std::time::Duration;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use splai_shared::artifacts::UploadUrl;
use splai_shared::domain::{
    Artifact, Heartbeat, JobId, LeaseId, Status, TaskId, TaskRef, WorkerId, WorkerRegistration,
};
use splai_shared::engine::Assignment;

use crate::config::Secret;

/// Why a gateway call failed, classified for the caller's retry decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The gateway could not be reached or timed out: retry with backoff.
    #[error("gateway unreachable: {0}")]
    Unreachable(String),
    /// The gateway failed (5xx) or is overloaded (429): retry with backoff.
    #[error("gateway failed: {status}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The gateway's message.
        message: String,
    },
    /// The gateway does not know this worker (its state was reset): register again.
    #[error("worker is not registered: {0}")]
    NotRegistered(String),
    /// The gateway refused the request (400, 401, 403, ...): retrying the same request
    /// cannot help.
    #[error("gateway refused the request: {status}: {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The gateway's message.
        message: String,
    },
}

impl GatewayError {
    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Server { .. })
    }
}

/// A lease the worker holds, as heartbeats and hand-backs name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeldLease {
    /// The job.
    pub job_id: JobId,
    /// The task.
    pub task_id: TaskId,
    /// The lease.
    pub lease_id: LeaseId,
}

/// What the gateway said to a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
    /// Largest output a report may carry inline; `None` from a gateway that does not say.
    pub max_inline_output: Option<usize>,
}

/// What the gateway said to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct HeartbeatReply {
    /// Leases extended.
    pub renewed: Vec<TaskRef>,
    /// Tasks to stop: their job was canceled or failed.
    pub cancel: Vec<TaskRef>,
    /// Leases no longer held: stop, and do not report.
    pub lost: Vec<TaskRef>,
}

/// One attempt's result, as the report endpoint takes it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The job.
    pub job_id: JobId,
    /// The task.
    pub task_id: TaskId,
    /// The lease the attempt ran under.
    pub lease_id: LeaseId,
    /// `<lease>:<status>`, so a resent report is recognised as the same report.
    pub idempotency_key: String,
    /// `Completed` or `Failed`.
    pub status: Status,
    /// Where the output is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_artifact_uri: Option<String>,
    /// What the output is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_artifact: Option<Artifact>,
    /// The output itself (already encoded), when it is small enough to travel inline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Box<RawValue>>,
    /// Why the attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl Report {
    /// A success with its output.
    pub fn completed(lease: &HeldLease, artifact: Artifact) -> Self {
        Self {
            job_id: lease.job_id.clone(),
            task_id: lease.task_id.clone(),
            lease_id: lease.lease_id.clone(),
            idempotency_key: format!("{}:Completed", lease.lease_id),
            status: Status::Completed,
            output_artifact_uri: Some(artifact.url.clone()),
            output_artifact: Some(artifact),
            output: None,
            error: None,
            retryable: false,
        }
    }

    /// A success whose output travels inline; `artifact` describes it (type `inline`).
    pub fn completed_inline(lease: &HeldLease, artifact: Artifact, output: Box<RawValue>) -> Self {
        Self {
            output: Some(output),
            ..Self::completed(lease, artifact)
        }
    }

    /// Roughly how many bytes the report adds to a request.
    pub fn encoded_len(&self) -> usize {
        400 + self.output.as_ref().map_or(0, |o| o.get().len())
            + self.error.as_ref().map_or(0, String::len)
    }

    /// A failure.
    pub fn failed(lease: &HeldLease, error: String, retryable: bool) -> Self {
        Self {
            job_id: lease.job_id.clone(),
            task_id: lease.task_id.clone(),
            lease_id: lease.lease_id.clone(),
            idempotency_key: format!("{}:Failed", lease.lease_id),
            status: Status::Failed,
            output_artifact_uri: None,
            output_artifact: None,
            output: None,
            error: Some(error),
            retryable,
        }
    }
}

/// The gateway's worker API.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
    worker_id: WorkerId,
}

/// Time a request may take beyond any long-poll it asks for.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Time an output upload to a presigned URL may take (outputs can be large).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

impl GatewayClient {
    /// A client for the gateway at `base` acting as `worker_id`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (TLS set-up).
    pub fn new(base: &str, token: Option<Secret>, worker_id: WorkerId) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // Redirects are followed by hand (`task_output`), so the token never goes to
            // another host: reqwest drops `Authorization` there, but not `X-SPLAI-Token`.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            worker_id,
        })
    }

    /// The worker this client speaks for.
    pub fn worker_id(&self) -> &WorkerId {
        &self.worker_id
    }

    /// Registers the worker; returns what the gateway asks of it.
    ///
    /// # Errors
    /// Classified gateway failures.
    pub async fn register(&self, reg: &WorkerRegistration) -> Result<Registered, GatewayError> {
        let mut body = serde_json::to_value(reg).unwrap_or_else(|_| json!({}));
        body["worker_id"] = json!(self.worker_id);
        let reply: Value = self
            .send(self.post("/v1/workers/register").json(&body))
            .await?;
        let secs = reply["heartbeat_interval_seconds"].as_u64().unwrap_or(5);
        Ok(Registered {
            heartbeat_interval: Duration::from_secs(secs.max(1)),
            max_inline_output: reply["max_inline_output_bytes"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok()),
        })
    }

    /// A completed task's output, read through the gateway (for a dependency whose output
    /// is inline, or lives where this worker cannot read it).
    ///
    /// # Errors
    /// Classified gateway failures; `Rejected` with status 404 when there is no output.
    pub async fn task_output(&self, job: &str, task: &str) -> Result<bytes::Bytes, GatewayError> {
        let url = self.url_of(&["v1", "jobs", job, "tasks", task, "output"])?;
        let req = self.authorized(self.http.get(url)).timeout(REQUEST_TIMEOUT);
        let mut resp = req.send().await.map_err(|e| unreachable(&e))?;
        // A store that hands out URLs (S3) answers with a redirect to a presigned GET, which
        // needs no token and must not see it.
        if resp.status().is_redirection()
            && let Some(location) = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
        {
            let location = location.to_owned();
            resp = self
                .http
                .get(location)
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(|e| unreachable(&e))?;
        }
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| unreachable(&e))?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(classify(status.as_u16(), &bytes))
    }

    /// Puts an output to an upload URL the gateway handed out with the assignment. The URL
    /// carries its own authorisation, so no token is sent (the storage service is not the
    /// gateway).
    ///
    /// # Errors
    /// Classified failures of the storage service.
    pub async fn put_upload(
        &self,
        upload: &UploadUrl,
        body: bytes::Bytes,
    ) -> Result<(), GatewayError> {
        let mut req = self
            .http
            .put(&upload.url)
            .timeout(UPLOAD_TIMEOUT)
            .body(body);
        for (name, value) in &upload.headers {
            req = req.header(name, value);
        }
        let resp = req.send().await.map_err(|e| unreachable(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        Err(classify(status.as_u16(), &bytes))
    }

    /// Sends pieces of a running task's output (model tokens) as the holder of `lease`,
    /// numbered from `first_seq`. `false` when the gateway says the lease is no longer the
    /// task's current one (409): nothing more should be sent for it.
    ///
    /// # Errors
    /// Classified gateway failures.
    pub async fn send_chunks(
        &self,
        job: &str,
        task: &str,
        lease: &str,
        first_seq: u32,
        chunks: &[String],
    ) -> Result<bool, GatewayError> {
        let url = self.task_url(job, task, "chunks")?;
        let body = json!({ "lease_id": lease, "first_seq": first_seq, "chunks": chunks });
        let req = self
            .authorized(self.http.post(url))
            .timeout(REQUEST_TIMEOUT)
            .json(&body);
        match self.send::<Value>(req).await {
            Ok(_) => Ok(true),
            Err(GatewayError::Rejected { status: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `<base>/v1/tasks/<job>/<task>/<tail>`, each id one escaped path segment.
    fn task_url(&self, job: &str, task: &str, tail: &str) -> Result<reqwest::Url, GatewayError> {
        self.url_of(&["v1", "tasks", job, task, tail])
    }

    /// `<base>/<segments>`, each segment escaped: ids may hold `/` or `:`.
    fn url_of(&self, segments: &[&str]) -> Result<reqwest::Url, GatewayError> {
        let mut url = reqwest::Url::parse(&self.base).map_err(|e| GatewayError::Rejected {
            status: 0,
            message: format!("invalid gateway URL: {e}"),
        })?;
        url.path_segments_mut()
            .map_err(|()| GatewayError::Rejected {
                status: 0,
                message: "the gateway URL cannot take a path".to_owned(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends a heartbeat with the leases held; the reply says what to stop.
    ///
    /// # Errors
    /// Classified gateway failures.
    pub async fn heartbeat(
        &self,
        load: &Heartbeat,
        leases: &[HeldLease],
    ) -> Result<HeartbeatReply, GatewayError> {
        let mut body = serde_json::to_value(load).unwrap_or_else(|_| json!({}));
        body["leases"] = json!(leases);
        let path = format!("/v1/workers/{}/heartbeat", self.worker_id);
        self.send(self.post(&path).json(&body)).await
    }

    /// Claims up to `max` tasks, waiting up to `wait` for work to appear.
    ///
    /// # Errors
    /// Classified gateway failures.
    pub async fn claim(&self, max: usize, wait: Duration) -> Result<Vec<Assignment>, GatewayError> {
        #[derive(Deserialize)]
        struct Claimed {
            assignments: Vec<Assignment>,
        }
        let path = format!(
            "/v1/workers/{}/assignments?max_tasks={max}&wait_seconds={}",
            self.worker_id,
            wait.as_secs()
        );
        let req = self
            .authorized(self.http.get(self.url(&path)))
            .timeout(wait + REQUEST_TIMEOUT);
        let claimed: Claimed = self.send(req).await?;
        Ok(claimed.assignments)
    }

    /// Reports attempts' results in one request.
    ///
    /// # Errors
    /// Classified gateway failures; then none of the reports may be assumed applied.
    pub async fn report(&self, reports: &[Report]) -> Result<(), GatewayError> {
        /// The request body, serialised straight from the reports: going through a
        /// `serde_json::Value` re-parsed every inline output into a tree, only to write it
        /// out again.
        #[derive(Serialize)]
        struct Body<'a> {
            reports: &'a [Report],
        }
        let _: IgnoredAny = self
            .send(self.post("/v1/tasks/report").json(&Body { reports }))
            .await?;
        Ok(())
    }

    /// Hands leases back unfinished, so their tasks are requeued at once.
    ///
    /// # Errors
    /// Classified gateway failures.
    pub async fn release(&self, leases: &[HeldLease]) -> Result<(), GatewayError> {
        let path = format!("/v1/workers/{}/release", self.worker_id);
        #[derive(Serialize)]
        struct Body<'a> {
            leases: &'a [HeldLease],
        }
        let _: IgnoredAny = self.send(self.post(&path).json(&Body { leases })).await?;
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.http.post(self.url(path)))
            .timeout(REQUEST_TIMEOUT)
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req
                .header("X-SPLAI-Token", t.expose())
                .bearer_auth(t.expose()),
            None => req,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, GatewayError> {
        let resp = req.send().await.map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| unreachable(&e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| GatewayError::Server {
                status: status.as_u16(),
                message: format!("unreadable answer: {e}"),
            });
        }
        Err(classify(status.as_u16(), &bytes))
    }
}

/// A gateway error answer, classified by status and message.
fn classify(code: u16, body: &[u8]) -> GatewayError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    match code {
        404 if message.contains("not registered") => GatewayError::NotRegistered(message),
        408 | 429 | 500..=599 => GatewayError::Server {
            status: code,
            message,
        },
        _ => GatewayError::Rejected {
            status: code,
            message,
        },
    }
}

/// A transport error with its causes (reqwest's own message rarely says why).
fn unreachable(e: &reqwest::Error) -> GatewayError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    GatewayError::Unreachable(msg)
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::HeaderMap;
    use axum::response::Redirect;
    use axum::routing::get;

    use super::*;

    async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// A task output the gateway redirects to (S3's presigned GET) is fetched without the
    /// worker's token: the storage service must never see it.
    #[tokio::test]
    async fn task_output_follows_a_redirect_without_the_token() {
        let storage = serve(Router::new().route(
            "/bucket/out.json",
            get(|h: HeaderMap| async move {
                let leaked = h.contains_key("x-splai-token") || h.contains_key("authorization");
                if leaked {
                    "token leaked"
                } else {
                    "{\"ok\":true}"
                }
            }),
        ))
        .await;
        let target = format!("{storage}/bucket/out.json");
        let gateway = serve(Router::new().route(
            "/v1/jobs/j/tasks/t/output",
            get(move || async move { Redirect::temporary(&target) }),
        ))
        .await;
        let client = GatewayClient::new(
            &gateway,
            Some(Secret::new("worker-token")),
            WorkerId::parse("w1").unwrap(),
        )
        .unwrap();
        let body = client.task_output("j", "t").await.unwrap();
        assert_eq!(&body[..], b"{\"ok\":true}");
    }

    /// A report batch goes out as `{"reports": [...]}` with each inline output exactly as the
    /// executor encoded it (its key order kept: nothing re-parses it on the way), and the
    /// gateway's answer is accepted whatever its fields.
    #[tokio::test]
    async fn reports_carry_inline_outputs_verbatim() {
        use axum::body::Bytes;
        use axum::routing::post;
        let (sent, mut received) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let gateway = serve(Router::new().route(
            "/v1/tasks/report",
            post(move |body: Bytes| async move {
                sent.send(body).unwrap();
                "{\"results\":[{\"outcome\":\"completed\"}]}"
            }),
        ))
        .await;
        let client = GatewayClient::new(&gateway, None, WorkerId::parse("w1").unwrap()).unwrap();
        let lease = HeldLease {
            job_id: JobId::parse("job-1").unwrap(),
            task_id: TaskId::parse("t1").unwrap(),
            lease_id: LeaseId::parse("lease-1").unwrap(),
        };
        let output = RawValue::from_string(r#"{"zebra":1,"apple":[2,3]}"#.to_owned()).unwrap();
        let artifact = Artifact {
            kind: "inline".to_owned(),
            url: "artifact://job-1/t1/output.json".to_owned(),
            size_bytes: 25,
            mime_type: "application/json".to_owned(),
            expires_at: None,
        };
        let reports = [
            Report::completed_inline(&lease, artifact, output),
            Report::failed(&lease, "boom".to_owned(), true),
        ];
        client.report(&reports).await.unwrap();

        let body = received.recv().await.unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.contains(r#""output":{"zebra":1,"apple":[2,3]}"#),
            "{text}"
        );
        let sent: Value = serde_json::from_slice(&body).unwrap();
        let sent = sent["reports"].as_array().unwrap();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0]["idempotency_key"], "lease-1:Completed");
        assert_eq!(sent[0]["output_artifact"]["type"], "inline");
        assert_eq!(sent[1]["status"], "Failed");
        assert_eq!(sent[1]["error"], "boom");
        assert!(sent[1].get("output").is_none());
    }
}
