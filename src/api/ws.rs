//! `GET /v1/ws`: live job events over WebSocket (docs/API.md, "Live events").
//!
//! The token is checked before the upgrade (header, or `?token=` for
//! browsers). A connection subscribes to `tenant` (every job of its tenant)
//! or `job:<id>` (one of its tenant's jobs, else an error message); with
//! `after` it first replays the job's durable log past that seq, then
//! continues live, never sending a seq twice. A client that falls more than
//! the bus buffer behind is told `lagged` and resubscribes with `after`.
//!
//! The credential is checked again every [`RECHECK`] while the socket is
//! open: once the token expires, its key is revoked, its user removed or
//! their sessions ended, the socket gets an `error` message with the reason
//! and is closed (code 1008), so no event reaches a caller who lost access.

use std::collections::{HashMap, HashSet};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{auth_header, op, respond, with_state, ApiError, AppState};
use crate::store::{Event, Role, TenantId};

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "ws")
        .and(warp::get())
        .and(warp::ws())
        .and(with_state(state))
        .and(auth_header())
        .and(warp::query::<WsQuery>())
        .then(
            |ws: Ws, state: AppState, auth: Option<String>, q: WsQuery| async move {
                respond(upgrade(ws, state, auth, q).await)
            },
        )
        .boxed()
}

#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
}

/// How often an open socket's credential is verified again.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

const WS_OP: crate::auth::Operation = op("jobs:read", Role::Viewer);

async fn upgrade(
    ws: Ws,
    state: AppState,
    auth: Option<String>,
    q: WsQuery,
) -> Result<Response, ApiError> {
    let header = auth
        .or_else(|| q.token.map(|t| format!("Bearer {t}")))
        .unwrap_or_default();
    let caller = state.authenticate(Some(&header), WS_OP).await?;
    let tenant = caller.principal.tenant.clone();
    Ok(ws
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| session(socket, state, tenant, header))
        .into_response())
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum ClientMsg {
    Subscribe { topic: String, after: Option<u64> },
    Unsubscribe { topic: String },
}

#[derive(Hash, PartialEq, Eq, Clone)]
enum Topic {
    Tenant,
    Job(String),
}

fn parse_topic(s: &str) -> Option<Topic> {
    match s {
        "tenant" => Some(Topic::Tenant),
        _ => s
            .strip_prefix("job:")
            .filter(|id| !id.is_empty())
            .map(|id| Topic::Job(id.to_string())),
    }
}

/// One connection's subscriptions and what it has been sent.
struct Session {
    topics: HashSet<Topic>,
    /// Highest seq sent per job: replay and live never repeat an event.
    sent: HashMap<String, u64>,
}

impl Session {
    fn wants(&self, event: &Event) -> bool {
        self.topics.contains(&Topic::Tenant)
            || self.topics.contains(&Topic::Job(event.job_id.clone()))
    }

    /// Marks `event` sent; `false` if it was sent already.
    fn first_time(&mut self, event: &Event) -> bool {
        let last = self.sent.entry(event.job_id.clone()).or_insert(0);
        if event.seq <= *last {
            return false;
        }
        *last = event.seq;
        true
    }
}

fn event_message(event: &Event) -> Message {
    Message::text(serde_json::to_string(event).unwrap_or_default())
}

fn control(value: Value) -> Message {
    Message::text(value.to_string())
}

/// Decrements the subscriber gauge however the session ends.
struct Subscribed;

impl Subscribed {
    fn new() -> Subscribed {
        metrics::gauge!("murmur_ws_subscribers").increment(1.0);
        Subscribed
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        metrics::gauge!("murmur_ws_subscribers").decrement(1.0);
    }
}

async fn session(socket: WebSocket, state: AppState, tenant: TenantId, header: String) {
    let _gauge = Subscribed::new();
    let (mut tx, mut rx) = socket.split();
    let Some(mut feed) = state.jobs.subscribe().await else {
        let _ = tx
            .send(control(json!({"type": "error", "code": "unavailable", "detail": "the event bus is not running"})))
            .await;
        return;
    };
    let mut s = Session {
        topics: HashSet::new(),
        sent: HashMap::new(),
    };
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                match state.authenticate(Some(&header), WS_OP).await {
                    // Busy is the server's trouble, not the caller's: try later.
                    Err(e) if e.status == warp::http::StatusCode::SERVICE_UNAVAILABLE => {}
                    Err(e) => {
                        let note = json!({"type": "error", "code": e.code, "detail": e.detail});
                        let _ = tx.send(control(note)).await;
                        let _ = tx.send(Message::close_with(1008u16, "credential no longer valid")).await;
                        return;
                    }
                    Ok(_) => {}
                }
            }
            incoming = rx.next() => {
                let Some(Ok(msg)) = incoming else { break };
                if msg.is_close() {
                    break;
                }
                let Ok(text) = msg.to_str() else { continue };
                let replies = handle_client(&state, &tenant, &mut s, text);
                for reply in replies {
                    if tx.send(reply).await.is_err() {
                        return;
                    }
                }
            }
            event = feed.recv() => {
                match event {
                    Ok(event) => {
                        if event.tenant_id == tenant.as_str() && s.wants(&event) && s.first_time(&event)
                            && tx.send(event_message(&event)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        let note = json!({"type": "lagged", "missed": missed,
                            "detail": "you fell behind; subscribe again with after set to the last seq you have"});
                        if tx.send(control(note)).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        }
    }
}

/// Answers one client message: acknowledgements, replayed events, errors.
fn handle_client(state: &AppState, tenant: &TenantId, s: &mut Session, text: &str) -> Vec<Message> {
    let msg: ClientMsg = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            return vec![control(json!({"type": "error", "code": "invalid_request",
                "detail": format!("expected {{\"op\":\"subscribe\"|\"unsubscribe\",\"topic\":...}}: {e}")}))]
        }
    };
    match msg {
        ClientMsg::Unsubscribe { topic } => {
            if let Some(t) = parse_topic(&topic) {
                s.topics.remove(&t);
            }
            vec![control(json!({"type": "unsubscribed", "topic": topic}))]
        }
        ClientMsg::Subscribe { topic, after } => {
            let Some(parsed) = parse_topic(&topic) else {
                return vec![control(json!({"type": "error", "code": "invalid_request",
                    "detail": "topic must be \"tenant\" or \"job:<id>\""}))];
            };
            let mut out = Vec::new();
            if let Topic::Job(job_id) = &parsed {
                // Another tenant's job is answered exactly like a missing one.
                match state.store.job(tenant, job_id) {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return vec![control(json!({"type": "error", "code": "not_found",
                            "topic": topic, "detail": "job not found"}))]
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "ws subscribe");
                        return vec![control(
                            json!({"type": "error", "code": "unavailable", "detail": "store error"}),
                        )];
                    }
                }
                if let Some(after) = after {
                    // Replay what was missed, a page at most (one more is
                    // read to know whether the log goes on); live events
                    // resume after it.
                    s.sent.insert(job_id.clone(), after);
                    let page = state.settings.server.ws_replay_page.max(1);
                    match state.store.events_after(tenant, job_id, after, page + 1) {
                        Ok(mut events) => {
                            let more = events.len() > page;
                            events.truncate(page);
                            let last = events.last().map_or(after, |e| e.seq);
                            for e in events {
                                if s.first_time(&e) {
                                    out.push(event_message(&e));
                                }
                            }
                            if more {
                                out.push(control(json!({"type": "replay_truncated",
                                    "topic": topic, "next_after": last})));
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "ws replay"),
                    }
                }
            }
            s.topics.insert(parsed);
            out.insert(0, control(json!({"type": "subscribed", "topic": topic})));
            out
        }
    }
}
