//! `GET /v1/ws`: live job events over WebSocket (docs/API.md, "Live events").
//!
//! The token is checked before the upgrade (header, or `?token=` for
//! browsers). A connection subscribes to `tenant` (every job of its tenant)
//! or `job:<id>` (one of its tenant's jobs, else an error message); each is
//! a topic of the event bus taken under the connection's tenant, so no
//! other tenant's event ever reaches it and nothing is filtered here. With
//! `after` it first replays the job's durable log past that seq, then
//! continues live, never sending a seq twice. A client that falls more than
//! the bus buffer behind on a topic is told `lagged` and resubscribes with
//! `after`. Events ready together go out in one write: each is serialized
//! once by the bus, whoever receives it.
//!
//! The credential is checked again every [`RECHECK`] while the socket is
//! open: once the token expires, its key is revoked, its user removed or
//! their sessions ended, the socket gets an `error` message with the reason
//! and is closed (code 1008), so no event reaches a caller who lost access.

use std::collections::HashMap;

use futures_util::{SinkExt, StreamExt};
use murmur_actors::bus::{Feeds, Published, Topic};
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
    /// The bus topics, all of the connection's tenant.
    feeds: Feeds,
    /// Highest seq sent per job: replay and live never repeat an event.
    sent: HashMap<String, u64>,
    /// Whether an event can come twice: once a job topic was subscribed
    /// (its replay and live feed overlap, and the tenant topic carries the
    /// same events). A connection on its tenant topic alone receives each
    /// event once, in order, and skips the bookkeeping: with 500 such
    /// connections, the per-event look-up in `sent` was the largest cost
    /// of the fan-out in the server's own code (cache misses).
    overlaps: bool,
}

/// Most events written before a flush, so one busy connection still lets
/// the others (and its own client messages) take turns.
const BATCH: usize = 64;

impl Session {
    /// Marks `event` sent; `false` if it was sent already.
    fn first_time(&mut self, event: &Event) -> bool {
        // Looked up before inserting: no key copy per event.
        match self.sent.get_mut(&event.job_id) {
            Some(last) if event.seq <= *last => false,
            Some(last) => {
                *last = event.seq;
                true
            }
            None => {
                self.sent.insert(event.job_id.clone(), event.seq);
                true
            }
        }
    }

    /// Forgets a job that ended, once its last event came live, so a
    /// connection watching a busy tenant for days does not keep a mark per
    /// job. Kept when two topics carry the job (the second copy of the
    /// last event must still be known as sent); a later subscribe with
    /// `after` sets the mark again.
    fn forget_ended(&mut self, event: &Event) {
        if event.status.is_finished()
            && !(self.feeds.contains(&Topic::Tenant) && self.feeds.holds_job(&event.job_id))
        {
            self.sent.remove(&event.job_id);
        }
    }
}

fn event_message(event: &Event) -> Message {
    Message::text(serde_json::to_string(event).unwrap_or_default())
}

fn topic_name(topic: &Topic) -> String {
    match topic {
        Topic::Tenant => "tenant".into(),
        Topic::Job(id) => format!("job:{id}"),
    }
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
    // Client messages are read by a task of their own: polling the socket's
    // read half in the loop below, after every batch of events, made
    // tungstenite zero its 128 KiB read buffer each time (most of the CPU
    // of 500 subscribers). The task is woken only when the client sends.
    let (client_tx, mut incoming) = tokio::sync::mpsc::channel::<Message>(8);
    let _reader = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            let close = msg.is_close();
            if client_tx.send(msg).await.is_err() || close {
                break;
            }
        }
    }));
    let mut s = Session {
        feeds: Feeds::new(),
        sent: HashMap::new(),
        overlaps: false,
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
            msg = incoming.recv() => {
                let Some(msg) = msg else { break };
                if msg.is_close() {
                    break;
                }
                let Ok(text) = msg.to_str() else { continue };
                let replies = handle_client(&state, &tenant, &mut s, text);
                for reply in replies {
                    if tx.feed(reply).await.is_err() {
                        return;
                    }
                }
                if tx.flush().await.is_err() {
                    return;
                }
            }
            got = s.feeds.recv() => {
                // This event and those ready behind it, in one write.
                let mut next = Some(got);
                let mut batch = 0;
                while let Some((topic, got)) = next.take() {
                    if let Some(message) = live_message(&tenant, &mut s, &topic, got) {
                        if tx.feed(message).await.is_err() {
                            return;
                        }
                    }
                    batch += 1;
                    if batch < BATCH {
                        next = s.feeds.try_recv();
                    }
                }
                if tx.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// What one live event (or a lag) on `topic` sends the client, if anything.
fn live_message(
    tenant: &TenantId,
    s: &mut Session,
    topic: &Topic,
    got: Result<std::sync::Arc<Published>, RecvError>,
) -> Option<Message> {
    match got {
        Ok(published) => {
            // Structural: the connection holds only its tenant's topics.
            debug_assert_eq!(published.event.tenant_id, tenant.as_str());
            if !s.overlaps {
                return Some(Message::text(&*published.json));
            }
            let fresh = s.first_time(&published.event);
            s.forget_ended(&published.event);
            fresh.then(|| Message::text(&*published.json))
        }
        Err(RecvError::Lagged(missed)) => Some(control(json!({"type": "lagged",
            "topic": topic_name(topic), "missed": missed,
            "detail": "you fell behind; subscribe again with after set to the last seq you have"}))),
        // Not while the bus lives (a topic goes with its last subscriber).
        Err(RecvError::Closed) => {
            s.feeds.remove(topic);
            None
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
                s.feeds.remove(&t);
            }
            vec![control(json!({"type": "unsubscribed", "topic": topic}))]
        }
        ClientMsg::Subscribe { topic, after } => {
            let Some(parsed) = parse_topic(&topic) else {
                return vec![control(json!({"type": "error", "code": "invalid_request",
                    "detail": "topic must be \"tenant\" or \"job:<id>\""}))];
            };
            let mut out = Vec::new();
            if matches!(parsed, Topic::Job(_)) {
                s.overlaps = true;
            }
            // Live first, then the replay: an event committed after the
            // replay's read is on the live feed, and `first_time` drops
            // what both carry. A topic already held keeps its feed (a
            // fresh one would skip what the old one still buffers).
            let subscribe = |s: &mut Session| {
                if !s.feeds.contains(&parsed) {
                    s.feeds
                        .insert(state.jobs.subscribe(tenant.as_str(), parsed.clone()));
                }
            };
            if let Topic::Job(job_id) = &parsed {
                // Another tenant's job is answered exactly like a missing one.
                match state.store.job(tenant, job_id) {
                    Ok(Some(_)) => subscribe(s),
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
            subscribe(s);
            out.insert(0, control(json!({"type": "subscribed", "topic": topic})));
            out
        }
    }
}
