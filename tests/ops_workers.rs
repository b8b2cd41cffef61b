//! The operator's view of the inference workers, against the real binary
//! with real audio and weights (tiny.en): `GET /v1/ops/workers` is
//! invisible (404) without the operator token from `operator.json`, to
//! tenants too; the operator sees the worker idle, then busy on a tenant's
//! job with another request waiting in its tier, then idle with its job and
//! audio counts advanced; the same figures in the per-worker Prometheus
//! series and in `murmur admin workers`.

mod common;

use std::time::{Duration, Instant};

use common::{signup, wait_job, Base, Server};
use serde_json::{json, Value};

/// The value of the one series named `name` whose labels include every
/// one of `labels` (`worker="0"`), from Prometheus text.
fn series(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics_text(server: &Server) -> String {
    server.client().get("/metrics").await.text
}

#[tokio::test]
async fn operator_sees_workers_busy_waiting_and_counted_tenants_never() {
    common::install_models(&["tiny.en", "silero-vad"]);
    let server = Server::start_with(&[("MURMUR__MODELS__WORKERS", "1")]);
    let op = server.operator();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Bolt").await;
    server.set_tier(&a.id, "premium");

    // Invisible to anyone but the operator: no token, a wrong one, and
    // both tenants' tokens get the 404 of a route that does not exist.
    server
        .client()
        .get("/v1/ops/workers")
        .await
        .problem(404, "not_found");
    server
        .client()
        .with_token("not-the-operator-token")
        .get("/v1/ops/workers")
        .await
        .problem(404, "not_found");
    a.client
        .get("/v1/ops/workers")
        .await
        .problem(404, "not_found");
    b.client
        .get("/v1/ops/workers")
        .await
        .problem(404, "not_found");

    // Idle at start, nothing counted, nothing waiting.
    let view = op.get("/v1/ops/workers").await.expect(200);
    let workers = view["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{view}");
    assert_eq!(workers[0]["index"], 0);
    assert_eq!(workers[0]["node"], "local");
    assert_eq!(workers[0]["device"], "cpu");
    assert_eq!(workers[0]["compute_type"], "int8");
    assert_eq!(
        workers[0]["models"],
        json!([]),
        "nothing loaded yet: {view}"
    );
    assert_eq!(workers[0]["state"], "idle");
    assert!(workers[0]["job"].is_null(), "{view}");
    assert_eq!(workers[0]["jobs_completed"], 0);
    assert_eq!(workers[0]["audio_seconds"], 0.0);
    assert_eq!(view["waiting"], json!({}));
    let m = metrics_text(&server).await;
    let w0 = ["worker=\"0\"", "device=\"cpu\""];
    assert_eq!(series(&m, "murmur_worker_busy", &w0), Some(0.0), "{m}");
    assert_eq!(
        series(&m, "murmur_worker_jobs_total", &w0),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        series(&m, "murmur_worker_audio_seconds_total", &w0),
        Some(0.0),
        "{m}"
    );

    // Two jobs of tenant A on one worker: one runs, the other waits in the
    // premium tier's class.
    let (wav, seconds) = common::jfk_repeated(5);
    let fid = a.client.upload("jfk5.wav", wav).await.expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let params = json!({"model": "tiny.en", "vad": {"enabled": false}});
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let job = a
            .client
            .post("/v1/jobs", json!({"file_id": fid, "params": params}))
            .await
            .expect(202);
        jobs.push(job["id"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let busy = loop {
        let view = op.get("/v1/ops/workers").await.expect(200);
        let w = &view["workers"][0];
        if w["state"] == "busy" && w["job"]["stage"].is_string() && view["waiting"]["premium"] == 1
        {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "never busy with one waiting: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let running = &busy["workers"][0]["job"];
    assert!(jobs.iter().any(|j| running["job_id"] == *j), "{busy}");
    assert_eq!(running["tenant_id"], a.id);
    assert!(
        ["decode", "transcribe", "format"].contains(&running["stage"].as_str().unwrap()),
        "{busy}"
    );
    let since = chrono::DateTime::parse_from_rfc3339(running["since"].as_str().unwrap())
        .expect("since is an RFC 3339 time");
    let age = chrono::Utc::now().signed_duration_since(since);
    assert!(age.num_seconds() >= 0 && age.num_seconds() < 120, "{busy}");
    let m = metrics_text(&server).await;
    assert_eq!(series(&m, "murmur_worker_busy", &w0), Some(1.0), "{m}");
    assert_eq!(
        series(&m, "murmur_pool_waiting", &["tier=\"premium\""]),
        Some(1.0),
        "{m}"
    );
    // Tenant B, while A's work runs, still sees no such route.
    b.client
        .get("/v1/ops/workers")
        .await
        .problem(404, "not_found");

    for j in &jobs {
        let job = wait_job(&a.client, j, 300).await;
        assert_eq!(job["status"], "completed", "{job}");
    }
    // The worker's Idle reaches the pool just after the job's end is
    // durable: poll briefly for the counts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let view = op.get("/v1/ops/workers").await.expect(200);
        if view["workers"][0]["jobs_completed"] == 2 && view["workers"][0]["state"] == "idle" {
            break view;
        }
        assert!(Instant::now() < deadline, "counts never advanced: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let w = &done["workers"][0];
    assert!(w["job"].is_null(), "{done}");
    let audio = w["audio_seconds"].as_f64().unwrap();
    assert!(
        (audio - 2.0 * seconds).abs() < 1.0,
        "{audio} s counted for two jobs of {seconds} s"
    );
    assert_eq!(done["waiting"], json!({"premium": 0}));
    let m = metrics_text(&server).await;
    assert_eq!(series(&m, "murmur_worker_busy", &w0), Some(0.0), "{m}");
    assert_eq!(
        series(&m, "murmur_worker_jobs_total", &w0),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        series(&m, "murmur_worker_audio_seconds_total", &w0),
        Some(audio.round()),
        "{m}"
    );
    assert_eq!(
        series(&m, "murmur_pool_waiting", &["tier=\"premium\""]),
        Some(0.0),
        "{m}"
    );

    // The command line asks the same server, as its operator.
    let (ok, out) = server.admin(&["workers"], &[]);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with('0'))
        .unwrap_or_else(|| panic!("no worker line: {out}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &cols[..6],
        &["0", "local", "cpu", "int8", "idle", "2"],
        "{out}"
    );
    // The jobs loaded their models, which the worker now holds.
    let models: Vec<&str> = cols[7].split(',').collect();
    assert!(models.contains(&"tiny.en"), "{out}");
    assert!(out.contains("waiting: premium 0"), "{out}");
    let (ok, out) = server.admin(&["workers", "--json"], &[]);
    assert!(ok, "{out}");
    let view: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(view["workers"][0]["jobs_completed"], 2);

    // Stopped: there are no workers to show, and the command says so.
    let mut server = server;
    server.terminate();
    let (ok, out) = server.admin(&["workers"], &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("no server runs"), "{out}");
}
