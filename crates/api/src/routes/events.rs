//! GET /runs/{id}/events: the run's event log as JSON, or live as Server-Sent Events.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use machina_ledger::EventRecord;
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;

/// How often a live stream looks for new events (workers are other processes).
const STREAM_POLL_MS: u64 = 200;
/// Events fetched per query.
const EVENTS_PAGE: u32 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    after: Option<i64>,
}

pub(crate) async fn list_or_stream(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let wants_sse =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"));
    let resume = headers
        .get("last-event-id")
        .map(|v| v.to_str().ok().and_then(|s| s.parse::<i64>().ok()))
        .map(|v| v.ok_or_else(|| ApiError::invalid("Last-Event-ID must be an event sequence number")))
        .transpose()?;
    let after = resume.or(q.after).unwrap_or(0);
    let first = st.ledger.events(&id, after, EVENTS_PAGE).await?;
    if !wants_sse {
        return Ok(Json(first).into_response());
    }
    Ok(Sse::new(live(st, id, after, first)).keep_alive(KeepAlive::default()).into_response())
}

struct Cursor {
    st: AppState,
    run_id: String,
    after: i64,
    pending: std::vec::IntoIter<EventRecord>,
    done: bool,
    /// A live stream keeps the service from idling out while someone watches.
    _busy: crate::activity::Busy,
}

/// Follow the run until it is terminal and every event was sent, or the server shuts down.
fn live(
    st: AppState,
    run_id: String,
    after: i64,
    first: Vec<EventRecord>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let _busy = st.activity.begin();
    let cursor = Cursor { st, run_id, after, pending: first.into_iter(), done: false, _busy };
    stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.pending.next() {
                c.after = e.seq;
                let ev = Event::default().id(e.seq.to_string()).event(e.kind.clone()).json_data(&e);
                let ev = ev.unwrap_or_else(|_| Event::default().comment("unserializable event"));
                return Some((Ok(ev), c));
            }
            if c.done {
                return None;
            }
            // Read the status before the events: a terminal status seen here means every
            // event of the run is already committed, so the next fetch gets them all.
            let terminal = match c.st.ledger.run_status(&c.run_id).await {
                Ok(s) => s.is_terminal(),
                Err(_) => true,
            };
            match c.st.ledger.events(&c.run_id, c.after, EVENTS_PAGE).await {
                Ok(batch) if !batch.is_empty() => c.pending = batch.into_iter(),
                Ok(_) if terminal => c.done = true,
                Ok(_) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(STREAM_POLL_MS)) => {}
                        _ = c.st.shutdown.cancelled() => c.done = true,
                    }
                }
                Err(_) => c.done = true,
            }
        }
    })
    .boxed()
}
