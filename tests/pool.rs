//! The inference pool's supervision, against the real service running in
//! this process (store on disk, actor tree, HTTP on loopback) with test
//! engines in place of the models: a worker that panics is replaced and its
//! job retried; a worker stuck past its deadline is abandoned and replaced;
//! waiting work is shared by tier weight, so an enterprise job waiting
//! beside a basic tenant's second job runs first (the fair queue's
//! proportions themselves are unit-tested in `actors/src/pool/fair_queue.rs`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{signup, tone_wav, wait_job, Client, Tenant};
use murmur::config::Settings;
use murmur_actors::job::JobStage;
use murmur_actors::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use serde_json::json;

fn output() -> WorkOutput {
    WorkOutput {
        result: json!({"language": "en", "duration_s": 1.0, "text": "ok", "segments": []}),
        audio_seconds: 1.0,
    }
}

/// Serves the real API in this process with `engines`; answers a stand-in
/// for [`common::Server`] (base URL, data dir) and the shared state.
async fn serve(
    engines: Vec<Arc<dyn Engine>>,
    tweak: impl FnOnce(&mut Settings),
) -> (common::InProcess, murmur::api::AppState) {
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = Settings::load(None).unwrap();
    settings.store.data_dir = tmp.path().join("data");
    settings.auth.argon2_memory_kib = 1024;
    settings.auth.argon2_iterations = 1;
    settings.models.fetch_missing = true;
    settings.jobs.backoff_base = Duration::from_millis(100);
    tweak(&mut settings);
    let (state, _root) = murmur::server::start(settings, engines).await.unwrap();
    let (addr, listener) = common::loopback_listener().await;
    tokio::spawn(
        warp::serve(murmur::api::routes(state.clone()))
            .incoming(listener)
            .run(),
    );
    (
        common::InProcess {
            base: format!("http://{addr}"),
            _tmp: tmp,
        },
        state,
    )
}

async fn job_on_new_file(c: &Client) -> String {
    let f = c.upload("a.wav", tone_wav(1.0, 16000)).await.expect(201);
    c.post(
        "/v1/jobs",
        json!({"file_id": f["id"], "params": {"model": "base"}}),
    )
    .await
    .expect(202)["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn event_types(c: &Client, job: &str) -> Vec<String> {
    let log = c.get(&format!("/v1/jobs/{job}/events")).await.expect(200);
    log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

/// Panics on its first run, works after.
struct PanicsOnce(AtomicBool);

impl Engine for PanicsOnce {
    fn run(
        &self,
        _r: &WorkRequest,
        sink: &mut dyn WorkSink,
        _c: &AtomicBool,
    ) -> Result<WorkOutput, WorkError> {
        sink.stage(JobStage::Transcribe);
        if !self.0.swap(true, Ordering::SeqCst) {
            panic!("engine bug on purpose");
        }
        Ok(output())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_is_replaced_and_its_job_retried() {
    let engine: Arc<dyn Engine> = Arc::new(PanicsOnce(AtomicBool::new(false)));
    let (server, _state) = serve(vec![engine], |_| {}).await;
    let a = signup(&server, "Acme").await;
    let job = job_on_new_file(&a.client).await;
    let done = wait_job(&a.client, &job, 30).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempts"], 2);
    let kinds = event_types(&a.client, &job).await;
    assert!(kinds.contains(&"retrying".to_string()), "{kinds:?}");
    // The replacement worker keeps serving.
    let next = job_on_new_file(&a.client).await;
    assert_eq!(wait_job(&a.client, &next, 30).await["attempts"], 1);
}

/// Hangs (ignoring nothing but cancel) on its first run, works after.
struct StuckOnce(AtomicBool);

impl Engine for StuckOnce {
    fn run(
        &self,
        _r: &WorkRequest,
        _s: &mut dyn WorkSink,
        cancel: &AtomicBool,
    ) -> Result<WorkOutput, WorkError> {
        if !self.0.swap(true, Ordering::SeqCst) {
            while !cancel.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            return Err(WorkError::Cancelled);
        }
        Ok(output())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_worker_is_abandoned_and_replaced() {
    let engine: Arc<dyn Engine> = Arc::new(StuckOnce(AtomicBool::new(false)));
    let (server, _state) = serve(vec![engine], |s| {
        s.jobs.deadline_base = Duration::from_millis(500);
        s.jobs.deadline_per_audio_second = 0.0;
    })
    .await;
    let a = signup(&server, "Acme").await;
    let job = job_on_new_file(&a.client).await;
    let done = wait_job(&a.client, &job, 30).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["attempts"], 2,
        "retried after the watchdog gave up on the first run"
    );
    let kinds = event_types(&a.client, &job).await;
    assert!(
        !kinds.contains(&"cancelled".to_string()),
        "a watchdog is not a user cancel: {kinds:?}"
    );
}

/// Blocks the first job until released; records the order jobs start in.
struct Gate {
    open: AtomicBool,
    started: AtomicUsize,
    order: Mutex<Vec<String>>,
}

impl Engine for Gate {
    fn run(
        &self,
        r: &WorkRequest,
        _s: &mut dyn WorkSink,
        _c: &AtomicBool,
    ) -> Result<WorkOutput, WorkError> {
        self.order.lock().unwrap().push(r.tenant_id.clone());
        if self.started.fetch_add(1, Ordering::SeqCst) == 0 {
            while !self.open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(output())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_work_runs_highest_tier_first() {
    let gate = Arc::new(Gate {
        open: AtomicBool::new(false),
        started: AtomicUsize::new(0),
        order: Mutex::new(Vec::new()),
    });
    let engine: Arc<dyn Engine> = gate.clone();
    let (server, state) = serve(vec![engine], |_| {}).await;
    let blocker = signup(&server, "Blocker").await;
    let basic = signup(&server, "Basic").await;
    let enterprise = signup(&server, "Enterprise").await;
    set_tier(&state, &enterprise, "enterprise").await;
    // The only worker is busy with the blocker's job...
    let first = job_on_new_file(&blocker.client).await;
    while gate.started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...while a basic job, then an enterprise job, wait for it.
    let b = job_on_new_file(&basic.client).await;
    let e = job_on_new_file(&enterprise.client).await;
    for (c, j) in [(&basic.client, &b), (&enterprise.client, &e)] {
        // Both are running (their actors started) and waiting in the pool.
        loop {
            if c.get(&format!("/v1/jobs/{j}")).await.expect(200)["status"] == "running" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // "running" is written just before the job actor reads the file and
    // the tier and hands the job to the pool: give both hand-overs time to
    // land in the pool's queue (the pool's queue is not observable from
    // here; its gauge is shared with the other tests of this process).
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.open.store(true, Ordering::SeqCst);
    for (c, j) in [
        (&blocker.client, &first),
        (&basic.client, &b),
        (&enterprise.client, &e),
    ] {
        assert_eq!(wait_job(c, j, 30).await["status"], "completed");
    }
    let order = gate.order.lock().unwrap().clone();
    assert_eq!(
        order,
        vec![blocker.id.clone(), enterprise.id.clone(), basic.id.clone()]
    );
}

async fn set_tier(state: &murmur::api::AppState, t: &Tenant, tier: &str) {
    let id = murmur::store::TenantId::for_operator(&t.id);
    state.store.set_tier(&id, tier).await.unwrap();
}
