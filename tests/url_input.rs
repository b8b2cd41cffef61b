//! `POST /v1/files` with `{"url": ...}` over real HTTP with the real
//! binary, fetching from a local HTTPS server whose certificate authority
//! is made at test time and trusted by config.

mod common;

use common::tls::{serve_https, HttpsStandIn};
use common::{files_under, signup, tone_wav, Server};
use serde_json::json;
use warp::Filter;

/// What the stand-in serves: a WAV, redirects (one to a private address),
/// files over the basic tier's 400 000 bytes with and without a declared
/// length, bytes that are not audio, and a 404.
async fn audio_host() -> HttpsStandIn {
    let wav = tone_wav(1.0, 16000);
    let tone = warp::path!("tone.wav").map(move || {
        warp::http::Response::builder()
            .header("content-type", "audio/wav")
            .body(wav.clone())
            .unwrap()
    });
    let moved = warp::path!("moved").map(|| {
        warp::http::Response::builder()
            .status(302)
            .header("location", "/tone.wav")
            .body(Vec::new())
            .unwrap()
    });
    let to_private = warp::path!("to-private").map(|| {
        warp::http::Response::builder()
            .status(302)
            .header("location", "http://169.254.169.254/latest/meta-data/")
            .body(Vec::new())
            .unwrap()
    });
    // A name that resolves to loopback: refused when the hop connects.
    let to_localhost = warp::path!("to-localhost").map(|| {
        warp::http::Response::builder()
            .status(302)
            .header("location", "http://localhost:9/a.wav")
            .body(Vec::new())
            .unwrap()
    });
    let endless = warp::path!("loop").map(|| {
        warp::http::Response::builder()
            .status(302)
            .header("location", "/loop")
            .body(Vec::new())
            .unwrap()
    });
    let big_declared = warp::path!("big-declared").map(|| vec![0u8; 500_000]);
    // Chunked, no length: only counting while streaming can stop it.
    let big_streamed = warp::path!("big-streamed").map(|| {
        let chunks = futures_util::stream::iter(
            (0..50).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 10_000]))),
        );
        warp::reply::stream(chunks)
    });
    let noise = warp::path!("noise.wav").map(|| vec![b'x'; 5_000]);
    let routes = warp::get().and(
        tone.or(moved)
            .or(to_private)
            .or(to_localhost)
            .or(endless)
            .or(big_declared)
            .or(big_streamed)
            .or(noise),
    );
    serve_https(routes).await
}

fn start_trusting(host: &HttpsStandIn) -> Server {
    let env = host.trust_env();
    Server::start_with(&[(env[0].0, env[0].1.as_str()), (env[1].0, env[1].1.as_str())])
}

#[tokio::test]
async fn audio_is_fetched_over_https_sealed_measured_and_the_tenants_own() {
    let host = audio_host().await;
    let server = start_trusting(&host);
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;
    let file = a
        .client
        .post(
            "/v1/files",
            json!({"url": format!("{}/tone.wav", host.base())}),
        )
        .await
        .expect(201);
    assert_eq!(file["name"], "tone.wav");
    assert_eq!(file["size"], tone_wav(1.0, 16000).len());
    let duration = file["duration_s"].as_f64().unwrap();
    assert!((duration - 1.0).abs() < 0.05, "{file}");
    let id = file["id"].as_str().unwrap();
    // The bytes come back as fetched, and are sealed on disk.
    let content = a
        .client
        .send(
            a.client
                .request(reqwest::Method::GET, &format!("/v1/files/{id}/content")),
        )
        .await;
    assert_eq!(content.status, 200);
    let on_disk = files_under(&server.data_dir.join("files"));
    assert_eq!(on_disk.len(), 1, "{on_disk:?}");
    let raw = std::fs::read(&on_disk[0]).unwrap();
    assert!(!raw.windows(4).any(|w| w == b"RIFF"), "plaintext at rest");
    // Redirects are followed (and checked); a name can be given.
    let moved = a
        .client
        .post(
            "/v1/files",
            json!({"url": format!("{}/moved", host.base()), "name": "meeting.wav"}),
        )
        .await
        .expect(201);
    assert_eq!(moved["name"], "meeting.wav");
    // A fetched file runs jobs like an uploaded one.
    a.client
        .post(
            "/v1/jobs",
            json!({"file_id": id, "params": {"job_type": "vad"}}),
        )
        .await
        .expect(202);
    // Tenant B sees none of it.
    b.client
        .get(&format!("/v1/files/{id}"))
        .await
        .problem(404, "not_found");
    let listed = b.client.get("/v1/files").await.expect(200);
    assert!(listed["items"].as_array().unwrap().is_empty(), "{listed}");
}

#[tokio::test]
async fn oversized_non_audio_failing_and_private_urls_are_refused_leaving_nothing() {
    let host = audio_host().await;
    let server = start_trusting(&host);
    let a = signup(&server, "Acme").await;
    let url = |path: &str| json!({"url": format!("{}/{path}", host.base())});
    for (path, status, code) in [
        ("big-declared", 413, "payload_too_large"),
        ("big-streamed", 413, "payload_too_large"),
        ("noise.wav", 422, "invalid_audio"),
        ("missing.wav", 422, "url_fetch_failed"),
        ("to-private", 422, "url_not_allowed"),
        ("to-localhost", 422, "url_not_allowed"),
        ("loop", 422, "url_fetch_failed"),
    ] {
        a.client
            .post("/v1/files", url(path))
            .await
            .problem(status, code);
    }
    for bad in [
        "http://10.0.0.1/a.wav",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:9/a.wav",
    ] {
        a.client
            .post("/v1/files", json!({"url": bad}))
            .await
            .problem(422, "url_not_allowed");
    }
    a.client
        .post("/v1/files", json!({"url": "file:///etc/passwd"}))
        .await
        .problem(422, "invalid_url");
    // Nothing stored, nothing counted, no partial bytes left.
    let listed = a.client.get("/v1/files").await.expect(200);
    assert!(listed["items"].as_array().unwrap().is_empty(), "{listed}");
    assert!(files_under(&server.data_dir.join("files")).is_empty());
    let usage = a.client.get("/v1/usage").await.expect(200);
    assert_eq!(usage["storage_bytes"], 0, "{usage}");
}

#[tokio::test]
async fn by_default_loopback_is_refused_and_unknown_certificates_fail() {
    let host = audio_host().await;
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    a.client
        .post(
            "/v1/files",
            json!({"url": format!("{}/tone.wav", host.base())}),
        )
        .await
        .problem(422, "url_not_allowed");
    drop(server);
    // Loopback allowed, but the test authority not trusted: TLS fails.
    let server = Server::start_with(&[("MURMUR__OUTBOUND__ALLOWED_HOSTS", "127.0.0.1")]);
    let a = signup(&server, "Acme").await;
    a.client
        .post(
            "/v1/files",
            json!({"url": format!("{}/tone.wav", host.base())}),
        )
        .await
        .problem(422, "url_fetch_failed");
}

#[tokio::test]
async fn a_job_fetches_its_audio_from_a_source_url() {
    common::install_models(&["silero-vad"]);
    let host = audio_host().await;
    let server = start_trusting(&host);
    let a = signup(&server, "Acme").await;
    let source = format!("{}/tone.wav", host.base());
    let job = a
        .client
        .post(
            "/v1/jobs",
            json!({"source_url": source, "params": {"job_type": "vad"}}),
        )
        .await
        .expect(202);
    let done = common::wait_job(&a.client, job["id"].as_str().unwrap(), 120).await;
    assert_eq!(done["status"], "completed", "{done}");
    let file = a
        .client
        .get(&format!("/v1/files/{}", job["file_id"].as_str().unwrap()))
        .await
        .expect(200);
    assert_eq!(file["name"], "tone.wav");
    // Exactly one of file_id and source_url.
    a.client
        .post(
            "/v1/jobs",
            json!({"source_url": source, "file_id": file["id"], "params": {"job_type": "vad"}}),
        )
        .await
        .problem(400, "invalid_request");
    a.client
        .post("/v1/jobs", json!({"params": {"job_type": "vad"}}))
        .await
        .problem(400, "invalid_request");
    // The same guard as everywhere.
    a.client
        .post(
            "/v1/jobs",
            json!({"source_url": "http://10.0.0.1/a.wav", "params": {"job_type": "vad"}}),
        )
        .await
        .problem(422, "url_not_allowed");
    // A job refused after the fetch keeps no file.
    a.client
        .post(
            "/v1/jobs",
            json!({"source_url": source, "params": {"diarize": {"enabled": true}}}),
        )
        .await
        .problem(403, "feature_not_in_tier");
    let listed = a.client.get("/v1/files").await.expect(200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
}
