//! How data leaves, on the real binary: deleting a job with its result,
//! events and usage record kept apart; an owner's export of everything the
//! tenant holds and nothing of anyone else's; deleting a whole tenant.

mod common;

use common::{signup, tone_wav, Base, Server};
use serde_json::{json, Value};

fn setup() {
    common::install_models(&["tiny.en", "silero-vad"]);
}

/// Uploads a short tone and runs a tiny.en job on it to completion.
async fn finished_job(c: &common::Client) -> (String, String) {
    let file = c.upload("tone.wav", tone_wav(1.0, 16000)).await.expect(201);
    let fid = file["id"].as_str().unwrap().to_string();
    let job = c
        .post(
            "/v1/jobs",
            json!({"file_id": fid, "params": {"model": "tiny.en"}}),
        )
        .await
        .expect(202);
    let jid = job["id"].as_str().unwrap().to_string();
    let done = common::wait_job(c, &jid, 120).await;
    assert_eq!(done["status"], "completed", "{done}");
    (fid, jid)
}

#[tokio::test]
async fn a_job_is_deleted_with_its_result_and_events_and_only_by_its_tenant() {
    setup();
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Other").await;
    let (_, jid) = finished_job(&a.client).await;
    let usage_before = a.client.get("/v1/usage").await.expect(200);

    b.client
        .delete(&format!("/v1/jobs/{jid}"))
        .await
        .problem(404, "not_found");
    a.client.get(&format!("/v1/jobs/{jid}")).await.expect(200);

    a.client
        .delete(&format!("/v1/jobs/{jid}"))
        .await
        .expect(204);
    for path in ["", "/result", "/events"] {
        a.client
            .get(&format!("/v1/jobs/{jid}{path}"))
            .await
            .problem(404, "not_found");
    }
    a.client
        .delete(&format!("/v1/jobs/{jid}"))
        .await
        .problem(404, "not_found");
    // Usage is the billing record: deleting the job does not refund it.
    let usage_after = a.client.get("/v1/usage").await.expect(200);
    assert_eq!(usage_before, usage_after);
}

#[tokio::test]
async fn an_owner_exports_everything_the_tenant_holds_and_nothing_else() {
    setup();
    let server = Server::start_with(&[("MURMUR__OUTBOUND__ALLOWED_HOSTS", "127.0.0.1")]);
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Other").await;
    let (fid, jid) = finished_job(&a.client).await;
    let (b_fid, b_jid) = finished_job(&b.client).await;
    a.client
        .post("/v1/workflows", json!({"name": "w", "params": {}}))
        .await
        .expect(201);
    let key = a
        .client
        .post("/v1/api-keys", json!({"name": "k"}))
        .await
        .expect(201);
    let hook = a
        .client
        .post("/v1/webhooks", json!({"url": "http://127.0.0.1:9/hook"}))
        .await
        .expect(201);

    let res = a
        .client
        .request(reqwest::Method::GET, "/v1/tenant/export")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let text = res.text().await.unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r["type"].as_str().unwrap()).collect();
    for kind in [
        "tenant", "user", "api_key", "file", "workflow", "webhook", "job", "usage",
    ] {
        assert!(kinds.contains(&kind), "no {kind} row in {kinds:?}");
    }
    assert!(text.contains(&fid) && text.contains(&jid));
    let job = rows.iter().find(|r| r["type"] == "job").unwrap();
    assert!(job["events"].as_array().unwrap().len() >= 3, "{job}");
    // No secrets, nothing of the other tenant.
    assert!(!text.contains("hashed_password") && !text.contains("argon2"));
    assert!(!text.contains(key["token"].as_str().unwrap()));
    assert!(!text.contains(hook["secret"].as_str().unwrap()));
    for other in [&b.id, &b_fid, &b_jid, &b.email] {
        assert!(!text.contains(other.as_str()), "export leaks {other}");
    }

    // Only the owner, and only with a login session.
    server
        .client()
        .with_token(key["token"].as_str().unwrap())
        .get("/v1/tenant/export")
        .await
        .problem(403, "session_required");
    a.client
        .post(
            "/v1/users",
            json!({"email": "m@acme.example", "password": "member password", "role": "admin"}),
        )
        .await
        .expect(201);
    let token = server
        .client()
        .post(
            "/v1/auth/login",
            json!({"email": "m@acme.example", "password": "member password"}),
        )
        .await
        .expect(200)["token"]
        .as_str()
        .unwrap()
        .to_string();
    server
        .client()
        .with_token(&token)
        .get("/v1/tenant/export")
        .await
        .problem(403, "forbidden");
}

#[tokio::test]
async fn deleting_a_tenant_removes_its_data_and_credentials_and_nothing_else() {
    setup();
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Other").await;
    finished_job(&a.client).await;
    let (b_fid, b_jid) = finished_job(&b.client).await;
    let key = a
        .client
        .post("/v1/api-keys", json!({"name": "k"}))
        .await
        .expect(201);
    let a_files = server.data_dir.join("files").join(&a.id);
    assert!(a_files.exists());

    // Another tenant's id does not confirm; neither does an API key.
    a.client
        .send(
            a.client
                .request(reqwest::Method::DELETE, "/v1/tenant")
                .json(&json!({"confirm": b.id})),
        )
        .await
        .problem(400, "invalid_request");
    let by_key = server.client().with_token(key["token"].as_str().unwrap());
    by_key
        .send(
            by_key
                .request(reqwest::Method::DELETE, "/v1/tenant")
                .json(&json!({"confirm": a.id})),
        )
        .await
        .problem(403, "session_required");
    b.client
        .send(
            b.client
                .request(reqwest::Method::DELETE, "/v1/tenant")
                .json(&json!({"confirm": a.id})),
        )
        .await
        .problem(400, "invalid_request");

    let done = a
        .client
        .send(
            a.client
                .request(reqwest::Method::DELETE, "/v1/tenant")
                .json(&json!({"confirm": a.id})),
        )
        .await;
    assert_eq!(done.status, 204, "{}", done.text);
    a.client.get("/v1/me").await.problem(401, "unauthorized");
    by_key.get("/v1/me").await.problem(401, "unauthorized");
    server
        .client()
        .post(
            "/v1/auth/login",
            json!({"email": a.email, "password": a.password}),
        )
        .await
        .problem(401, "unauthorized");
    assert!(!a_files.exists(), "the tenant's uploads are gone");
    assert!(!server.data_dir.join("artifacts").join(&a.id).exists());
    // The address can sign up again, as a new tenant.
    server
        .client()
        .post(
            "/v1/auth/signup",
            json!({"tenant": "Acme again", "email": a.email, "password": a.password}),
        )
        .await
        .expect(201);
    // The other tenant is whole.
    b.client
        .get(&format!("/v1/files/{b_fid}"))
        .await
        .expect(200);
    b.client
        .get(&format!("/v1/files/{b_fid}/content"))
        .await
        .expect(200);
    b.client
        .get(&format!("/v1/jobs/{b_jid}/result"))
        .await
        .expect(200);
}

/// The OpenAI endpoints keep no upload, also when the client hangs up
/// while its job runs: the job finishes and stays listed, the file goes.
#[tokio::test]
async fn an_openai_request_whose_client_hangs_up_leaves_no_upload() {
    setup();
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let jfk = std::fs::read(murmur_models::testaudio::jfk().expect("fetch jfk.wav")).unwrap();
    let part = reqwest::multipart::Part::bytes(jfk)
        .file_name("jfk.wav")
        .mime_str("audio/wav")
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .part("file", part)
        .text("model", "tiny.en");
    // The client hangs up once its job is listed (not after a fixed time,
    // which a slow machine may spend uploading).
    let request = a
        .client
        .request(reqwest::Method::POST, "/v1/audio/transcriptions")
        .multipart(form)
        .send();
    let request = tokio::spawn(request);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let jobs = a.client.get("/v1/jobs").await.expect(200);
        if !jobs["items"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            !request.is_finished(),
            "the request ended before its job was listed"
        );
        assert!(std::time::Instant::now() < deadline, "no job was listed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    request.abort();
    assert!(
        request.await.is_err_and(|e| e.is_cancelled()),
        "the job should outlast the client"
    );
    // The job was submitted and runs to its end without the client.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let job = loop {
        let jobs = a.client.get("/v1/jobs").await.expect(200);
        if let Some(j) = jobs["items"].as_array().unwrap().first() {
            if ["completed", "failed", "cancelled"].contains(&j["status"].as_str().unwrap()) {
                break j.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no finished job: {jobs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(job["status"], "completed", "{job}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let files = a.client.get("/v1/files").await.expect(200);
        if files["items"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload outlived its job: {files}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(common::files_under(&server.data_dir.join("files").join(&a.id)).is_empty());
}

/// A client that hangs up after its file part, before the rest of the form,
/// leaves no upload and no job (the file was stored when it went).
#[tokio::test]
async fn a_client_that_hangs_up_after_the_file_part_leaves_no_upload() {
    use std::io::Write;
    setup();
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let token = a.client.token.clone().unwrap();
    let jfk = std::fs::read(murmur_models::testaudio::jfk().expect("fetch jfk.wav")).unwrap();
    let boundary = "murmur-hangs-up";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
         filename=\"jfk.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&jfk);
    // The next part begins and the client goes: the file part is whole.
    body.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nti")
            .as_bytes(),
    );
    let head = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: murmur\r\n\
         Authorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len() + 4096
    );
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    // The file part is stored (listed) while the request waits for more.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let files = a.client.get("/v1/files").await.expect(200);
        if files["items"].as_array().unwrap().len() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the file part was not stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(s);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let files = a.client.get("/v1/files").await.expect(200);
        let on_disk = common::files_under(&server.data_dir.join("files").join(&a.id));
        if files["items"].as_array().unwrap().is_empty() && on_disk.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload outlived its request: {files} {on_disk:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let jobs = a.client.get("/v1/jobs").await.expect(200);
    assert_eq!(jobs["items"], serde_json::json!([]), "{jobs}");
}
