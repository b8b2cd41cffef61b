//! Tiers, gates, usage metering, RevenueCat and the operator's set-tier,
//! over real HTTP against the real binary.

mod common;

use std::time::Duration;

use common::revenuecat::{now_ms, rc_event, webhook, SECRET};
use common::{files_under, signup, tone_wav, Base, Server};
use serde_json::{json, Value};

/// The test tier table with translation limits small enough to cross: 3 s
/// files and 2 translation jobs a month on basic.
fn tiers_file(dir: &tempfile::TempDir) -> String {
    let text = common::TEST_TIERS
        .replace(
            "translation_max_file_seconds = 600",
            "translation_max_file_seconds = 3",
        )
        .replace(
            "translation_jobs_per_month = 20",
            "translation_jobs_per_month = 2",
        );
    let path = dir.path().join("tiers.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A server with the webhook secret set and the billing tier table.
fn start(extra: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tiers = tiers_file(&dir);
    let mut env = vec![
        ("MURMUR__BILLING__TIERS_FILE", tiers.as_str()),
        ("MURMUR__BILLING__REVENUECAT__WEBHOOK_SECRET", SECRET),
    ];
    env.extend_from_slice(extra);
    (Server::start_with(&env), dir)
}

/// A valid WAV of exactly `len` bytes (a tone, truncated, header fixed).
fn wav_of_len(len: usize) -> Vec<u8> {
    let mut wav = tone_wav(15.0, 16000);
    wav.truncate(len);
    // Whole 16-bit samples only (a byte over is refused before decoding).
    let data = ((wav.len() - 44) & !1) as u32;
    wav[40..44].copy_from_slice(&data.to_le_bytes());
    wav[4..8].copy_from_slice(&(data + 36).to_le_bytes());
    wav
}

async fn cancel(c: &common::Client, job: &Value) {
    let id = job["id"].as_str().unwrap();
    let _ = c.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
}

#[tokio::test]
async fn file_size_and_storage_gates() {
    let (server, _dir) = start(&[]);
    let a = signup(&server, "Acme").await;
    // basic: 400000 bytes per file, 1000000 stored.
    let at = a
        .client
        .upload("at.wav", wav_of_len(400_000))
        .await
        .expect(201);
    assert_eq!(at["size"], 400_000);
    a.client
        .upload("over.wav", wav_of_len(400_001))
        .await
        .problem(413, "payload_too_large");
    assert_eq!(
        a.client.get("/v1/files").await.expect(200)["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        files_under(&server.data_dir.join("files")).len(),
        1,
        "nothing stored"
    );
    let usage = a.client.get("/v1/usage").await.expect(200);
    assert_eq!(usage["storage_bytes"], 400_000);

    // Storage: 400000 + 400000 fit, 200001 more does not, 200000 does.
    a.client
        .upload("2.wav", wav_of_len(400_000))
        .await
        .expect(201);
    a.client
        .upload("3.wav", wav_of_len(200_001))
        .await
        .problem(403, "quota_exceeded");
    let third = a
        .client
        .upload("3.wav", wav_of_len(200_000))
        .await
        .expect(201);
    a.client
        .upload("4.wav", wav_of_len(1_000))
        .await
        .problem(403, "quota_exceeded");
    // Deleting frees the quota.
    a.client
        .delete(&format!("/v1/files/{}", third["id"].as_str().unwrap()))
        .await
        .expect(204);
    assert_eq!(
        a.client.get("/v1/usage").await.expect(200)["storage_bytes"],
        800_000
    );
    a.client
        .upload("4.wav", wav_of_len(1_000))
        .await
        .expect(201);

    // Premium (2000000 bytes a file): the same 400001 bytes now fit.
    webhook(
        &server,
        Some(SECRET),
        rc_event(
            "e-size",
            "INITIAL_PURCHASE",
            &a.id,
            "premium",
            now_ms(),
            Some(now_ms() + 3_600_000),
        ),
    )
    .await
    .expect(200);
    a.client
        .upload("big.wav", wav_of_len(400_002))
        .await
        .expect(201);
}

#[tokio::test]
async fn model_feature_translation_and_workflow_gates() {
    common::install_models(&[
        "tiny.en",
        "base",
        "silero-vad",
        "diarization",
        "spleeter-2stems",
    ]);
    let (server, _dir) = start(&[]);
    let a = signup(&server, "Acme").await;
    let c = &a.client;
    let short = c.upload("short.wav", tone_wav(3.0, 8000)).await.expect(201);
    let long = c.upload("long.wav", tone_wav(3.5, 8000)).await.expect(201);
    let (sid, lid) = (short["id"].clone(), long["id"].clone());

    // Models: tiny/base families yes, small no.
    let ok = c
        .post(
            "/v1/jobs",
            json!({"file_id": sid, "params": {"model": "tiny.en"}}),
        )
        .await
        .expect(202);
    cancel(c, &ok).await;
    c.post(
        "/v1/jobs",
        json!({"file_id": sid, "params": {"model": "small"}}),
    )
    .await
    .problem(403, "model_not_in_tier");
    c.post(
        "/v1/jobs",
        json!({"file_id": sid, "params": {"model": "small.en"}}),
    )
    .await
    .problem(403, "model_not_in_tier");
    // Diarization and BGM separation: not on basic.
    c.post(
        "/v1/jobs",
        json!({"file_id": sid, "params": {"diarize": {"enabled": true}}}),
    )
    .await
    .problem(403, "feature_not_in_tier");
    c.post(
        "/v1/jobs",
        json!({"file_id": sid, "params": {"separate_bgm": {"enabled": true}}}),
    )
    .await
    .problem(403, "feature_not_in_tier");
    c.post(
        "/v1/jobs",
        json!({"file_id": sid, "params": {"job_type": "bgm_separation"}}),
    )
    .await
    .problem(403, "feature_not_in_tier");

    // Limited translation: files of at most 3 s, 2 jobs a month.
    let translate = json!({"task": "translate", "model": "base"});
    let long_tr = c
        .post("/v1/jobs", json!({"file_id": lid, "params": translate}))
        .await;
    assert!(long_tr.text.contains("3 s"), "{}", long_tr.text);
    long_tr.problem(403, "feature_not_in_tier");
    for _ in 0..2 {
        let j = c
            .post("/v1/jobs", json!({"file_id": sid, "params": translate}))
            .await
            .expect(202);
        cancel(c, &j).await;
    }
    let third = c
        .post("/v1/jobs", json!({"file_id": sid, "params": translate}))
        .await;
    assert!(third.text.contains("2 translation jobs"), "{}", third.text);
    third.problem(403, "quota_exceeded");
    assert_eq!(c.get("/v1/usage").await.expect(200)["translation_jobs"], 2);
    // Transcribing is not translating: still allowed.
    let j = c
        .post("/v1/jobs", json!({"file_id": sid}))
        .await
        .expect(202);
    cancel(c, &j).await;

    // Workflows: 2 on basic; deleting one makes room.
    let w1 = c
        .post("/v1/workflows", json!({"name": "one"}))
        .await
        .expect(201);
    c.post("/v1/workflows", json!({"name": "two"}))
        .await
        .expect(201);
    c.post("/v1/workflows", json!({"name": "three"}))
        .await
        .problem(403, "quota_exceeded");
    c.delete(&format!("/v1/workflows/{}", w1["id"].as_str().unwrap()))
        .await
        .expect(204);
    c.post("/v1/workflows", json!({"name": "three"}))
        .await
        .expect(201);
    c.post(
        "/v1/workflows",
        json!({"name": "diarized", "params": {"diarize": {"enabled": true}}}),
    )
    .await
    .problem(403, "feature_not_in_tier");

    // Premium, same token: every feature above, no translation limits.
    let t0 = now_ms();
    webhook(
        &server,
        Some(SECRET),
        rc_event(
            "e-up",
            "INITIAL_PURCHASE",
            &a.id,
            "premium",
            t0,
            Some(t0 + 3_600_000),
        ),
    )
    .await
    .expect(200);
    for params in [
        json!({"diarize": {"enabled": true}}),
        json!({"job_type": "bgm_separation"}),
        translate.clone(),
    ] {
        let j = c
            .post("/v1/jobs", json!({"file_id": lid, "params": params}))
            .await
            .expect(202);
        cancel(c, &j).await;
    }
    c.post(
        "/v1/jobs",
        json!({"file_id": sid, "params": {"model": "large-v3"}}),
    )
    .await
    .problem(403, "model_not_in_tier");
    let saved = c
        .post(
            "/v1/workflows",
            json!({"name": "diarized", "params": {"diarize": {"enabled": true}, "model": "small"}}),
        )
        .await
        .expect(201);

    // Back to basic: the workflow saved on premium is refused when run,
    // with the same codes (the model first, then the feature).
    webhook(
        &server,
        Some(SECRET),
        rc_event("e-down", "EXPIRATION", &a.id, "premium", t0 + 1, None),
    )
    .await
    .expect(200);
    c.post(
        "/v1/jobs",
        json!({"file_id": sid, "workflow_id": saved["id"]}),
    )
    .await
    .problem(403, "model_not_in_tier");
    c.post(
        "/v1/jobs",
        json!({"file_id": sid, "workflow_id": saved["id"], "params": {"model": "base"}}),
    )
    .await
    .problem(403, "feature_not_in_tier");
}

#[tokio::test]
async fn revenuecat_webhook_drives_the_tier_for_existing_tokens() {
    common::install_models(&["base", "silero-vad", "diarization"]);
    let (server, _dir) = start(&[]);
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;
    let f = a
        .client
        .upload("a.wav", tone_wav(1.0, 8000))
        .await
        .expect(201);
    let diarize = json!({"file_id": f["id"], "params": {"diarize": {"enabled": true}}});
    a.client
        .post("/v1/jobs", diarize.clone())
        .await
        .problem(403, "feature_not_in_tier");

    // Wrong or missing secret: 401, nothing recorded or changed.
    let t0 = now_ms();
    let purchase = rc_event(
        "evt-1",
        "INITIAL_PURCHASE",
        &a.id,
        "premium",
        t0,
        Some(t0 + 3_600_000),
    );
    webhook(&server, Some("Bearer wrong"), purchase.clone())
        .await
        .problem(401, "unauthorized");
    webhook(&server, None, purchase.clone())
        .await
        .problem(401, "unauthorized");
    assert_eq!(
        a.client.get("/v1/subscription").await.expect(200)["tier"],
        "basic"
    );

    // INITIAL_PURCHASE with the premium entitlement: the same token now
    // may diarize.
    let ack = webhook(&server, Some(SECRET), purchase.clone())
        .await
        .expect(200);
    assert_eq!(ack["outcome"], "applied");
    let sub = a.client.get("/v1/subscription").await.expect(200);
    assert_eq!(sub["tier"], "premium");
    assert_eq!(sub["limits"]["diarization"], true);
    assert_eq!(sub["subscription"]["entitlement"], "premium");
    assert_eq!(sub["subscription"]["will_renew"], true);
    let epoch = sub["tier_epoch"].clone();
    let job = a.client.post("/v1/jobs", diarize.clone()).await.expect(202);
    cancel(&a.client, &job).await;

    // The same event again: acknowledged, nothing changes.
    let again = webhook(&server, Some(SECRET), purchase.clone())
        .await
        .expect(200);
    assert_eq!(again["status"], "duplicate");
    // An older event arriving after the newer one: nothing changes.
    let stale = webhook(
        &server,
        Some(SECRET),
        rc_event("evt-0", "EXPIRATION", &a.id, "premium", t0 - 60_000, None),
    )
    .await
    .expect(200);
    assert_eq!(stale["outcome"], "stale");
    // Sandbox events are ignored (not allowed by config).
    let mut sandbox = rc_event("evt-sb", "EXPIRATION", &a.id, "premium", t0 + 5, None);
    sandbox["environment"] = json!("SANDBOX");
    assert_eq!(
        webhook(&server, Some(SECRET), sandbox).await.expect(200)["outcome"],
        "sandbox_ignored"
    );
    // TEST events and unknown users are acknowledged.
    let mut test = rc_event("evt-test", "TEST", "nobody", "premium", t0, None);
    test["app_user_id"] = json!("$RCAnonymousID:123");
    assert_eq!(
        webhook(&server, Some(SECRET), test).await.expect(200)["outcome"],
        "test"
    );
    assert_eq!(
        webhook(
            &server,
            Some(SECRET),
            rc_event("evt-x", "RENEWAL", "t_nobody", "premium", t0, None)
        )
        .await
        .expect(200)["outcome"],
        "unknown_user"
    );
    let same = a.client.get("/v1/subscription").await.expect(200);
    assert_eq!(same["tier"], "premium");
    assert_eq!(
        same["tier_epoch"], epoch,
        "no tier change since the purchase"
    );

    // A tenant's own token is no webhook secret: B cannot move A (or
    // itself).
    let b_bearer = format!("Bearer {}", b.client.token.as_deref().unwrap());
    let mut forged = rc_event("evt-b", "EXPIRATION", &a.id, "premium", t0 + 7, None);
    webhook(&server, Some(&b_bearer), forged.clone())
        .await
        .problem(401, "unauthorized");
    forged["app_user_id"] = json!(b.id);
    forged["type"] = json!("INITIAL_PURCHASE");
    webhook(&server, Some(&b_bearer), forged)
        .await
        .problem(401, "unauthorized");
    // Tenant B sees none of it, and still has basic.
    let bs = b.client.get("/v1/subscription").await.expect(200);
    assert_eq!(bs["tier"], "basic");
    assert!(bs["subscription"]["entitlement"].is_null());
    assert_eq!(
        b.client.get("/v1/usage").await.expect(200)["storage_bytes"],
        0
    );

    // CANCELLATION keeps the tier until expiry; BILLING_ISSUE keeps it too.
    let mut cancel_ev = rc_event(
        "evt-2",
        "CANCELLATION",
        &a.id,
        "premium",
        t0 + 10,
        Some(t0 + 3_600_000),
    );
    cancel_ev["cancel_reason"] = json!("UNSUBSCRIBE");
    webhook(&server, Some(SECRET), cancel_ev).await.expect(200);
    let sub = a.client.get("/v1/subscription").await.expect(200);
    assert_eq!(sub["tier"], "premium");
    assert_eq!(sub["subscription"]["will_renew"], false);
    assert_eq!(sub["subscription"]["cancel_reason"], "UNSUBSCRIBE");
    webhook(
        &server,
        Some(SECRET),
        rc_event(
            "evt-3",
            "BILLING_ISSUE",
            &a.id,
            "premium",
            t0 + 20,
            Some(t0 + 3_600_000),
        ),
    )
    .await
    .expect(200);
    assert_eq!(
        a.client.get("/v1/subscription").await.expect(200)["tier"],
        "premium"
    );

    // Durable: a crash right after changes nothing.
    let server = server.restart_after_kill9();
    let a_client = server
        .client()
        .with_token(a.client.token.as_deref().unwrap());
    assert_eq!(
        a_client.get("/v1/subscription").await.expect(200)["tier"],
        "premium"
    );
    assert_eq!(
        webhook(&server, Some(SECRET), purchase).await.expect(200)["status"],
        "duplicate"
    );

    // EXPIRATION: back to basic, the same token refused again.
    let mut exp = rc_event("evt-4", "EXPIRATION", &a.id, "premium", t0 + 30, None);
    exp["expiration_reason"] = json!("UNSUBSCRIBE");
    webhook(&server, Some(SECRET), exp).await.expect(200);
    a_client
        .post("/v1/jobs", diarize)
        .await
        .problem(403, "feature_not_in_tier");
    let sub = a_client.get("/v1/subscription").await.expect(200);
    assert_eq!(sub["tier"], "basic");
    assert_eq!(sub["subscription"]["expiration_reason"], "UNSUBSCRIBE");
}

#[tokio::test]
async fn a_paid_tier_ends_at_its_expiry_without_an_event() {
    let (server, _dir) = start(&[]);
    let a = signup(&server, "Acme").await;
    let t0 = now_ms();
    webhook(
        &server,
        Some(SECRET),
        rc_event(
            "evt-short",
            "NON_RENEWING_PURCHASE",
            &a.id,
            "enterprise",
            t0,
            Some(t0 + 1_500),
        ),
    )
    .await
    .expect(200);
    assert_eq!(
        a.client.get("/v1/me").await.expect(200)["tier"],
        "enterprise"
    );
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(a.client.get("/v1/me").await.expect(200)["tier"], "basic");
    // The downgrade is also written (behind the request).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sub = a.client.get("/v1/subscription").await.expect(200);
    assert_eq!(sub["tier"], "basic");
    assert!(sub["subscription"]["expires_at"].is_null());
}

#[tokio::test]
async fn usage_equals_the_audio_processed() {
    common::install_models(&["silero-vad"]);
    let (server, _dir) = start(&[]);
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;
    let mut expected = 0.0;
    let mut stored = 0;
    let mut jobs = Vec::new();
    for secs in [1.0, 2.5, 4.0] {
        let f = a
            .client
            .upload("t.wav", tone_wav(secs, 16000))
            .await
            .expect(201);
        expected += f["duration_s"].as_f64().unwrap();
        stored += f["size"].as_u64().unwrap();
        let j = a
            .client
            .post(
                "/v1/jobs",
                json!({"file_id": f["id"], "params": {"job_type": "vad"}}),
            )
            .await
            .expect(202);
        jobs.push(j["id"].as_str().unwrap().to_string());
    }
    for id in &jobs {
        let done = common::wait_job(&a.client, id, 120).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    let usage = a.client.get("/v1/usage").await.expect(200);
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    assert_eq!(usage["period"], period.as_str());
    let seconds = usage["audio_seconds"].as_f64().unwrap();
    assert!((seconds - expected).abs() < 1e-6, "{seconds} vs {expected}");
    assert!((expected - 7.5).abs() < 0.01);
    assert_eq!(usage["jobs"], 3);
    assert_eq!(usage["jobs_by_kind"]["vad"], 3);
    assert_eq!(usage["translation_jobs"], 0);
    assert_eq!(usage["storage_bytes"], stored);
    let sub = a.client.get("/v1/subscription").await.expect(200);
    assert_eq!(sub["usage"], usage);
    assert_eq!(sub["limits"]["storage_bytes"], 1_000_000);
    // Another month has nothing; a malformed period is refused.
    let past = a.client.get("/v1/usage?period=2001-01").await.expect(200);
    assert_eq!(past["audio_seconds"], 0.0);
    a.client
        .get("/v1/usage?period=2001-13")
        .await
        .problem(400, "invalid_request");
    // Tenant B sees only its own (empty) usage.
    let other = b.client.get("/v1/usage").await.expect(200);
    assert_eq!(other["audio_seconds"], 0.0);
    assert_eq!(other["jobs"], 0);
    assert_eq!(other["storage_bytes"], 0);
    server
        .client()
        .get("/v1/usage")
        .await
        .problem(401, "unauthorized");
    // Survives a crash.
    let server = server.restart_after_kill9();
    let again = server
        .client()
        .with_token(a.client.token.as_deref().unwrap())
        .get("/v1/usage")
        .await
        .expect(200);
    assert_eq!(again, usage);
}

#[tokio::test]
async fn metrics_are_labelled_by_tier_not_tenant() {
    common::install_models(&["silero-vad"]);
    let (server, _dir) = start(&[]);
    let a = signup(&server, "Acme").await;
    let f = a
        .client
        .upload("t.wav", tone_wav(1.0, 16000))
        .await
        .expect(201);
    let j = a
        .client
        .post(
            "/v1/jobs",
            json!({"file_id": f["id"], "params": {"job_type": "vad"}}),
        )
        .await
        .expect(202);
    common::wait_job(&a.client, j["id"].as_str().unwrap(), 120).await;
    let t0 = now_ms();
    webhook(
        &server,
        Some(SECRET),
        rc_event(
            "evt-m",
            "INITIAL_PURCHASE",
            &a.id,
            "premium",
            t0,
            Some(t0 + 3_600_000),
        ),
    )
    .await
    .expect(200);
    let text = server.client().get("/metrics").await.text;
    assert!(
        text.contains("murmur_usage_jobs_completed_total{tier=\"basic\",kind=\"vad\"}")
            || text.contains("murmur_usage_jobs_completed_total{kind=\"vad\",tier=\"basic\"}"),
        "{text}"
    );
    assert!(text.contains("murmur_usage_audio_milliseconds_total"));
    assert!(text.contains("murmur_tier_changes_total"));
    assert!(text.contains("murmur_revenuecat_events_total"));
    assert!(!text.contains(&a.id), "no tenant id in metrics");
}

/// A stand-in for RevenueCat's REST API on a loopback port: answers
/// `GET /v1/subscribers/{id}` with the documented shape, for the expected
/// bearer key only, and counts the calls.
async fn revenuecat_stand_in(
    tier_entitlement: &'static str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let (route, calls) = revenuecat_route(tier_entitlement);
    let (addr, listener) = common::loopback_listener().await;
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (addr, calls)
}

/// RevenueCat's `GET /v1/subscribers/{id}` as the stand-ins answer it, and
/// its call counter.
fn revenuecat_route(
    tier_entitlement: &'static str,
) -> (
    impl warp::Filter<Extract = (impl warp::Reply,), Error = warp::Rejection>
        + Clone
        + Send
        + Sync
        + 'static,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use warp::Filter;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let route = warp::path!("v1" / "subscribers" / String)
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .map(move |user: String, auth: Option<String>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if auth.as_deref() != Some("Bearer sk_test_rest") {
                return warp::reply::with_status(
                    warp::reply::json(&json!({"code": 7225, "message": "Invalid API key"})),
                    warp::http::StatusCode::UNAUTHORIZED,
                );
            }
            let now = now_ms();
            let future = "2999-01-01T00:00:00Z";
            let body = json!({
                "request_date": "2026-01-01T00:00:00Z",
                "request_date_ms": now,
                "subscriber": {
                    "original_app_user_id": user,
                    "first_seen": "2026-01-01T00:00:00Z",
                    "management_url": null,
                    "entitlements": {
                        tier_entitlement: {
                            "expires_date": future,
                            "grace_period_expires_date": null,
                            "product_identifier": "murmur_yearly",
                            "purchase_date": "2026-01-01T00:00:00Z"
                        },
                        "old_premium": {
                            "expires_date": "2001-01-01T00:00:00Z",
                            "grace_period_expires_date": null,
                            "product_identifier": "murmur_monthly",
                            "purchase_date": "2000-12-01T00:00:00Z"
                        }
                    },
                    "subscriptions": {
                        "murmur_yearly": {
                            "expires_date": future,
                            "purchase_date": "2026-01-01T00:00:00Z",
                            "original_purchase_date": "2026-01-01T00:00:00Z",
                            "period_type": "normal",
                            "store": "app_store",
                            "is_sandbox": false,
                            "unsubscribe_detected_at": null,
                            "billing_issues_detected_at": null
                        }
                    },
                    "non_subscriptions": {}
                }
            });
            warp::reply::with_status(warp::reply::json(&body), warp::http::StatusCode::OK)
        });
    (route, calls)
}

/// RevenueCat's REST API over HTTPS, as the real one is: the sync reaches
/// it when the server trusts the stand-in's certificate authority (made
/// for this test), and does not when it does not.
#[tokio::test]
async fn revenuecat_rest_sync_speaks_https_and_checks_certificates() {
    let (route, calls) = revenuecat_route("enterprise");
    let https = common::tls::serve_https(route).await;
    let base = https.base();
    let [(ca_key, ca), (hosts_key, hosts)] = https.trust_env();
    let rest = [
        ("MURMUR__BILLING__REVENUECAT__REST_SYNC", "true"),
        ("MURMUR__BILLING__REVENUECAT__REST_BASE_URL", base.as_str()),
        ("MURMUR__BILLING__REVENUECAT__REST_API_KEY", "sk_test_rest"),
        (hosts_key, hosts.as_str()),
    ];
    let purchase = |a: &common::Tenant, id: &'static str| {
        let t0 = now_ms();
        rc_event(
            id,
            "INITIAL_PURCHASE",
            &a.id,
            "premium",
            t0,
            Some(t0 + 3_600_000),
        )
    };
    // Not trusting the authority: the TLS handshake fails, the event's
    // own tier (premium) stands.
    let (untrusting, _dir) = start(&rest);
    let a = signup(&untrusting, "Acme").await;
    webhook(&untrusting, Some(SECRET), purchase(&a, "evt-untrusted"))
        .await
        .expect(200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sub = a.client.get("/v1/subscription").await.expect(200);
    assert_eq!(sub["tier"], "premium", "{sub}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    drop(untrusting);

    let mut trusting_env = rest.to_vec();
    trusting_env.push((ca_key, ca.as_str()));
    let (server, _dir) = start(&trusting_env);
    let a = signup(&server, "Acme").await;
    webhook(&server, Some(SECRET), purchase(&a, "evt-trusted"))
        .await
        .expect(200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sub = a.client.get("/v1/subscription").await.expect(200);
        if sub["tier"] == "enterprise" {
            assert_eq!(sub["subscription"]["source"], "revenuecat_sync");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never synced: {sub}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn revenuecat_rest_sync_is_trusted_over_the_event() {
    let (addr, calls) = revenuecat_stand_in("enterprise").await;
    let base = format!("http://{addr}");
    let (server, _dir) = start(&[
        ("MURMUR__BILLING__REVENUECAT__REST_SYNC", "true"),
        ("MURMUR__BILLING__REVENUECAT__REST_BASE_URL", base.as_str()),
        ("MURMUR__BILLING__REVENUECAT__REST_API_KEY", "sk_test_rest"),
        // The stand-in is on loopback, which the outbound guard refuses
        // unless allowed.
        ("MURMUR__OUTBOUND__ALLOWED_HOSTS", "127.0.0.1"),
    ]);
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;
    let t0 = now_ms();
    // The event says premium; RevenueCat's subscriber record says
    // enterprise (active) and an expired premium: enterprise wins.
    webhook(
        &server,
        Some(SECRET),
        rc_event(
            "evt-sync",
            "INITIAL_PURCHASE",
            &a.id,
            "premium",
            t0,
            Some(t0 + 3_600_000),
        ),
    )
    .await
    .expect(200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let sub = loop {
        let sub = a.client.get("/v1/subscription").await.expect(200);
        if sub["tier"] == "enterprise" {
            break sub;
        }
        assert!(std::time::Instant::now() < deadline, "never synced: {sub}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(sub["subscription"]["source"], "revenuecat_sync");
    assert_eq!(sub["subscription"]["entitlement"], "enterprise");
    assert_eq!(sub["subscription"]["product_id"], "murmur_yearly");
    assert!(sub["subscription"]["last_sync_at"].is_string());
    assert_eq!(sub["limits"]["max_workflows"], Value::Null, "unlimited");
    // B is untouched.
    assert_eq!(
        b.client.get("/v1/subscription").await.expect(200)["tier"],
        "basic"
    );
}

#[tokio::test]
async fn admin_set_tier_while_the_server_runs_and_when_stopped() {
    let (server, dir) = start(&[]);
    let tiers = dir.path().join("tiers.toml");
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;
    // The operator file is the owner's alone.
    let op_file = server.data_dir.join("operator.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&op_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let admin = |data_dir: &std::path::Path, tenant: &str, tier: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_murmur"))
            .args(["admin", "--data-dir"])
            .arg(data_dir)
            .args(["set-tier", tenant, tier])
            .env("MURMUR__BILLING__TIERS_FILE", &tiers)
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    };
    let out = admin(&server.data_dir, &a.id, "premium");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("through the running server"));
    // Same token, new tier at once.
    let me = a.client.get("/v1/me").await.expect(200);
    assert_eq!(me["tier"], "premium");
    let sub = a.client.get("/v1/subscription").await.expect(200);
    assert_eq!(sub["subscription"]["source"], "admin");
    assert_eq!(b.client.get("/v1/me").await.expect(200)["tier"], "basic");
    // Unknown tier and unknown tenant fail loudly.
    assert!(!admin(&server.data_dir, &a.id, "gold").status.success());
    assert!(!admin(&server.data_dir, "t_nobody", "premium")
        .status
        .success());
    // The operator endpoint is invisible without the operator token, to a
    // tenant's token too.
    b.client
        .post(
            "/v1/admin/set-tier",
            json!({"tenant": b.id, "tier": "enterprise"}),
        )
        .await
        .problem(404, "not_found");
    assert_eq!(b.client.get("/v1/me").await.expect(200)["tier"], "basic");

    // Stopped: the CLI opens the store itself.
    let mut server = server;
    server.terminate();
    assert!(!op_file.exists(), "removed at shutdown");
    let out = admin(&server.data_dir, &a.id, "enterprise");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin set-tier"), "audited: {stderr}");
    let server = server.restart_graceful();
    let client = server
        .client()
        .with_token(a.client.token.as_deref().unwrap());
    assert_eq!(client.get("/v1/me").await.expect(200)["tier"], "enterprise");
}

/// A crash after the webhook's durable write but before the event was
/// applied: the next start applies it.
#[tokio::test]
async fn an_event_stored_but_not_applied_is_applied_at_the_next_start() {
    let (server, _dir) = start(&[]);
    let a = signup(&server, "Acme").await;
    let token = a.client.token.clone().unwrap();
    let mut server = server;
    server.terminate();
    {
        // What the webhook writes first, as a crash would leave it.
        let store = murmur::store::Store::open(&server.data_dir).unwrap();
        let t0 = now_ms();
        let event = murmur::store::BillingEvent {
            id: "evt-crash".into(),
            received_at: chrono::Utc::now(),
            event: rc_event(
                "evt-crash",
                "INITIAL_PURCHASE",
                &a.id,
                "premium",
                t0,
                Some(t0 + 3_600_000),
            ),
            processed: false,
            outcome: None,
        };
        assert!(store.record_billing_event(&event).await.unwrap());
    }
    let server = server.restart_graceful();
    let c = server.client().with_token(&token);
    assert_eq!(
        c.get("/v1/subscription").await.expect(200)["tier"],
        "premium"
    );
    let t0 = now_ms();
    let again = webhook(
        &server,
        Some(SECRET),
        rc_event(
            "evt-crash",
            "INITIAL_PURCHASE",
            &a.id,
            "premium",
            t0,
            Some(t0 + 3_600_000),
        ),
    )
    .await
    .expect(200);
    assert_eq!(again["status"], "duplicate");
}
