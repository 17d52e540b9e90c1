//! The shared POST to model servers: retries and error classification.
//!
//! Every model backend (and remote retrieval) sends JSON through [`post_json`], so a
//! connection error, a 5xx and a 4xx mean the same thing whichever server answered.

use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ModelError;
use crate::config::Secret;

/// How long to wait for a TCP (and TLS) connection before calling a server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// First pause between two attempts; it doubles with every retry.
const BACKOFF_BASE: Duration = Duration::from_millis(250);

/// Longest pause a server's `Retry-After` can impose: beyond it the task's own timeout and
/// the gateway's retry policy are the better judges.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(10);

/// Longest server message kept in an error (the rest of a large HTML error page is noise).
const MESSAGE_LIMIT: usize = 300;

/// The HTTP client the model backends and the executors share: a worker builds it once, since
/// every client built loads the system's root certificates again.
pub(crate) fn client() -> reqwest::Client {
    // No overall request timeout: a completion may legitimately take minutes, and the
    // runtime's soft timeout cancels the call by dropping it.
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        // Building only fails when the TLS backend cannot initialise; the plain client then
        // fails the same way, so there is nothing better to fall back to.
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// One JSON call to a server: where, as whom, and how persistently.
pub(crate) struct JsonCall<'a> {
    /// Backend name, for error messages.
    pub backend: &'a str,
    /// The full URL.
    pub url: String,
    /// Sent as `Authorization: Bearer`; never logged nor put in an error.
    pub api_key: Option<&'a Secret>,
    /// Retries after a retryable failure (so at most `retries + 1` attempts).
    pub retries: u32,
}

/// A failed attempt and how long the server asked us to wait before the next.
struct Failure {
    error: ModelError,
    retry_after: Option<Duration>,
}

/// POSTs `body` as JSON and decodes the answer, retrying connection errors, timeouts, 5xx,
/// 408, 429 and unreadable answers with jittered exponential backoff.
///
/// # Errors
/// The last attempt's failure, classified: `Unreachable`, `Server`, `Rejected` (any other
/// 4xx, at once, with the server's own message) or `BadResponse`.
#[tracing::instrument(skip_all, fields(backend = call.backend, url = %call.url))]
pub(crate) async fn post_json<T: DeserializeOwned>(
    http: &reqwest::Client,
    call: &JsonCall<'_>,
    body: &impl Serialize,
) -> Result<T, ModelError> {
    let mut attempt = 0;
    loop {
        let failure = match post_once(http, call, body).await {
            Ok(answer) => return Ok(answer),
            Err(f) => f,
        };
        if !failure.error.is_retryable() || attempt >= call.retries {
            return Err(redact(failure.error, call.api_key));
        }
        let pause = retry_delay(attempt, failure.retry_after);
        tracing::warn!(
            backend = call.backend,
            url = %call.url,
            attempt = attempt + 1,
            pause_ms = pause.as_millis() as u64,
            error = %redact(failure.error, call.api_key),
            "model call failed; retrying"
        );
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// POSTs `body` as JSON and hands each non-empty line of the streamed answer (Ollama's NDJSON,
/// or the `data:` lines of OpenAI's SSE) to `on_line` as it arrives. Failures before the answer
/// starts are retried as [`post_json`] retries them; once lines have been handed on, a failure
/// is returned as it is (the caller has passed text on, and the attempt is the unit of retry).
///
/// # Errors
/// As [`post_json`]; `Unreachable` for a connection lost mid-stream; whatever `on_line` returns.
#[tracing::instrument(skip_all, fields(backend = call.backend, url = %call.url))]
pub(crate) async fn post_lines(
    http: &reqwest::Client,
    call: &JsonCall<'_>,
    body: &(impl Serialize + Sync),
    on_line: &mut (dyn FnMut(&str) -> Result<(), ModelError> + Send),
) -> Result<(), ModelError> {
    let mut attempt = 0;
    let mut resp = loop {
        let failure = match start_stream(http, call, body).await {
            Ok(resp) => break resp,
            Err(f) => f,
        };
        if !failure.error.is_retryable() || attempt >= call.retries {
            return Err(redact(failure.error, call.api_key));
        }
        tokio::time::sleep(retry_delay(attempt, failure.retry_after)).await;
        attempt += 1;
    };
    let lost = |e: reqwest::Error| ModelError::Unreachable {
        backend: call.backend.to_owned(),
        url: call.url.clone(),
        message: format!("the stream broke off: {}", error_chain(&e.without_url())),
    };
    let mut buf: Vec<u8> = Vec::new();
    while let Some(bytes) = resp.chunk().await.map_err(lost)? {
        buf.extend_from_slice(&bytes);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            if !text.trim().is_empty() {
                on_line(text.trim())?;
            }
        }
    }
    let rest = String::from_utf8_lossy(&buf);
    if !rest.trim().is_empty() {
        on_line(rest.trim())?;
    }
    Ok(())
}

/// Sends a request; the response once its status says the answer follows (its body not read
/// yet, so a stream can be consumed as it arrives).
async fn start_stream(
    http: &reqwest::Client,
    call: &JsonCall<'_>,
    body: &impl Serialize,
) -> Result<reqwest::Response, Failure> {
    let mut req = http.post(&call.url).json(body);
    if let Some(key) = call.api_key {
        req = req.bearer_auth(key.expose());
    }
    let resp = req.send().await.map_err(|e| unreachable(call, e))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = retry_after(resp.headers());
    let bytes = resp.bytes().await.map_err(|e| unreachable(call, e))?;
    Err(Failure {
        error: classify(call.backend, status, &bytes),
        retry_after,
    })
}

/// A request that never got (all of) an answer: retryable.
fn unreachable(call: &JsonCall<'_>, e: reqwest::Error) -> Failure {
    Failure {
        error: ModelError::Unreachable {
            backend: call.backend.to_owned(),
            url: call.url.clone(),
            message: error_chain(&e.without_url()),
        },
        retry_after: None,
    }
}

/// GETs JSON once, with a timeout; `None` on any failure. For best-effort listings.
pub(crate) async fn get_json<T: DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    api_key: Option<&Secret>,
    timeout: Duration,
) -> Option<T> {
    let mut req = http.get(url).timeout(timeout);
    if let Some(key) = api_key {
        req = req.bearer_auth(key.expose());
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

async fn post_once<T: DeserializeOwned>(
    http: &reqwest::Client,
    call: &JsonCall<'_>,
    body: &impl Serialize,
) -> Result<T, Failure> {
    let resp = start_stream(http, call, body).await?;
    let bytes = resp.bytes().await.map_err(|e| unreachable(call, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Failure {
        error: ModelError::BadResponse {
            backend: call.backend.to_owned(),
            message: format!("{e} in {}", truncate(&String::from_utf8_lossy(&bytes))),
        },
        retry_after: None,
    })
}

/// The error an unsuccessful status stands for.
pub(crate) fn classify(backend: &str, status: reqwest::StatusCode, body: &[u8]) -> ModelError {
    let backend = backend.to_owned();
    let message = server_message(status, body);
    let code = status.as_u16();
    if status.is_server_error() || code == 408 || code == 429 {
        ModelError::Server {
            backend,
            status: code,
            message,
        }
    } else if status.is_client_error() {
        ModelError::Rejected {
            backend,
            status: code,
            message,
        }
    } else {
        ModelError::BadResponse {
            backend,
            message: format!("unexpected status {status}: {message}"),
        }
    }
}

/// The server's own explanation: Ollama's `{"error": "..."}`, OpenAI's
/// `{"error": {"message": ...}}`, FastAPI's `{"detail": ...}`, else the body itself.
pub(crate) fn server_message(status: reqwest::StatusCode, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        let error = v.get("error");
        error
            .and_then(|e| e.as_str())
            .or_else(|| {
                error
                    .and_then(|e| e.get("message"))
                    .and_then(|m| m.as_str())
            })
            .or_else(|| v.get("message").and_then(|m| m.as_str()))
            .or_else(|| v.get("detail").and_then(|m| m.as_str()))
            .map(str::to_owned)
    });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    if text.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        truncate(&text)
    }
}

/// How long to wait before retry number `attempt + 1`: the server's `Retry-After` (capped)
/// when it gave one, else 250 ms doubling per attempt with jitter in its upper half, so
/// workers that failed together do not retry together.
pub(crate) fn retry_delay(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(RETRY_AFTER_CAP);
    }
    let full = BACKOFF_BASE.saturating_mul(1 << attempt.min(10));
    let half = full / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// A numeric `Retry-After` (seconds); the HTTP-date form is rare from model servers.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An error and its causes on one line (reqwest's own message alone says only "error
/// sending request").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Keeps a message to [`MESSAGE_LIMIT`] characters.
fn truncate(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Removes the API key from a server's message, should the server echo it back.
fn redact(error: ModelError, key: Option<&Secret>) -> ModelError {
    let Some(key) = key.map(Secret::expose).filter(|k| !k.is_empty()) else {
        return error;
    };
    let clean = |m: String| m.replace(key, "[redacted]");
    match error {
        ModelError::Server {
            backend,
            status,
            message,
        } => ModelError::Server {
            backend,
            status,
            message: clean(message),
        },
        ModelError::Rejected {
            backend,
            status,
            message,
        } => ModelError::Rejected {
            backend,
            status,
            message: clean(message),
        },
        ModelError::BadResponse { backend, message } => ModelError::BadResponse {
            backend,
            message: clean(message),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    /// Ollama's and OpenAI's error shapes both yield the server's own message.
    #[test]
    fn server_message_reads_ollama_and_openai_errors() {
        let ollama = br#"{"error":"model 'x' not found"}"#;
        let openai = br#"{"error":{"message":"bad max_tokens","type":"invalid_request_error"}}"#;
        let fastapi = br#"{"detail":"Not Found"}"#;
        let s = StatusCode::BAD_REQUEST;
        assert_eq!(server_message(s, ollama), "model 'x' not found");
        assert_eq!(server_message(s, openai), "bad max_tokens");
        assert_eq!(server_message(s, fastapi), "Not Found");
    }

    /// A non-JSON body is kept, truncated; an empty one falls back to the status reason.
    #[test]
    fn server_message_truncates_raw_bodies() {
        let long = "x".repeat(1000);
        let m = server_message(StatusCode::BAD_GATEWAY, long.as_bytes());
        assert_eq!(m.chars().count(), MESSAGE_LIMIT + 1);
        assert_eq!(server_message(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
    }

    /// 5xx, 408 and 429 are retryable server failures; other 4xx are rejections.
    #[test]
    fn classify_splits_retryable_from_rejected() {
        for code in [500, 502, 503, 408, 429] {
            let e = classify("ollama", StatusCode::from_u16(code).unwrap(), b"");
            assert!(e.is_retryable(), "{code}: {e}");
        }
        for code in [400, 401, 403, 404, 422] {
            let e = classify("ollama", StatusCode::from_u16(code).unwrap(), b"");
            assert!(matches!(e, ModelError::Rejected { .. }), "{code}: {e}");
        }
    }

    /// Backoff doubles from 250 ms with jitter in the upper half; Retry-After wins, capped.
    #[test]
    fn retry_delay_doubles_and_honours_retry_after() {
        for attempt in 0..4 {
            let full = BACKOFF_BASE * (1 << attempt);
            let d = retry_delay(attempt, None);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        let asked = Some(Duration::from_secs(2));
        assert_eq!(retry_delay(0, asked), Duration::from_secs(2));
        let greedy = Some(Duration::from_secs(3600));
        assert_eq!(retry_delay(0, greedy), RETRY_AFTER_CAP);
    }

    /// A key echoed back by a server never reaches the error message.
    #[test]
    fn redact_removes_the_api_key_from_messages() {
        let key = Secret::new("sk-very-secret");
        let e = classify(
            "openai",
            StatusCode::UNAUTHORIZED,
            b"bad key sk-very-secret",
        );
        let shown = redact(e, Some(&key)).to_string();
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }
}
