//! Orchestration benchmark (`scripts/bench-orchestrator`): the real service
//! (store on disk, actor tree, HTTP and WebSocket on loopback) with a
//! trivial engine in place of the models, so the figures are the overhead
//! of accepting, persisting, scheduling, running and announcing jobs.
//!
//! The server runs in a child process (this executable with `--serve`), the
//! clients in this one, so neither's work is counted in the other's time
//! (they still share the machine's cores).
//!
//! 1. Throughput: N jobs submitted over HTTP (32 in flight), timed until
//!    the tenant's usage counts every job completed.
//! 2. Event latency: 500 WebSocket subscribers on the tenant topic while
//!    jobs run; latency is receipt time minus the event's `at` stamp. The
//!    jobs are a burst (32 in flight, as fast as the server takes them),
//!    or with `--latency-rate N` a steady N a second.
//!    With `--other-tenants N`, N more tenants each submit as many jobs at
//!    the same time (their own traffic, which the measured subscribers
//!    must not see or wait behind).
//! 3. With `--webhooks N`: N endpoints (all events) on a loopback receiver
//!    during both runs, so throughput includes the outbox writes; then the
//!    delivery latency (receipt minus the event's `timestamp`) and count.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use murmur::config::Settings;
use murmur_actors::job::JobStage;
use murmur_actors::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

#[path = "../tests/common/mod.rs"]
mod common;

/// The trivial stage: report one stage and full progress, answer at once.
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

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a latency client reads of a WebSocket message.
#[derive(serde::Deserialize)]
struct Received<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    at: Option<&'a str>,
}

/// CPU seconds (user + system) the process `pid` has used so far, from
/// `/proc` (Linux); `None` elsewhere.
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are the 12th and 13th of them, in ticks.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}

/// The server's store flushes so far and the seconds they took
/// (`murmur_store_flushes_total`, `murmur_store_flush_seconds_sum`).
async fn store_flushes(http: &reqwest::Client, base: &str) -> Option<(f64, f64)> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((
        value("murmur_store_flushes_total")?,
        value("murmur_store_flush_seconds_sum")?,
    ))
}

/// "; N store flushes (per job, mean time)" for a phase: an event waits
/// for about two flushes before it is announced.
fn flushes_line(before: Option<(f64, f64)>, after: Option<(f64, f64)>, jobs: usize) -> String {
    match (before, after) {
        (Some((b, bs)), Some((a, as_))) if a > b => format!(
            "; {:.0} store flushes ({:.2} per job, {:.2} ms each)",
            a - b,
            (a - b) / jobs as f64,
            (as_ - bs) * 1000.0 / (a - b)
        ),
        _ => String::new(),
    }
}

/// "server CPU …" for a phase: how much of the cores the server used, and
/// per job (steadier than jobs/s when other work shares the machine).
fn server_cpu(before: Option<f64>, after: Option<f64>, wall: Duration, jobs: usize) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!(
            "; server CPU {:.2} s ({:.2} of a core), {:.2} ms per job",
            a - b,
            (a - b) / wall.as_secs_f64(),
            (a - b) * 1000.0 / jobs as f64
        ),
        _ => String::new(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(base: &str, token: &str) -> Ws {
    let url = format!("{}/v1/ws?token={token}", base.replace("http://", "ws://"));
    let (mut s, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    s.send(Message::Text(
        json!({"op": "subscribe", "topic": "tenant"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    s
}

async fn submit_all(http: &reqwest::Client, base: &str, token: &str, file_id: &str, n: usize) {
    submit_at(http, base, token, file_id, n, 0).await
}

/// Submits `n` jobs, 32 in flight; with `rate` > 0, starting at most
/// `rate` a second (a steady load rather than a burst).
async fn submit_at(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    file_id: &str,
    n: usize,
    rate: usize,
) {
    let start = tokio::time::Instant::now();
    futures_util::stream::iter(0..n)
        .then(|i| async move {
            if rate > 0 {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate as f64))
                    .await;
            }
            i
        })
        .map(|_| {
            let http = http.clone();
            let url = format!("{base}/v1/jobs");
            let body = json!({"file_id": file_id, "params": {"model": "base"}});
            let token = token.to_string();
            async move {
                let res = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    res.status(),
                    202,
                    "{}",
                    res.text().await.unwrap_or_default()
                );
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

/// Completed jobs of the tenant, as its usage counts them.
async fn completed(http: &reqwest::Client, base: &str, token: &str) -> u64 {
    let usage: Value = http
        .get(format!("{base}/v1/usage"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    usage["jobs"].as_u64().unwrap_or(0)
}

/// A tenant of the server: its token and an uploaded one-second file.
#[derive(Clone)]
struct Tenant {
    id: String,
    token: String,
    file_id: String,
}

async fn tenant(http: &reqwest::Client, base: &str, name: &str) -> Tenant {
    let signup: Value = http
        .post(format!("{base}/v1/auth/signup"))
        .json(&json!({"tenant": name, "email": format!("{name}@bench.example"), "password": "bench password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signup["token"].as_str().unwrap().to_string();
    let id = signup["tenant"]["id"].as_str().unwrap().to_string();
    let part = reqwest::multipart::Part::bytes(common::tone_wav(1.0, 16000)).file_name("one.wav");
    let file: Value = http
        .post(format!("{base}/v1/files"))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file_id = file["id"].as_str().unwrap().to_string();
    Tenant { id, token, file_id }
}

/// The child process: the service with the trivial engine. Prints its base
/// URL, then serves until its standard input closes (the parent ended) or
/// it reads `tier <tenant id>`, which moves that tenant to enterprise.
async fn serve() {
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = Settings::load(None).unwrap();
    settings.store.data_dir = tmp.path().join("data");
    settings.auth.argon2_memory_kib = 1024;
    settings.auth.argon2_iterations = 1;
    settings.models.fetch_missing = true; // the trivial engine needs no model
    settings.outbound.allowed_hosts = vec!["127.0.0.1".into()];
    // The product's tiers, but enterprise may queue every job the bench
    // sends: the clients submit faster than jobs finish, and the figure
    // wanted is the orchestration's, not the admission cap's.
    let tiers = include_str!("../config/tiers.toml");
    let mut table: toml::Table = tiers.parse().unwrap();
    table["tiers"]["enterprise"]
        .as_table_mut()
        .unwrap()
        .insert("max_queued_jobs".into(), toml::Value::Integer(1_000_000));
    settings.billing.tiers_file = tmp.path().join("tiers.toml").display().to_string();
    std::fs::write(&settings.billing.tiers_file, table.to_string()).unwrap();
    // Two workers sharing one engine, as `serve` shares one per device.
    let engine: Arc<dyn Engine> = Arc::new(TrivialEngine);
    let engines = vec![engine; 2];
    let (state, _root) = murmur::server::start(settings, engines).await.unwrap();
    let store = state.store.clone();
    let hooks_tasks = tokio_util::task::TaskTracker::new();
    murmur::webhooks::spawn(
        store.clone(),
        state.outbound.clone(),
        state.settings.webhooks.clone(),
        &hooks_tasks,
        state.stopping.clone(),
    );
    let (addr, listener) = common::loopback_listener().await;
    tokio::spawn(
        warp::serve(murmur::api::routes(state))
            .incoming(listener)
            .run(),
    );
    println!("http://{addr}");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(id) = line.strip_prefix("tier ") {
            let tenant = murmur::store::TenantId::for_operator(id.trim());
            store.set_tier(&tenant, "enterprise").await.unwrap();
            println!("ok");
        }
    }
}

/// Starts the server process; answers it, its base URL and its commands.
async fn spawn_server() -> (
    tokio::process::Child,
    String,
    tokio::process::ChildStdin,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .arg("--serve")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the server process");
    let stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the server process did not start")
        .unwrap()
        .expect("the server process ended");
    (child, base, stdin, lines)
}

/// Moves `tenant` to enterprise through the server process.
async fn make_enterprise(
    tenant: &Tenant,
    stdin: &mut tokio::process::ChildStdin,
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncWriteExt;
    stdin
        .write_all(format!("tier {}\n", tenant.id).as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ok"));
}

fn main() {
    if std::env::args().any(|a| a == "--serve") {
        tokio::runtime::Runtime::new().unwrap().block_on(serve());
    } else {
        tokio::runtime::Runtime::new().unwrap().block_on(clients());
    }
}

async fn clients() {
    let jobs = arg("--jobs", 1000);
    let subscribers = arg("--subscribers", 500);
    let latency_jobs = arg("--latency-jobs", 200);
    let latency_rate = arg("--latency-rate", 0);
    let webhooks = arg("--webhooks", 0);
    let others = arg("--other-tenants", 0);
    let (child, base, mut stdin, mut lines) = spawn_server().await;
    let server_pid = child.id();
    let http = reqwest::Client::new();
    let bench = tenant(&http, &base, "Bench").await;
    make_enterprise(&bench, &mut stdin, &mut lines).await;
    let mut other_tenants = Vec::new();
    for i in 0..others {
        let t = tenant(&http, &base, &format!("Other{i}")).await;
        make_enterprise(&t, &mut stdin, &mut lines).await;
        other_tenants.push(t);
    }
    let (token, file_id) = (bench.token.clone(), bench.file_id.clone());

    let deliveries = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    if webhooks > 0 {
        use warp::Filter;
        let got = deliveries.clone();
        let receiver = warp::post()
            .and(warp::body::bytes())
            .map(move |body: bytes::Bytes| {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                if let Some(at) = v["timestamp"].as_str() {
                    let at: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
                    let ms =
                        (chrono::Utc::now() - at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                    got.lock().unwrap().push(ms);
                }
                warp::http::StatusCode::NO_CONTENT
            });
        let (rx_addr, rx_listener) = common::loopback_listener().await;
        tokio::spawn(warp::serve(receiver).incoming(rx_listener).run());
        for i in 0..webhooks {
            let res = http
                .post(format!("{base}/v1/webhooks"))
                .bearer_auth(&token)
                .json(&json!({"url": format!("http://{rx_addr}/hook/{i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(
                res.status(),
                201,
                "{}",
                res.text().await.unwrap_or_default()
            );
        }
    }

    // 1. Throughput: submit over HTTP, then wait until the tenant's usage
    // counts every job completed (a WebSocket watcher could lag behind
    // thousands of events; the usage counter cannot).
    let cpu_before = cpu_seconds(server_pid);
    let flushes_before = store_flushes(&http, &base).await;
    let started = Instant::now();
    submit_all(&http, &base, &token, &file_id, jobs).await;
    let accepted = started.elapsed();
    loop {
        let done = completed(&http, &base, &token).await;
        if done >= jobs as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "jobs did not finish: {done} of {jobs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "throughput: {jobs} jobs accepted in {:.2} s ({:.0}/s); accepted, persisted, run and \
         completed in {:.2} s = {:.0} jobs/s{}{}",
        accepted.as_secs_f64(),
        jobs as f64 / accepted.as_secs_f64(),
        elapsed.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64(),
        server_cpu(cpu_before, cpu_seconds(server_pid), elapsed, jobs),
        flushes_line(flushes_before, store_flushes(&http, &base).await, jobs)
    );

    // 2. Event latency with many subscribers (and, with --other-tenants,
    // other tenants' traffic at the same time).
    let mut clients = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        clients.push(ws(&base, &token).await);
    }
    let expected_completed = latency_jobs;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                // By event type, looked up by the borrowed name: no
                // allocation per message on the clients' hot path.
                let mut latencies = std::collections::BTreeMap::<String, Vec<f64>>::new();
                let mut completed = 0;
                let mut lagged = 0;
                let deadline = Instant::now() + Duration::from_secs(120);
                while completed < expected_completed && Instant::now() < deadline {
                    let Ok(Some(Ok(Message::Text(t)))) =
                        tokio::time::timeout(Duration::from_secs(10), c.next()).await
                    else {
                        break;
                    };
                    let now = chrono::Utc::now();
                    // Only the two fields wanted, borrowed: 500 clients
                    // parse every event, on the server's cores.
                    let v: Received = serde_json::from_str(&t).unwrap();
                    if v.kind == "lagged" {
                        lagged += 1;
                    }
                    let Some(at) = v.at else { continue };
                    let at: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
                    let ms = (now - at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                    match latencies.get_mut(v.kind) {
                        Some(kind) => kind.push(ms),
                        None => {
                            latencies.insert(v.kind.to_string(), vec![ms]);
                        }
                    }
                    if v.kind == "completed" {
                        completed += 1;
                    }
                }
                (latencies, completed, lagged)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let noise: Vec<_> = other_tenants
        .iter()
        .map(|t| {
            let (http, base, t) = (http.clone(), base.clone(), t.clone());
            tokio::spawn(async move {
                submit_all(&http, &base, &t.token, &t.file_id, latency_jobs).await
            })
        })
        .collect();
    let cpu_before = cpu_seconds(server_pid);
    let flushes_before = store_flushes(&http, &base).await;
    let clients_before = cpu_seconds(Some(std::process::id()));
    let latency_started = Instant::now();
    submit_at(&http, &base, &token, &file_id, latency_jobs, latency_rate).await;
    let mut all = Vec::<f64>::new();
    let mut by_kind = std::collections::BTreeMap::<String, Vec<f64>>::new();
    let (mut short, mut lagged) = (0, 0);
    for r in readers {
        let (latencies, completed, lags) = r.await.unwrap();
        for (kind, ms) in latencies {
            all.extend(&ms);
            by_kind.entry(kind).or_default().extend(ms);
        }
        short += usize::from(completed < expected_completed);
        lagged += lags;
    }
    let latency_elapsed = latency_started.elapsed();
    let mut latency_cpu = server_cpu(
        cpu_before,
        cpu_seconds(server_pid),
        latency_elapsed,
        latency_jobs * (1 + others),
    );
    latency_cpu += &flushes_line(
        flushes_before,
        store_flushes(&http, &base).await,
        latency_jobs * (1 + others),
    );
    // The subscribers' side of the same cores: when it is near a whole
    // core, the clients' reading is what the latency waits on.
    if let (Some(b), Some(a)) = (clients_before, cpu_seconds(Some(std::process::id()))) {
        latency_cpu += &format!(
            "; clients CPU {:.2} s ({:.2} of a core)",
            a - b,
            (a - b) / latency_elapsed.as_secs_f64()
        );
    }
    for n in noise {
        n.await.unwrap();
    }
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "event latency with {subscribers} subscribers{}{}: {} events received in {:.2} s, \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {short} subscriber(s) missed a completion, \
         {lagged} lag notice(s){latency_cpu}",
        if latency_rate > 0 {
            format!(", {latency_rate} jobs/s")
        } else {
            String::new()
        },
        if others > 0 {
            format!(" ({others} other tenant(s) submitting {latency_jobs} jobs each)")
        } else {
            String::new()
        },
        all.len(),
        latency_elapsed.as_secs_f64(),
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(f64::NAN)
    );
    // Which events are late: the API announces `queued`, the job actors
    // the rest.
    let kinds: Vec<String> = by_kind
        .iter_mut()
        .map(|(kind, ms)| {
            ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
            format!(
                "{kind} p50 {:.1} p99 {:.1}",
                percentile(ms, 0.50),
                percentile(ms, 0.99)
            )
        })
        .collect();
    println!("  by event (ms): {}", kinds.join("; "));

    if webhooks > 0 {
        // Each job announces queued, started and completed.
        let expected = (jobs + latency_jobs) * 3 * webhooks;
        let deadline = Instant::now() + Duration::from_secs(300);
        while deliveries.lock().unwrap().len() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut all = deliveries.lock().unwrap().clone();
        all.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "webhooks: {} of {expected} deliveries to {webhooks} endpoint(s), latency p50 {:.1} ms, \
             p99 {:.1} ms, max {:.1} ms",
            all.len(),
            percentile(&all, 0.50),
            percentile(&all, 0.99),
            all.last().copied().unwrap_or(f64::NAN)
        );
    }
}
