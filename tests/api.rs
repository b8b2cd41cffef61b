//! The foundation's contract over real HTTP against the real binary:
//! accounts, tokens, roles, API keys, files, workflows, jobs, tenant
//! isolation, problem answers, durability across restarts and `kill -9`.

mod common;

use std::time::{Duration, SystemTime};

use common::{files_under, signup, tone_wav, Base, Server};
use serde_json::json;

#[tokio::test]
async fn signup_login_and_me() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;
    assert_ne!(a.id, b.id);

    let anon = server.client();
    let login = anon
        .post(
            "/v1/auth/login",
            json!({"email": a.email, "password": a.password}),
        )
        .await
        .expect(200);
    assert!(login["expires_at"].is_string());
    let token = login["token"].as_str().unwrap();
    let me = anon.with_token(token).get("/v1/me").await.expect(200);
    assert_eq!(me["tenant"]["id"], a.id.as_str());
    assert_eq!(me["user"]["email"], a.email.as_str());
    assert_eq!(me["tier"], "basic");
    assert_eq!(me["limits"]["concurrent_jobs"], 2);
    assert!(me["user"].get("hashed_password").is_none());

    // Email lookup ignores case; the password does not.
    anon.post(
        "/v1/auth/login",
        json!({"email": a.email.to_uppercase(), "password": a.password}),
    )
    .await
    .expect(200);
    anon.post(
        "/v1/auth/login",
        json!({"email": a.email, "password": "wrong password"}),
    )
    .await
    .problem(401, "unauthorized");
    anon.post(
        "/v1/auth/login",
        json!({"email": "nobody@nowhere.example", "password": "whatever1"}),
    )
    .await
    .problem(401, "unauthorized");
    // A taken email is a conflict, whichever tenant asks.
    anon.post(
        "/v1/auth/signup",
        json!({"tenant": "Copycat", "email": b.email, "password": "another password"}),
    )
    .await
    .problem(409, "conflict");
    anon.post(
        "/v1/auth/signup",
        json!({"tenant": "Weak", "email": "w@weak.example", "password": "short"}),
    )
    .await
    .problem(400, "invalid_request");
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let anon = server.client();
    anon.get("/v1/me").await.problem(401, "unauthorized");
    anon.with_token("not-a-biscuit")
        .get("/v1/me")
        .await
        .problem(401, "unauthorized");
    let good = a.client.token.clone().unwrap();
    anon.with_token(&good[..good.len() / 2])
        .get("/v1/me")
        .await
        .problem(401, "unauthorized");
    // One character changed in the signature.
    let mut forged = good.clone().into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    anon.with_token(std::str::from_utf8(&forged).unwrap())
        .get("/v1/me")
        .await
        .problem(401, "unauthorized");

    // A well-formed token signed by another key, claiming tenant A.
    let far = SystemTime::now() + Duration::from_secs(3600);
    let foreign = mint_login(
        &biscuit_auth::KeyPair::new(),
        &a.user_id,
        &a.id,
        "owner",
        far,
    );
    anon.with_token(&foreign)
        .get("/v1/me")
        .await
        .problem(401, "unauthorized");
    // The same token signed by the server's own key works: the test's token
    // shape is the server's.
    let root = server_root_key(&server);
    let genuine = mint_login(&root, &a.user_id, &a.id, "owner", far);
    anon.with_token(&genuine).get("/v1/me").await.expect(200);
    // Signed by the server's own key but already expired.
    let past = SystemTime::now() - Duration::from_secs(10);
    let expired = mint_login(&root, &a.user_id, &a.id, "owner", past);
    anon.with_token(&expired)
        .get("/v1/me")
        .await
        .problem(401, "unauthorized");
}

/// The server's signing key, read as only someone holding the master key
/// could: the file is sealed by it.
fn server_root_key(server: &Server) -> biscuit_auth::KeyPair {
    let read = |name: &str| std::fs::read_to_string(server.data_dir.join(name)).unwrap();
    let master = murmur_seal::DataKey::from_hex(&read("master_key")).unwrap();
    let text = read("root_key");
    let (_, sealed) = text
        .trim()
        .strip_prefix("sealed:")
        .and_then(|rest| rest.split_once(':'))
        .expect("a sealed root key");
    let plain =
        murmur_seal::open_value(&master, b"root key", &hex::decode(sealed).unwrap()).unwrap();
    let private = biscuit_auth::PrivateKey::from_bytes_hex(
        std::str::from_utf8(&plain).unwrap(),
        Default::default(),
    )
    .unwrap();
    biscuit_auth::KeyPair::from(&private)
}

/// A login token built from the outside, as an attacker would try.
fn mint_login(
    root: &biscuit_auth::KeyPair,
    user: &str,
    tenant: &str,
    role: &str,
    exp: SystemTime,
) -> String {
    biscuit_auth::macros::biscuit!(
        r#"user({user}); tenant({tenant}); role({role}); tier("basic"); tier_epoch(0);
           check if time($t), $t <= {exp};"#,
        user = user,
        tenant = tenant,
        role = role,
        exp = exp,
    )
    .build(root)
    .unwrap()
    .to_base64()
    .unwrap()
}

#[tokio::test]
async fn roles_and_api_keys() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let anon = server.client();

    // A viewer reads but cannot create.
    a.client
        .post(
            "/v1/users",
            json!({"email": "v@acme.example", "password": "viewer password", "role": "viewer"}),
        )
        .await
        .expect(201);
    let viewer_token = anon
        .post(
            "/v1/auth/login",
            json!({"email": "v@acme.example", "password": "viewer password"}),
        )
        .await
        .expect(200)["token"]
        .as_str()
        .unwrap()
        .to_string();
    let viewer = anon.with_token(&viewer_token);
    viewer.get("/v1/files").await.expect(200);
    viewer.get("/v1/users").await.expect(200);
    viewer
        .upload("a.wav", tone_wav(0.5, 16000))
        .await
        .problem(403, "forbidden");
    viewer
        .post("/v1/workflows", json!({"name": "w", "params": {}}))
        .await
        .problem(403, "forbidden");
    viewer
        .post(
            "/v1/users",
            json!({"email": "x@acme.example", "password": "password123", "role": "viewer"}),
        )
        .await
        .problem(403, "forbidden");
    // A member cannot make keys or users; an admin cannot make an owner.
    a.client
        .post(
            "/v1/users",
            json!({"email": "adm@acme.example", "password": "admin password", "role": "admin"}),
        )
        .await
        .expect(201);
    let admin = anon.with_token(
        anon.post(
            "/v1/auth/login",
            json!({"email": "adm@acme.example", "password": "admin password"}),
        )
        .await
        .expect(200)["token"]
            .as_str()
            .unwrap(),
    );
    admin
        .post(
            "/v1/users",
            json!({"email": "o2@acme.example", "password": "owner password", "role": "owner"}),
        )
        .await
        .problem(403, "forbidden");

    // API keys: a read-only key reads and cannot write; revoked keys stop.
    let key = a
        .client
        .post(
            "/v1/api-keys",
            json!({"name": "dashboard", "scopes": ["read"]}),
        )
        .await
        .expect(201);
    let key_token = key["token"].as_str().unwrap().to_string();
    let key_id = key["id"].as_str().unwrap().to_string();
    let reader = anon.with_token(&key_token);
    assert_eq!(
        reader.get("/v1/me").await.expect(200)["api_key_id"],
        key_id.as_str()
    );
    reader.get("/v1/jobs").await.expect(200);
    reader
        .upload("a.wav", tone_wav(0.5, 16000))
        .await
        .problem(403, "forbidden");
    let listed = a.client.get("/v1/api-keys").await.expect(200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(
        listed["items"][0].get("token").is_none(),
        "tokens are shown once"
    );
    a.client
        .post(
            "/v1/api-keys",
            json!({"name": "bad", "scopes": ["everything"]}),
        )
        .await
        .problem(400, "invalid_request");
    a.client
        .delete(&format!("/v1/api-keys/{key_id}"))
        .await
        .expect(204);
    reader.get("/v1/me").await.problem(401, "unauthorized");
    a.client
        .delete(&format!("/v1/api-keys/{key_id}"))
        .await
        .problem(404, "not_found");

    // A jobs-scoped key uploads but cannot manage keys.
    let jobs_key = a
        .client
        .post(
            "/v1/api-keys",
            json!({"name": "flowise", "scopes": ["jobs"]}),
        )
        .await
        .expect(201);
    let jobs = anon.with_token(jobs_key["token"].as_str().unwrap());
    jobs.upload("a.wav", tone_wav(0.5, 16000)).await.expect(201);
    jobs.post("/v1/api-keys", json!({"name": "escalate"}))
        .await
        .problem(403, "forbidden");
    // An expired key is refused.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let short = a
        .client
        .post("/v1/api-keys", json!({"name": "short", "expires_at": soon}))
        .await
        .expect(201);
    let short = anon.with_token(short["token"].as_str().unwrap());
    short.get("/v1/me").await.expect(200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    short.get("/v1/me").await.problem(401, "unauthorized");
}

#[tokio::test]
async fn malformed_requests_get_problem_answers() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let send = |rb: reqwest::RequestBuilder| a.client.send(rb);
    send(
        a.client
            .request(reqwest::Method::POST, "/v1/workflows")
            .header("content-type", "application/json")
            .body("{\"name\": "),
    )
    .await
    .problem(400, "invalid_request");
    send(
        server
            .client()
            .request(reqwest::Method::POST, "/v1/auth/signup")
            .header("content-type", "application/json")
            .body("not json"),
    )
    .await
    .problem(400, "invalid_request");
    // A multipart body whose boundary never closes.
    send(
        a.client
            .request(reqwest::Method::POST, "/v1/files")
            .header("content-type", "multipart/form-data; boundary=XYZ")
            .body("--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF...."),
    )
    .await
    .problem(400, "invalid_request");
    // Multipart without a boundary parameter.
    send(
        a.client
            .request(reqwest::Method::POST, "/v1/files")
            .header("content-type", "multipart/form-data")
            .body("whatever"),
    )
    .await
    .problem(400, "invalid_request");
    // No "file" field.
    let form = reqwest::multipart::Form::new().text("other", "x");
    send(
        a.client
            .request(reqwest::Method::POST, "/v1/files")
            .multipart(form),
    )
    .await
    .problem(400, "invalid_request");
    // Not audio, and an empty file.
    a.client
        .upload("notes.wav", b"these are not audio samples at all".to_vec())
        .await
        .problem(422, "invalid_audio");
    a.client
        .upload("empty.wav", Vec::new())
        .await
        .problem(422, "invalid_audio");
    // Unknown job parameters and models.
    let file = a
        .client
        .upload("a.wav", tone_wav(1.0, 16000))
        .await
        .expect(201);
    let fid = file["id"].as_str().unwrap();
    a.client
        .post(
            "/v1/jobs",
            json!({"file_id": fid, "params": {"modle": "tiny"}}),
        )
        .await
        .problem(400, "invalid_request");
    a.client
        .post(
            "/v1/jobs",
            json!({"file_id": fid, "params": {"model": "small"}}),
        )
        .await
        .problem(403, "model_not_in_tier");
    a.client
        .post(
            "/v1/jobs",
            json!({"file_id": fid, "params": {"diarize": {"enabled": true}}}),
        )
        .await
        .problem(403, "feature_not_in_tier");
    a.client.get("/v1/nowhere").await.problem(404, "not_found");
    a.client
        .get("/v1/jobs?status=bogus")
        .await
        .problem(400, "invalid_request");
    // Nothing above left a file behind.
    let files = a.client.get("/v1/files").await.expect(200);
    assert_eq!(files["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn uploads_respect_the_tier_limit_and_leave_nothing_when_refused() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    // The test tier table allows 400000 bytes on basic.
    let at_limit = {
        let mut wav = tone_wav(13.0, 16000);
        wav.truncate(400_000);
        // Keep the header's sizes honest for a truncated-by-design file.
        let data = (wav.len() - 44) as u32;
        wav[40..44].copy_from_slice(&data.to_le_bytes());
        wav[4..8].copy_from_slice(&(data + 36).to_le_bytes());
        wav
    };
    let ok = a
        .client
        .upload("limit.wav", at_limit.clone())
        .await
        .expect(201);
    assert_eq!(ok["size"], 400_000);
    let mut over = at_limit;
    over.push(0);
    a.client
        .upload("over.wav", over)
        .await
        .problem(413, "payload_too_large");
    // Far over the limit: refused from the Content-Length alone.
    a.client
        .upload("huge.wav", vec![0u8; 3_000_000])
        .await
        .problem(413, "payload_too_large");
    let files = a.client.get("/v1/files").await.expect(200);
    assert_eq!(files["items"].as_array().unwrap().len(), 1);
    let on_disk = files_under(&server.data_dir.join("files"));
    assert_eq!(
        on_disk.len(),
        1,
        "only the accepted upload is on disk: {on_disk:?}"
    );

    // Storage quota (1000000 bytes on basic in the test table): the third
    // 400000-byte file does not fit, deleting one makes room.
    let wav = {
        let mut w = tone_wav(13.0, 16000);
        w.truncate(390_000);
        let data = (w.len() - 44) as u32;
        w[40..44].copy_from_slice(&data.to_le_bytes());
        w[4..8].copy_from_slice(&(data + 36).to_le_bytes());
        w
    };
    let second = a.client.upload("2.wav", wav.clone()).await.expect(201);
    a.client
        .upload("3.wav", wav.clone())
        .await
        .problem(403, "quota_exceeded");
    a.client
        .delete(&format!("/v1/files/{}", second["id"].as_str().unwrap()))
        .await
        .expect(204);
    a.client.upload("3.wav", wav).await.expect(201);
    assert_eq!(files_under(&server.data_dir.join("files")).len(), 2);
}

#[tokio::test]
async fn files_round_trip() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let wav = tone_wav(2.0, 16000);
    let f = a
        .client
        .upload("../../etc/tone.wav", wav.clone())
        .await
        .expect(201);
    assert_eq!(f["name"], "tone.wav", "paths are stripped from names");
    assert_eq!(f["size"], wav.len());
    let dur = f["duration_s"].as_f64().unwrap();
    assert!((dur - 2.0).abs() < 0.05, "duration {dur}");
    let id = f["id"].as_str().unwrap();
    assert_eq!(
        a.client.get(&format!("/v1/files/{id}")).await.expect(200)["id"],
        id
    );
    let res = a
        .client
        .request(reqwest::Method::GET, &format!("/v1/files/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), wav.as_slice());
    a.client
        .delete(&format!("/v1/files/{id}"))
        .await
        .expect(204);
    a.client
        .get(&format!("/v1/files/{id}"))
        .await
        .problem(404, "not_found");
    assert!(files_under(&server.data_dir.join("files")).is_empty());
}

#[tokio::test]
async fn workflows_and_jobs() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    common::install_models(&["tiny.en", "base", "silero-vad"]);
    // Long enough (12 s of tone, VAD off) that the cancel below lands
    // before Whisper is through.
    let f = a
        .client
        .upload("a.wav", tone_wav(12.0, 16000))
        .await
        .expect(201);
    let fid = f["id"].as_str().unwrap();
    let wf = a
        .client
        .post("/v1/workflows", json!({"name": "english", "params": {"model": "tiny.en", "vad": {"enabled": false, "threshold": 0.4}}}))
        .await
        .expect(201);
    assert_eq!(wf["params"]["model"], "tiny.en");
    assert_eq!(wf["params"]["vad"]["min_silence_ms"], 2000);
    let wid = wf["id"].as_str().unwrap();
    let updated = a
        .client
        .put(
            &format!("/v1/workflows/{wid}"),
            json!({"name": "english-2", "params": {"language": "en"}}),
        )
        .await
        .expect(200);
    assert_eq!(updated["name"], "english-2");
    assert_eq!(updated["params"]["model"], "tiny.en");
    assert_eq!(updated["params"]["language"], "en");
    // Two workflows on basic in the test table; the third is over quota.
    a.client
        .post("/v1/workflows", json!({"name": "two"}))
        .await
        .expect(201);
    a.client
        .post("/v1/workflows", json!({"name": "three"}))
        .await
        .problem(403, "quota_exceeded");
    a.client
        .post(
            "/v1/workflows",
            json!({"name": "diarized", "params": {"diarize": {"enabled": true}}}),
        )
        .await
        .problem(403, "feature_not_in_tier");

    let job = a
        .client
        .post(
            "/v1/jobs",
            json!({"file_id": fid, "workflow_id": wid, "params": {"temperature": 0.2}}),
        )
        .await
        .expect(202);
    assert_eq!(job["status"], "queued");
    assert_eq!(job["params"]["model"], "tiny.en");
    assert_eq!(job["params"]["temperature"], 0.2);
    let jid = job["id"].as_str().unwrap();
    a.client
        .get(&format!("/v1/jobs/{jid}/result"))
        .await
        .problem(409, "conflict");
    let second = a
        .client
        .post("/v1/jobs", json!({"file_id": fid}))
        .await
        .expect(202);
    assert_eq!(second["params"]["model"], "base");
    let list = a.client.get("/v1/jobs?limit=1").await.expect(200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], second["id"], "newest first");
    let cursor = list["next_cursor"].as_str().unwrap();
    let page2 = a
        .client
        .get(&format!("/v1/jobs?limit=1&cursor={cursor}"))
        .await
        .expect(200);
    assert_eq!(page2["items"][0]["id"], jid);
    assert!(page2["next_cursor"].is_null());
    a.client
        .post(&format!("/v1/jobs/{jid}/cancel"), json!({}))
        .await
        .expect(202);
    let ended = common::wait_job(&a.client, jid, 60).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    a.client
        .post(&format!("/v1/jobs/{jid}/cancel"), json!({}))
        .await
        .problem(409, "conflict");
    let cancelled = a.client.get("/v1/jobs?status=cancelled").await.expect(200);
    assert_eq!(cancelled["items"].as_array().unwrap().len(), 1);
    assert_eq!(cancelled["items"][0]["id"], jid);
    a.client
        .delete(&format!("/v1/workflows/{wid}"))
        .await
        .expect(204);
    a.client
        .post("/v1/jobs", json!({"file_id": fid, "workflow_id": wid}))
        .await
        .problem(404, "not_found");
}

/// Tenant B, holding every id of tenant A, gets 404 on every endpoint with
/// an id in its path, and A's data is the same afterwards.
#[tokio::test]
async fn cross_tenant_matrix() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;
    let file = a
        .client
        .upload("a.wav", tone_wav(1.0, 16000))
        .await
        .expect(201);
    let fid = file["id"].as_str().unwrap().to_string();
    let wf = a
        .client
        .post("/v1/workflows", json!({"name": "mine"}))
        .await
        .expect(201);
    let wid = wf["id"].as_str().unwrap().to_string();
    common::install_models(&["silero-vad"]);
    let job = a
        .client
        .post(
            "/v1/jobs",
            json!({"file_id": fid, "params": {"job_type": "vad"}}),
        )
        .await
        .expect(202);
    let jid = job["id"].as_str().unwrap().to_string();
    assert_eq!(
        common::wait_job(&a.client, &jid, 60).await["status"],
        "completed"
    );
    let key = a
        .client
        .post("/v1/api-keys", json!({"name": "k"}))
        .await
        .expect(201);
    let kid = key["id"].as_str().unwrap().to_string();

    let before = snapshot(&a.client).await;
    let cases: Vec<(reqwest::Method, String, Option<serde_json::Value>)> = vec![
        (reqwest::Method::GET, format!("/v1/files/{fid}"), None),
        (
            reqwest::Method::GET,
            format!("/v1/files/{fid}/content"),
            None,
        ),
        (reqwest::Method::DELETE, format!("/v1/files/{fid}"), None),
        (reqwest::Method::GET, format!("/v1/workflows/{wid}"), None),
        (
            reqwest::Method::PUT,
            format!("/v1/workflows/{wid}"),
            Some(json!({"name": "stolen"})),
        ),
        (
            reqwest::Method::DELETE,
            format!("/v1/workflows/{wid}"),
            None,
        ),
        (reqwest::Method::GET, format!("/v1/jobs/{jid}"), None),
        (
            reqwest::Method::POST,
            format!("/v1/jobs/{jid}/cancel"),
            Some(json!({})),
        ),
        (reqwest::Method::GET, format!("/v1/jobs/{jid}/result"), None),
        (reqwest::Method::DELETE, format!("/v1/api-keys/{kid}"), None),
        (
            reqwest::Method::POST,
            "/v1/jobs".to_string(),
            Some(json!({"file_id": fid})),
        ),
        (
            reqwest::Method::POST,
            "/v1/jobs".to_string(),
            Some(json!({"file_id": "f_x", "workflow_id": wid})),
        ),
    ];
    for (method, path, body) in cases {
        let mut rb = b.client.request(method.clone(), &path);
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        let ans = b.client.send(rb).await;
        assert_eq!(
            ans.status, 404,
            "{method} {path} as another tenant: {}",
            ans.text
        );
        assert_eq!(ans.body["code"], "not_found");
    }
    // B's lists never show A's rows.
    for list in [
        "/v1/files",
        "/v1/workflows",
        "/v1/jobs",
        "/v1/api-keys",
        "/v1/users",
    ] {
        let page = b.client.get(list).await.expect(200);
        let items = page["items"].as_array().unwrap();
        let leaked: Vec<_> = items
            .iter()
            .filter(|i| {
                [&fid, &wid, &jid, &kid, &a.user_id]
                    .iter()
                    .any(|id| i["id"] == id.as_str())
            })
            .collect();
        assert!(leaked.is_empty(), "{list} leaked {leaked:?}");
    }
    assert_eq!(snapshot(&a.client).await, before, "tenant A's data changed");
}

async fn snapshot(c: &common::Client) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for list in [
        "/v1/files",
        "/v1/workflows",
        "/v1/jobs",
        "/v1/api-keys",
        "/v1/users",
    ] {
        out.push(c.get(list).await.expect(200));
    }
    out
}

#[tokio::test]
async fn data_survives_restart_and_kill9() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let f = a
        .client
        .upload("a.wav", tone_wav(1.0, 16000))
        .await
        .expect(201);
    let fid = f["id"].as_str().unwrap().to_string();
    a.client
        .post("/v1/workflows", json!({"name": "w"}))
        .await
        .expect(201);
    common::install_models(&["silero-vad"]);
    let job = a
        .client
        .post(
            "/v1/jobs",
            json!({"file_id": fid, "params": {"job_type": "vad"}}),
        )
        .await
        .expect(202);
    common::wait_job(&a.client, job["id"].as_str().unwrap(), 60).await;
    a.client
        .post(
            "/v1/users",
            json!({"email": "m@acme.example", "password": "member password", "role": "member"}),
        )
        .await
        .expect(201);
    let before = snapshot(&a.client).await;

    // A graceful restart keeps everything, and old tokens still work (the
    // root key persists).
    let server = server.restart_graceful();
    let client = a.client.clone();
    let client = common::Client {
        base: server.base.clone(),
        ..client
    };
    assert_eq!(snapshot(&client).await, before);

    // Writes acknowledged just before a SIGKILL are there after restart.
    let g = client
        .upload("b.wav", tone_wav(1.0, 16000))
        .await
        .expect(201);
    let j = client
        .post(
            "/v1/jobs",
            json!({"file_id": g["id"], "params": {"job_type": "vad"}}),
        )
        .await
        .expect(202);
    let server = server.restart_after_kill9();
    let client = common::Client {
        base: server.base.clone(),
        ..client
    };
    let files = client.get("/v1/files").await.expect(200);
    assert!(files["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["id"] == g["id"]));
    // The job acknowledged before the crash is recovered and runs.
    let recovered = common::wait_job(&client, j["id"].as_str().unwrap(), 60).await;
    assert_eq!(recovered["status"], "completed", "{recovered}");
    let res = client
        .request(
            reqwest::Method::GET,
            &format!("/v1/files/{}/content", g["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.bytes().await.unwrap().len(), tone_wav(1.0, 16000).len());
    client
        .post(
            "/v1/auth/login",
            json!({"email": "m@acme.example", "password": "member password"}),
        )
        .await
        .expect(200);
}

#[tokio::test]
async fn kill9_during_upload_leaves_no_partial_file() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    // Stream a body slowly so the server is mid-upload when it dies.
    let wav = tone_wav(10.0, 16000);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        wav.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let stream = futures_util::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c
    });
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(stream))
        .file_name("slow.wav")
        .mime_str("audio/wav")
        .unwrap();
    let form = reqwest::multipart::Form::new().part("file", part);
    let upload = tokio::spawn(
        a.client
            .request(reqwest::Method::POST, "/v1/files")
            .multipart(form)
            .send(),
    );
    // Wait until the partial file exists on disk, then crash the server.
    let files_dir = server.data_dir.join("files");
    let mut seen_partial = false;
    for _ in 0..100 {
        if files_under(&files_dir)
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".part"))
        {
            seen_partial = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_partial, "the upload never started writing");
    let server = server.restart_after_kill9();
    // The client sees its connection die; what matters is the server side.
    let _ = upload.await;
    let client = common::Client {
        base: server.base.clone(),
        ..a.client.clone()
    };
    let files = client.get("/v1/files").await.expect(200);
    assert!(files["items"].as_array().unwrap().is_empty(), "{files}");
    assert!(
        files_under(&files_dir).is_empty(),
        "partial bytes left on disk: {:?}",
        files_under(&files_dir)
    );
}

use futures_util::StreamExt;

#[tokio::test]
async fn operations_endpoints() {
    let server = Server::start();
    let anon = server.client();
    assert_eq!(anon.get("/healthz").await.expect(200)["status"], "ok");
    // Ready once the default model and the VAD are installed.
    common::install_models(&["base", "silero-vad"]);
    assert_eq!(anon.get("/readyz").await.expect(200)["status"], "ready");
    let bare = Server::start_with(&[("MURMUR__MODELS__DIR", "/nonexistent/models")]);
    bare.client()
        .get("/readyz")
        .await
        .problem(503, "unavailable");
    let spec = anon.get("/openapi.json").await.expect(200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/auth/signup",
        "/v1/auth/login",
        "/v1/me",
        "/v1/users",
        "/v1/users/{id}",
        "/v1/users/{id}/sessions",
        "/v1/tenant",
        "/v1/tenant/export",
        "/v1/api-keys/{id}",
        "/v1/files/{id}/content",
        "/v1/workflows/{id}",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/result",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/stems/{name}",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/ws",
        "/v1/models",
        "/v1/models/{id}",
        "/v1/usage",
        "/v1/subscription",
        "/v1/billing/revenuecat",
        "/v1/admin/set-tier",
        "/v1/webhooks",
        "/v1/webhooks/{id}",
        "/v1/webhooks/{id}/deliveries",
        "/v1/jobs/{id}/deliveries",
        "/transcription/",
        "/vad/",
        "/bgm-separation/",
        "/task/{identifier}",
        "/task/file/{identifier}",
        "/readyz",
        "/metrics",
        "/",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "openapi.json lacks {path}"
        );
    }
    let a = signup(&server, "Acme").await;
    a.client.get("/v1/files").await.expect(200);
    let models = a.client.get("/v1/models").await.expect(200);
    let by_id = |id: &str| {
        models["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_id("base")["installed"], true);
    assert_eq!(by_id("base")["allowed"], true);
    assert_eq!(by_id("base")["default"], true);
    assert_eq!(by_id("small")["allowed"], false, "basic tier");
    assert_eq!(by_id("large-v3")["available"], false, "no registry package");
    // OpenAI's shapes: a list of model objects, `whisper-1` an alias of
    // the default, and one model by id.
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"], models["items"]);
    for m in models["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model", "{m}");
        assert!(m["created"].is_i64() && m["owned_by"].is_string(), "{m}");
    }
    assert_eq!(by_id("whisper-1")["alias_of"], "base");
    assert!(by_id("base")["created"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(by_id("large-v3")["created"], 0, "not installed");
    let one = a.client.get("/v1/models/tiny.en").await.expect(200);
    assert_eq!(
        (one["id"].as_str(), one["object"].as_str()),
        (Some("tiny.en"), Some("model"))
    );
    assert_eq!(one["english_only"], true);
    let missing = a.client.get("/v1/models/gpt-4o").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["code"], "not_found");
    anon.get("/v1/models").await.problem(401, "unauthorized");
    anon.get("/v1/models/base")
        .await
        .problem(401, "unauthorized");
    // A model the tier allows that the server does not have: 422.
    let f = a
        .client
        .upload("a.wav", tone_wav(1.0, 16000))
        .await
        .expect(201);
    assert_eq!(by_id("tiny")["available"], false);
    a.client
        .post(
            "/v1/jobs",
            json!({"file_id": f["id"], "params": {"model": "tiny"}}),
        )
        .await
        .problem(422, "invalid_request");
    let metrics = anon.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains("murmur_http_requests_total"),
        "{}",
        metrics.text
    );
    assert!(metrics.text.contains("route=\"/v1/files\""));
    assert!(metrics
        .text
        .contains("murmur_http_request_duration_seconds"));
    assert!(metrics.text.contains("murmur_store_bytes_on_disk"));
    // The upload waited for a store flush, which is counted and timed.
    let flushes: f64 = metrics
        .text
        .lines()
        .find_map(|l| l.strip_prefix("murmur_store_flushes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no flush count: {}", metrics.text));
    assert!(flushes >= 1.0, "{flushes}");
    assert!(metrics.text.contains("murmur_store_flush_seconds"));
}

/// Browser front-ends on other origins: nothing is readable cross-origin
/// by default; listed origins get preflights and readable answers, others
/// get neither.
#[tokio::test]
async fn cors_is_off_by_default_and_follows_the_allow_list() {
    let http = reqwest::Client::new();
    let preflight = |base: &str, origin: &str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}/v1/files"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let off = Server::start();
    let res = preflight(&off.base, "https://app.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let a = signup(&off, "Acme").await;
    let res = a
        .client
        .request(reqwest::Method::GET, "/v1/files")
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("access-control-allow-origin").is_none());
    drop(off);

    let on = Server::start_with(&[(
        "MURMUR__SERVER__CORS_ALLOWED_ORIGINS",
        "https://app.example, https://admin.example",
    )]);
    let res = preflight(&on.base, "https://app.example").await.unwrap();
    assert_eq!(res.status(), 204);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let res = preflight(&on.base, "https://evil.example").await.unwrap();
    assert_eq!(res.status(), 403);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "cors_forbidden");
    let a = signup(&on, "Acme").await;
    let read = |origin: &'static str| {
        a.client
            .request(reqwest::Method::GET, "/v1/files")
            .header("origin", origin)
            .send()
    };
    let res = read("https://admin.example").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://admin.example"
    );
    assert!(res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-request-id"));
    // An unlisted origin's page cannot read the answer (the request is
    // served as for any client; the browser withholds it).
    let res = read("https://evil.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    // Without a token, still 401: CORS grants no access.
    let res = http
        .get(format!("{}/v1/files", on.base))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

/// The decoding search's parameters and the batch: validated (400 naming
/// the field), and bounded by the tier's `max_beam_size` (403
/// `beam_size_not_in_tier`; 5 on basic in the test table) and
/// `max_batch_size` (403 `batch_size_not_in_tier`; 4 on basic). A job that
/// names none decodes greedily, sequentially.
#[tokio::test]
async fn search_params_are_validated_and_bounded_by_the_tier() {
    // Jobs name no model, so admission wants the default (base) installed.
    common::install_models(&["base"]);
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let file = a
        .client
        .upload("a.wav", tone_wav(1.0, 16000))
        .await
        .expect(201);
    let fid = file["id"].as_str().unwrap();
    let submit = |params: serde_json::Value| {
        a.client
            .post("/v1/jobs", json!({"file_id": fid, "params": params}))
    };
    for (params, field) in [
        (json!({"beam_size": 0}), "beam_size"),
        (json!({"beam_size": 11}), "beam_size"),
        (json!({"best_of": 0}), "best_of"),
        (json!({"patience": 0}), "patience"),
        (json!({"patience": -1.5}), "patience"),
        (json!({"length_penalty": 2}), "length_penalty"),
        (json!({"batch_size": 0}), "batch_size"),
        (json!({"batch_size": 17}), "batch_size"),
    ] {
        let answer = submit(params.clone()).await;
        let detail = answer.body["detail"].as_str().unwrap_or("").to_string();
        answer.problem(400, "invalid_request");
        assert!(detail.contains(field), "{params}: {detail}");
    }
    for params in [json!({"beam_size": 6}), json!({"best_of": 8})] {
        let answer = submit(params.clone()).await;
        let detail = answer.body["detail"].as_str().unwrap_or("").to_string();
        answer.problem(403, "beam_size_not_in_tier");
        assert!(detail.contains("basic") && detail.contains('5'), "{detail}");
    }
    a.client
        .post(
            "/v1/workflows",
            json!({"name": "wide", "params": {"beam_size": 6}}),
        )
        .await
        .problem(403, "beam_size_not_in_tier");
    let answer = submit(json!({"batch_size": 5})).await;
    let detail = answer.body["detail"].as_str().unwrap_or("").to_string();
    answer.problem(403, "batch_size_not_in_tier");
    assert!(detail.contains("basic") && detail.contains('4'), "{detail}");
    let job = submit(json!({})).await.expect(202);
    let p = &job["params"];
    assert_eq!((&p["beam_size"], &p["best_of"]), (&json!(1), &json!(1)));
    assert_eq!(p["batch_size"], 1);
    assert_eq!(
        (&p["patience"], &p["length_penalty"]),
        (&json!(1.0), &serde_json::Value::Null)
    );
    let job = submit(json!({"beam_size": 1, "length_penalty": 0.5}))
        .await
        .expect(202);
    assert_eq!(job["params"]["beam_size"], 1);
    assert_eq!(job["params"]["length_penalty"], 0.5);
    // Premium has no bound in the test table: up to the global 10.
    server.set_tier(&a.id, "premium");
    let job = submit(json!({"beam_size": 10, "best_of": 10, "patience": 2}))
        .await
        .expect(202);
    assert_eq!(job["params"]["beam_size"], 10);
    let job = submit(json!({"batch_size": 16})).await.expect(202);
    assert_eq!(job["params"]["batch_size"], 16);
    submit(json!({"beam_size": 11}))
        .await
        .problem(400, "invalid_request");
}
