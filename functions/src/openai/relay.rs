//! `stream=true`: the model's tokens relayed to the client as `chat.completion.chunk` Server-
//! Sent Events while the job runs, ending in `data: [DONE]`.
//!
//! The worker appends each task's tokens to the store's chunk log (`POST
//! /v1/tasks/{job}/{task}/chunks`), whichever gateway instance it reaches; the relay reads the
//! log after the last chunk it sent. A chunk arriving through this instance wakes the relay at
//! once; otherwise it re-reads every [`POLL`]. The job's end (an engine event, or the store
//! re-read) closes the stream with the finish reason, after any text the final output holds
//! beyond what was streamed (a backend that cannot stream sends it all at the end).
//!
//! The relay runs as its own task feeding a channel that the response body drains: when the
//! client disconnects the body is dropped, the channel closes, and the relay stops and
//! cancels the job.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde_json::{Value, json};
use splai_shared::domain::{JobId, LeaseId, Status, TaskId, TaskRef};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::error::{self, timed_out};
use super::translate::{self, Answer, Chat, GENERATE};
use super::wait;
use super::{OpenAiState, Submitted};
use crate::error::ApiError;

/// How often the chunk log and the job are re-read for changes made through other instances.
pub const POLL: Duration = Duration::from_millis(200);

/// Chunks read per store call.
const PAGE: usize = 256;

/// The SSE response for a streaming chat.
pub fn respond(s: OpenAiState, chat: Chat, follow: Submitted) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(relay(s, chat, follow, tx));
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    sse(events).into_response()
}

fn sse(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// Where the relay is.
struct Relay {
    s: OpenAiState,
    chat: Chat,
    id: String,
    created: i64,
    tx: mpsc::Sender<Event>,
    task: TaskRef,
    after: i64,
    lease: Option<LeaseId>,
    streamed: String,
}

/// The client went away.
struct Gone;

impl Relay {
    async fn send(&self, data: &Value) -> Result<(), Gone> {
        let event = Event::default().data(data.to_string());
        self.tx.send(event).await.map_err(|_| Gone)
    }

    async fn delta(&self, delta: Value, finish: Option<&str>) -> Result<(), Gone> {
        let model = self.chat.model.clone();
        self.send(&translate::chunk(
            &self.id,
            self.created,
            &model,
            delta,
            finish,
        ))
        .await
    }

    /// Sends every stored chunk after the last one sent. Chunks of a later attempt (the
    /// first lease was lost mid-stream) are not mixed into the text already sent.
    async fn drain(&mut self) -> Result<Result<(), ApiError>, Gone> {
        loop {
            let page = match self
                .s
                .app
                .engine
                .chunks_after(&self.task, self.after, PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => return Ok(Err(e.into())),
            };
            for c in &page {
                self.after = c.id;
                let lease = self.lease.get_or_insert_with(|| c.lease_id.clone());
                if *lease != c.lease_id || c.text.is_empty() {
                    continue;
                }
                self.streamed.push_str(&c.text);
                self.delta(json!({ "content": c.text }), None).await?;
            }
            if page.len() < PAGE {
                return Ok(Ok(()));
            }
        }
    }

    /// An error event (the OpenAI client raises it), then the end of the stream.
    async fn fail(&self, e: &ApiError) {
        let _ = self.send(&error::body(e)).await;
        let _ = self.tx.send(Event::default().data("[DONE]")).await;
    }
}

async fn relay(s: OpenAiState, chat: Chat, mut follow: Submitted, tx: mpsc::Sender<Event>) {
    let deadline = Instant::now() + s.timeout;
    let mut wake = s.app.engine.subscribe_chunks();
    let task = TaskRef {
        job_id: follow.job.clone(),
        // Invariant: a literal valid id.
        task_id: TaskId::parse(GENERATE).expect("a valid task id"),
    };
    let mut r = Relay {
        id: translate::answer_id("chatcmpl", follow.job.as_str()),
        created: follow.created,
        s,
        chat,
        tx,
        task,
        after: 0,
        lease: None,
        streamed: String::new(),
    };
    if r.delta(json!({ "role": "assistant", "content": "" }), None)
        .await
        .is_err()
    {
        return;
    }
    let mut finished = false;
    loop {
        match r.drain().await {
            Err(Gone) => return,
            Ok(Err(e)) => return r.fail(&e).await,
            Ok(Ok(())) => {}
        }
        if finished {
            break;
        }
        if Instant::now() >= deadline {
            let e = timed_out(follow.job.as_str(), r.s.timeout.as_secs());
            let _ = r.s.app.engine.cancel(&follow.job).await;
            follow.guard.disarm();
            return r.fail(&e).await;
        }
        let poll = (Instant::now() + POLL).min(deadline);
        tokio::select! {
            () = r.tx.closed() => return,
            ev = follow.events.recv() => match ev {
                Ok(ev) => finished = wait::finishes(&ev, &follow.job),
                Err(RecvError::Lagged(_) | RecvError::Closed) => finished = ended(&r, &follow.job).await,
            },
            w = wake.recv() => {
                // Another task's chunks, or missed wake-ups: the loop re-reads either way.
                let _ = w;
            }
            () = tokio::time::sleep_until(poll) => finished = ended(&r, &follow.job).await,
        }
    }
    follow.guard.disarm();
    finish(&mut r, &follow.job).await;
}

/// Whether the job has finished, by the store (for ends applied by another instance).
async fn ended(r: &Relay, job: &JobId) -> bool {
    r.s.app
        .engine
        .job(job)
        .await
        .is_ok_and(|j| j.status.is_terminal())
}

/// The end of the stream: any text the output holds beyond what was streamed, the finish
/// reason, the usage when asked for, `[DONE]`; or the job's failure.
async fn finish(r: &mut Relay, job: &JobId) {
    let record = match r.s.app.engine.job_record(job).await {
        Ok(record) => record,
        Err(e) => return r.fail(&e.into()).await,
    };
    if record.job.status != Status::Completed {
        return r.fail(&error::job_failed(wait::failure(&record))).await;
    }
    let output = match wait::output_of(&r.s.app, &record, GENERATE).await {
        Ok(o) => o,
        Err(e) => return r.fail(&e).await,
    };
    let answer = Answer::from_output(&output, &r.chat.model);
    let Some(rest) = answer.text.strip_prefix(r.streamed.as_str()) else {
        let e = error::job_failed(format!(
            "job {job}: the task was retried after part of its answer was streamed, and the \
             new attempt answered differently; request again"
        ));
        return r.fail(&e).await;
    };
    if !rest.is_empty() && r.delta(json!({ "content": rest }), None).await.is_err() {
        return;
    }
    let reason = answer.finish_reason.clone();
    if r.delta(json!({}), Some(reason.as_str())).await.is_err() {
        return;
    }
    if r.chat.include_usage {
        let usage = answer.usage.clone().unwrap_or_else(
            || json!({ "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0 }),
        );
        let chunk = translate::usage_chunk(&r.id, r.created, &answer.model, &usage);
        if r.send(&chunk).await.is_err() {
            return;
        }
    }
    let _ = r.tx.send(Event::default().data("[DONE]")).await;
}
