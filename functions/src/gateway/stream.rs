//! `GET /v1/jobs/{id}/stream`: Server-Sent Events for one job.
//!
//! Sends `job.snapshot` (the job and its tasks), then `task.update` and `job.status` as they
//! happen, and ends with `job.completed`, `job.failed` or `job.canceled`. A subscriber that
//! falls behind gets a fresh snapshot instead of the events it missed.
//!
//! Where a response cannot stay open (a Lambda function behind API Gateway buffers it whole)
//! the stream is the snapshot alone, with a `retry` hint: `EventSource` clients reconnect by
//! themselves after it and get a fresh snapshot, so they poll; the stream ends for good with
//! the terminal events once the job is finished.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use splai_shared::domain::{JobId, JobRecord};
use splai_shared::engine::{Engine, JobEvent};
use tokio::sync::broadcast::{Receiver, error::RecvError};

use super::{AppState, check_job, job_id};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::{ErrorBody, SseEvent};

/// How long a client of a snapshot-only stream waits before asking again.
const SNAPSHOT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

struct Follow {
    engine: Arc<Engine>,
    id: JobId,
    rx: Receiver<Arc<JobEvent>>,
    pending: VecDeque<Event>,
    done: bool,
}

impl Follow {
    fn push_snapshot(&mut self, record: JobRecord) {
        let terminal = record.job.status.is_terminal();
        let data = json!({ "job": record.job, "tasks": record.tasks });
        self.pending.push_back(sse("job.snapshot", &data));
        if terminal {
            self.push_event(&JobEvent::Job(Box::new(record.job)));
        }
    }

    fn push_event(&mut self, ev: &JobEvent) {
        if ev.is_terminal() {
            self.pending.push_back(sse("job.status", ev));
            self.done = true;
        }
        self.pending.push_back(sse(ev.name(), ev));
    }
}

fn sse(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(name))
}

/// Follows a job until it reaches a terminal status.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/stream",
    operation_id = "stream_job",
    tag = "jobs",
    params(("id" = JobId, Path, description = "The job")),
    responses(
        (status = 200, description = "Server-sent events: `job.snapshot`, then each task and job \
                                      event, ending after the job's terminal `job.status`",
         content((SseEvent = "text/event-stream"))),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
pub async fn stream(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = job_id(id)?;
    check_job(&s, &caller, &id).await?;
    // Subscribe before reading, so nothing between the snapshot and the first event is lost.
    let rx = s.engine.subscribe();
    let record = s.engine.job_record(&id).await?;
    let mut follow = Follow {
        engine: s.engine.clone(),
        id,
        rx,
        pending: VecDeque::new(),
        done: false,
    };
    follow.push_snapshot(record);
    if s.snapshot_streams && !follow.done {
        // The polling fallback: the snapshot alone, and when to ask again.
        let events: Vec<Result<Event, Infallible>> = follow
            .pending
            .drain(..)
            .map(|ev| Ok(ev.retry(SNAPSHOT_RETRY)))
            .collect();
        return Ok(Sse::new(futures::stream::iter(events)).into_response());
    }
    let events = futures::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(ev) = f.pending.pop_front() {
                return Some((Ok::<_, Infallible>(ev), f));
            }
            if f.done {
                return None;
            }
            match f.rx.recv().await {
                Ok(ev) if ev.job_id() == &f.id => f.push_event(&ev),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => match f.engine.job_record(&f.id).await {
                    Ok(record) => f.push_snapshot(record),
                    Err(_) => return None,
                },
                Err(RecvError::Closed) => return None,
            }
        }
    });
    // End the stream when the server shuts down, so it does not hold the drain open; clients
    // reconnect and get a fresh snapshot.
    let mut shutdown = s.shutdown.clone();
    let events = events.take_until(async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
