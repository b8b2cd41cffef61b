//! Live events under load: the event bus routes by tenant, so a WebSocket
//! subscriber of one tenant never receives another tenant's events however
//! busy that tenant is, and a subscriber that stops reading holds up
//! neither the jobs nor the other subscribers.
//!
//! Unlike the other suites these run the service in this process (the
//! real store, actor tree, HTTP and WebSocket on loopback) with a trivial
//! engine in place of the models, as `scripts/bench-orchestrator` does:
//! "under load" means hundreds of jobs, which the models would take many
//! minutes to run on two cores.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use murmur::config::Settings;
use murmur_actors::job::JobStage;
use murmur_actors::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

mod common;

/// Reports a stage and full progress, answers at once.
struct TrivialEngine;

impl Engine for TrivialEngine {
    fn run(
        &self,
        _r: &WorkRequest,
        sink: &mut dyn WorkSink,
        _c: &AtomicBool,
    ) -> Result<WorkOutput, WorkError> {
        sink.stage(JobStage::Transcribe);
        sink.progress(1.0);
        Ok(WorkOutput {
            result: json!({"language": "en", "duration_s": 1.0, "text": "", "segments": []}),
            audio_seconds: 1.0,
        })
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Service {
    base: String,
    http: reqwest::Client,
    store: murmur::store::Store,
    _tmp: tempfile::TempDir,
}

async fn service() -> Service {
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = Settings::load(None).unwrap();
    settings.store.data_dir = tmp.path().join("data");
    settings.auth.argon2_memory_kib = 1024;
    settings.auth.argon2_iterations = 1;
    settings.models.fetch_missing = true; // the trivial engine needs no model
    let engine: Arc<dyn Engine> = Arc::new(TrivialEngine);
    let (state, _root) = murmur::server::start(settings, vec![engine; 2])
        .await
        .unwrap();
    let store = state.store.clone();
    let (addr, listener) = common::loopback_listener().await;
    tokio::spawn(
        warp::serve(murmur::api::routes(state))
            .incoming(listener)
            .run(),
    );
    Service {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        store,
        _tmp: tmp,
    }
}

struct Tenant {
    token: String,
    file_id: String,
}

impl Service {
    /// A tenant on enterprise (room for hundreds of queued jobs) with a
    /// one-second file.
    async fn tenant(&self, name: &str) -> Tenant {
        let signup: Value = self
            .http
            .post(format!("{}/v1/auth/signup", self.base))
            .json(
                &json!({"tenant": name, "email": format!("{name}@events.example"),
                "password": "events password"}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = signup["token"].as_str().unwrap().to_string();
        let id = signup["tenant"]["id"].as_str().unwrap();
        self.store
            .set_tier(&murmur::store::TenantId::for_operator(id), "enterprise")
            .await
            .unwrap();
        let part =
            reqwest::multipart::Part::bytes(common::tone_wav(1.0, 16000)).file_name("one.wav");
        let file: Value = self
            .http
            .post(format!("{}/v1/files", self.base))
            .bearer_auth(&token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Tenant {
            token,
            file_id: file["id"].as_str().unwrap().to_string(),
        }
    }

    /// Submits `n` jobs, 16 at a time, until each is accepted (a full
    /// queue is waited out); answers their ids.
    async fn submit(&self, t: &Tenant, n: usize) -> Vec<String> {
        futures_util::stream::iter(0..n)
            .map(|_| async move {
                loop {
                    let res = self
                        .http
                        .post(format!("{}/v1/jobs", self.base))
                        .bearer_auth(&t.token)
                        .json(&json!({"file_id": t.file_id, "params": {"model": "base"}}))
                        .send()
                        .await
                        .unwrap();
                    if res.status() == 429 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    assert_eq!(res.status(), 202);
                    let job: Value = res.json().await.unwrap();
                    return job["id"].as_str().unwrap().to_string();
                }
            })
            .buffer_unordered(16)
            .collect()
            .await
    }

    /// A connection on `token`'s tenant topic, its acknowledgement read.
    async fn watch_tenant(&self, token: &str) -> Ws {
        let url = format!(
            "{}/v1/ws?token={token}",
            self.base.replace("http://", "ws://")
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        send(&mut ws, json!({"op": "subscribe", "topic": "tenant"})).await;
        assert_eq!(
            next(&mut ws, Duration::from_secs(10)).await.unwrap()["type"],
            "subscribed"
        );
        ws
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next text message as JSON, or `None` after `within` of silence.
async fn next<S>(ws: &mut S, within: Duration) -> Option<Value>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("the socket ended: {other:?}"),
            Err(_) => return None,
        }
    }
}

/// Reads until every job in `jobs` has completed; answers every message.
async fn until_completed(ws: &mut Ws, jobs: &HashSet<String>, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut done = HashSet::new();
    let mut got = Vec::new();
    while done.len() < jobs.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = next(ws, left).await.unwrap_or_else(|| {
            panic!(
                "{} of {} jobs completed before the deadline",
                done.len(),
                jobs.len()
            )
        });
        if m["type"] == "completed" {
            done.insert(m["job_id"].as_str().unwrap().to_string());
        }
        got.push(m);
    }
    got
}

/// A connection on its tenant topic alone (a dashboard's) receives every
/// event of its tenant's jobs exactly once, each job's in seq order: it
/// skips the duplicate check that connections with job topics make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_topic_alone_gets_each_event_once_in_order() {
    let svc = service().await;
    let a = svc.tenant("Dashboard").await;
    let mut ws = svc.watch_tenant(&a.token).await;
    let jobs: HashSet<String> = svc.submit(&a, 40).await.into_iter().collect();
    let mut got = until_completed(&mut ws, &jobs, Duration::from_secs(120)).await;
    while let Some(m) = next(&mut ws, Duration::from_millis(500)).await {
        got.push(m);
    }
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for m in &got {
        let job = m["job_id"].as_str().unwrap_or_else(|| panic!("{m}"));
        assert!(jobs.contains(job), "{m}");
        seqs.entry(job.to_string())
            .or_default()
            .push(m["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs.len(), jobs.len());
    for (job, seqs) in seqs {
        // queued, started, stage, progress, completed
        assert_eq!(seqs, vec![1, 2, 3, 4, 5], "job {job}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_b_subscriber_receives_none_of_tenant_a_events_under_load() {
    let svc = service().await;
    let a = svc.tenant("Busy").await;
    let b = svc.tenant("Quiet").await;
    // A's first job, so B can try to watch it by id as well.
    let a_first = svc.submit(&a, 1).await.remove(0);
    let mut watcher_a = svc.watch_tenant(&a.token).await;
    let mut watcher_b = svc.watch_tenant(&b.token).await;
    send(
        &mut watcher_b,
        json!({"op": "subscribe", "topic": format!("job:{a_first}"), "after": 0}),
    )
    .await;
    let refused = next(&mut watcher_b, Duration::from_secs(10)).await.unwrap();
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "not_found", "{refused}");

    // A is busy (300 jobs, five events each) while B runs three.
    let (a_jobs, b_jobs) = tokio::join!(svc.submit(&a, 300), svc.submit(&b, 3));
    let a_jobs: HashSet<String> = a_jobs.into_iter().collect();
    let b_jobs: HashSet<String> = b_jobs.into_iter().collect();
    let seen_by_a = until_completed(&mut watcher_a, &a_jobs, Duration::from_secs(120)).await;
    let seen_by_b = until_completed(&mut watcher_b, &b_jobs, Duration::from_secs(120)).await;
    // The load happened: A's watcher saw every one of A's completions.
    assert!(seen_by_a.len() >= a_jobs.len() * 2, "{}", seen_by_a.len());
    // Then everything B's watcher has, now and for a moment more, is B's.
    let mut all_b = seen_by_b;
    while let Some(m) = next(&mut watcher_b, Duration::from_millis(500)).await {
        all_b.push(m);
    }
    for m in &all_b {
        if let Some(job) = m["job_id"].as_str() {
            assert!(b_jobs.contains(job), "tenant B received {m}");
            assert!(
                !a_jobs.contains(job) && job != a_first,
                "tenant B received {m}"
            );
        } else {
            assert_ne!(m["type"], "lagged", "{m}");
        }
    }
    // And it has all of B's: queued, started, stage, progress, completed.
    let events = all_b.iter().filter(|m| m["job_id"].is_string()).count();
    assert_eq!(events, b_jobs.len() * 5, "{all_b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_holds_up_neither_jobs_nor_others() {
    let svc = service().await;
    let a = svc.tenant("Watched").await;
    let mut fast = svc.watch_tenant(&a.token).await;
    // Reads its acknowledgement, then nothing while the jobs run; its
    // socket's receive buffer is small, so the server's writes to it stop
    // soon and its session falls behind the bus.
    let addr: std::net::SocketAddr = svc.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/v1/ws?token={}", a.token);
    let (mut slow, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    slow.send(Message::Text(
        json!({"op": "subscribe", "topic": "tenant"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next(&mut slow, Duration::from_secs(10)).await.unwrap()["type"],
        "subscribed"
    );

    let started = Instant::now();
    let jobs: HashSet<String> = svc.submit(&a, 600).await.into_iter().collect();
    let seen = until_completed(&mut fast, &jobs, Duration::from_secs(120)).await;
    let fast_took = started.elapsed();
    // The fast one got every event of every job, in order per job.
    let mut last: HashMap<String, u64> = HashMap::new();
    for m in seen.iter().filter(|m| m["job_id"].is_string()) {
        let seq = m["seq"].as_u64().unwrap();
        let prev = last.insert(m["job_id"].as_str().unwrap().to_string(), seq);
        assert_eq!(seq, prev.unwrap_or(0) + 1, "{m}");
    }
    assert_eq!(last.len(), jobs.len());
    assert!(
        last.values().all(|&seq| seq == 5),
        "every job's log ends at 5 events"
    );

    // The slow one now reads what it has. Whatever it was sent is in
    // order per job; a gap is always announced by a `lagged` notice first
    // (the bus buffers 1024 events per subscriber, and 3000 were sent).
    let mut mark: HashMap<String, u64> = HashMap::new();
    let mut lagged = false;
    let mut received = 0;
    while let Some(m) = next(&mut slow, Duration::from_secs(2)).await {
        if m["type"] == "lagged" {
            assert!(m["missed"].as_u64().unwrap() > 0, "{m}");
            assert_eq!(m["topic"], "tenant", "{m}");
            lagged = true;
            continue;
        }
        let job = m["job_id"].as_str().unwrap().to_string();
        let seq = m["seq"].as_u64().unwrap();
        let prev = mark.insert(job, seq).unwrap_or(0);
        assert!(seq > prev, "{m}");
        assert!(seq == prev + 1 || lagged, "a gap without a lag notice: {m}");
        received += 1;
    }
    assert!(received > 0);
    assert!(
        lagged || received == jobs.len() * 5,
        "{received} events, no lag notice"
    );
    eprintln!(
        "fast subscriber: {} events in {:.2} s; slow one: {received} events, lagged: {lagged}",
        seen.len(),
        fast_took.as_secs_f64()
    );
}
