//! A model-server double: enough of Ollama's, OpenAI's and Hugging Face's HTTP APIs to test
//! the worker against, answering deterministically, with scripted failures and delays and a
//! record of what was asked.
//!
//! It runs on `127.0.0.1:0` inside the calling test's tokio runtime and serves any number of
//! concurrent requests (end-to-end tests point real worker processes at it).
//!
//! Answers: completions are `double: <prompt>` (streamed word by word when the request asks
//! for `stream: true`, paced by [`ModelServer::set_stream_pace`]); vectors have [`DIMENSION`] values derived
//! from the text ([`vector_for`]); `/v1/retrieve` (a remote retrieval service) returns the
//! first `top_k` documents it was given; the Hugging Face endpoints serve [`HF_FILES`] for any
//! `org/name`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

mod hugging_face;
mod ollama;
mod openai;

pub use hugging_face::{HF_FILES, hf_file};

/// Size of every embedding vector the double returns.
pub const DIMENSION: usize = 8;

/// Models `/api/tags` and `/v1/models` list.
pub const MODELS: [&str; 2] = ["llama3-8b-q4", "nomic-embed-text"];

/// Largest request body recorded.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// A running double. Stops when dropped.
pub struct ModelServer {
    url: String,
    state: Arc<Shared>,
    server: JoinHandle<()>,
}

/// A scripted failure answered instead of the real response.
#[derive(Clone)]
struct Failure {
    status: StatusCode,
    body: String,
}

#[derive(Default)]
struct Script {
    failures: HashMap<String, VecDeque<Failure>>,
    delay: Option<Duration>,
    stream_pace: Duration,
    requests: HashMap<String, usize>,
    bodies: HashMap<String, Value>,
    authorization: HashMap<String, String>,
}

#[derive(Default)]
struct Shared {
    script: Mutex<Script>,
    dropped: AtomicUsize,
}

impl Shared {
    fn script(&self) -> MutexGuard<'_, Script> {
        // A test that panicked while holding the lock leaves usable data behind.
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ModelServer {
    /// Starts the double on an ephemeral port in the current tokio runtime.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start() -> ModelServer {
        let state = Arc::new(Shared::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the model-server double");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let app = router(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ModelServer {
            url: format!("http://{addr}"),
            state,
            server,
        }
    }

    /// The base URL, `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Answers the next `times` requests to `path` with `status` and `body` (sent as JSON
    /// when it parses as JSON). Queued failures are used in order.
    pub fn fail_next(&self, path: &str, status: u16, body: &str, times: usize) {
        let failure = Failure {
            status: StatusCode::from_u16(status).expect("a valid HTTP status"),
            body: body.to_owned(),
        };
        let mut script = self.state.script();
        let queue = script.failures.entry(path.to_owned()).or_default();
        queue.extend(std::iter::repeat_n(failure, times));
    }

    /// Makes every request wait `delay` before it is answered (`None`: answer at once).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.state.script().delay = delay;
    }

    /// Makes streamed answers (`stream: true`) pause `pace` before each piece, so that a
    /// client sees them arrive one by one (zero, the default: all at once).
    pub fn set_stream_pace(&self, pace: Duration) {
        self.state.script().stream_pace = pace;
    }

    /// Requests received for `path` (counted on arrival, failures and drops included).
    pub fn requests(&self, path: &str) -> usize {
        self.state.script().requests.get(path).copied().unwrap_or(0)
    }

    /// Requests received for any path.
    pub fn total_requests(&self) -> usize {
        self.state.script().requests.values().sum()
    }

    /// The JSON body of the last request to `path` (`null` when it was not JSON).
    pub fn last_body(&self, path: &str) -> Option<Value> {
        self.state.script().bodies.get(path).cloned()
    }

    /// The `Authorization` header of the last request to `path`.
    pub fn last_authorization(&self, path: &str) -> Option<String> {
        self.state.script().authorization.get(path).cloned()
    }

    /// Requests the client abandoned before they were answered (the connection closed while
    /// the double was still working on them).
    pub fn dropped(&self) -> usize {
        self.state.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The vector the double returns for `text`: [`DIMENSION`] values, unit length, a pure
/// function of the text.
pub fn vector_for(text: &str) -> Vec<f32> {
    // FNV-1a, then an LCG per component: deterministic and dependency-free.
    let mut state = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut v: Vec<f32> = (0..DIMENSION)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1_u32 << 23) as f32) - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/api/tags", get(ollama::tags))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/retrieve", post(retrieve))
        .route(
            "/api/models/{org}/{name}/revision/{rev}",
            get(hugging_face::model_info),
        )
        .route(
            "/{org}/{name}/resolve/{rev}/{*file}",
            get(hugging_face::resolve),
        )
        .layer(middleware::from_fn_with_state(state, script))
}

/// Counts and records every request, then applies the script: the delay, then a queued
/// failure or the real handler. A request dropped before it is answered is counted.
async fn script(State(state): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let (mut parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .unwrap_or_default();
    let (failure, delay) = {
        let mut script = state.script();
        *script.requests.entry(path.clone()).or_default() += 1;
        if !bytes.is_empty() {
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            script.bodies.insert(path.clone(), value);
        }
        if let Some(auth) = header_text(&parts.headers, header::AUTHORIZATION) {
            script.authorization.insert(path.clone(), auth);
        }
        let failure = script.failures.get_mut(&path).and_then(VecDeque::pop_front);
        parts.extensions.insert(StreamPace(script.stream_pace));
        (failure, script.delay)
    };
    let mut pending = Pending {
        state: &state,
        answered: false,
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let response = match failure {
        Some(f) => failure_response(f),
        None => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    };
    pending.answered = true;
    response
}

/// The pause before each piece of a streamed answer, handed to the handlers by [`script`].
#[derive(Clone, Copy, Default)]
struct StreamPace(Duration);

/// A streamed answer: `pieces` sent one by one, `pace` apart, as `content_type`.
fn paced(pieces: Vec<String>, pace: StreamPace, content_type: &'static str) -> Response {
    let stream = futures::stream::unfold(pieces.into_iter(), move |mut rest| async move {
        let piece = rest.next()?;
        if !pace.0.is_zero() {
            tokio::time::sleep(pace.0).await;
        }
        Some((Ok::<_, std::convert::Infallible>(piece), rest))
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The pieces a streamed answer of `text` comes in: each word with its following space.
fn pieces(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

/// Counts a request as dropped when its handling future is dropped before it answered.
struct Pending<'a> {
    state: &'a Shared,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.state.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn failure_response(f: Failure) -> Response {
    let content_type = if serde_json::from_str::<Value>(&f.body).is_ok() {
        "application/json"
    } else {
        "text/plain"
    };
    (f.status, [(header::CONTENT_TYPE, content_type)], f.body).into_response()
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn answer_to(prompt: &str) -> String {
    format!("double: {prompt}")
}

/// The text of an OpenAI/Ollama message's content (a string or a list of text parts).
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The last user message, and the word count of all messages.
fn last_user_message(body: &Value) -> (String, u64) {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let prompt_words = messages
        .iter()
        .map(|m| words(&content_text(&m["content"])))
        .sum();
    let last = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| content_text(&m["content"]))
        .unwrap_or_default();
    (last, prompt_words)
}

fn model_of(body: &Value) -> String {
    body["model"].as_str().unwrap_or(MODELS[0]).to_owned()
}

/// Texts of an embedding request's `input` (a string or an array of strings).
fn inputs_of(body: &Value) -> Vec<String> {
    match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap_or_default().to_owned())
            .collect(),
        _ => Vec::new(),
    }
}

const CREATED_AT: &str = "2024-01-01T00:00:00Z";

/// A remote retrieval service that ranks by input order: the first `top_k` documents.
async fn retrieve(axum::Json(body): axum::Json<Value>) -> Response {
    let top_k = body["top_k"].as_u64().unwrap_or(5);
    let documents: Vec<Value> = body["documents"]
        .as_array()
        .into_iter()
        .flatten()
        .take(usize::try_from(top_k).unwrap_or(usize::MAX))
        .map(|d| {
            let mut d = d.clone();
            d["score"] = json!(1.0);
            d
        })
        .collect();
    axum::Json(json!({ "documents": documents })).into_response()
}
