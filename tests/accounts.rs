//! Credentials against hostile tenants, on the real binary: crafted tokens
//! are refused before any of their logic runs and never slow anyone else;
//! API keys cannot mint credentials; removed users, demoted users and ended
//! sessions lose access on the next request, and open WebSockets close.

mod common;

use std::time::{Duration, Instant};

use common::{signup, Base, Server};
use futures_util::StreamExt;
use serde_json::json;

async fn login(server: &Server, email: &str, password: &str) -> common::Client {
    let anon = server.client();
    let token = anon
        .post(
            "/v1/auth/login",
            json!({"email": email, "password": password}),
        )
        .await
        .expect(200)["token"]
        .as_str()
        .unwrap()
        .to_string();
    anon.with_token(&token)
}

/// Before the fix, each of these took 36-47 s of one runtime thread, and two
/// at once made `/healthz` wait 39 s. Now they are refused on their shape:
/// no Datalog of theirs runs, so neither they nor anyone else waits.
#[tokio::test]
async fn a_join_bomb_token_is_refused_at_once_and_delays_no_one() {
    let server = Server::start();
    let attacker = signup(&server, "Mallory").await;
    let victim = signup(&server, "Victim").await;
    let token = attacker.client.token.clone().unwrap();
    let bomb = murmur::auth::forge::append_join_bomb(&token, 70).unwrap();
    let key = attacker
        .client
        .post("/v1/api-keys", json!({"name": "k"}))
        .await
        .expect(201);
    let key_bomb =
        murmur::auth::forge::append_join_bomb(key["token"].as_str().unwrap(), 70).unwrap();

    let anon = server.client();
    let started = Instant::now();
    let attacks: Vec<_> = (0..8)
        .map(|i| {
            let c = anon.with_token(if i % 2 == 0 { &bomb } else { &key_bomb });
            tokio::spawn(async move { c.get("/v1/jobs").await })
        })
        .collect();
    // Another tenant's requests while the attack is in flight.
    victim.client.get("/v1/jobs").await.expect(200);
    anon.get("/healthz").await.expect(200);
    let victim_done = started.elapsed();
    for a in attacks {
        let answer = a.await.unwrap();
        assert_eq!(answer.status, 401, "{}", answer.text);
        assert!(answer.text.contains("did not add"), "{}", answer.text);
    }
    let all_done = started.elapsed();
    // Bounds two orders of magnitude under the reported freeze, so a
    // loaded CI machine cannot flake them while a regression still fails.
    assert!(
        victim_done < Duration::from_secs(5),
        "victim waited {victim_done:?}"
    );
    assert!(
        all_done < Duration::from_secs(5),
        "attack took {all_done:?}"
    );

    // Oversized and garbage tokens: refused without decoding.
    let huge = "E".repeat(64 * 1024);
    anon.with_token(&huge)
        .get("/v1/me")
        .await
        .problem(401, "unauthorized");
    anon.with_token("not-base64-%%%")
        .get("/v1/me")
        .await
        .problem(401, "unauthorized");
    // The untouched credentials still work.
    attacker.client.get("/v1/me").await.expect(200);
    anon.with_token(key["token"].as_str().unwrap())
        .get("/v1/me")
        .await
        .expect(200);
}

/// A key that expires cannot make a user or a key that does not.
#[tokio::test]
async fn api_keys_cannot_mint_users_or_keys() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc3339();
    let full = a
        .client
        .post(
            "/v1/api-keys",
            json!({"name": "full", "scopes": ["full"], "expires_at": soon}),
        )
        .await
        .expect(201);
    let key = server.client().with_token(full["token"].as_str().unwrap());
    key.post("/v1/api-keys", json!({"name": "forever"}))
        .await
        .problem(403, "session_required");
    key.post(
        "/v1/users",
        json!({"email": "backdoor@acme.example", "password": "a long password", "role": "owner"}),
    )
    .await
    .problem(403, "session_required");
    key.delete(&format!("/v1/users/{}", a.user_id))
        .await
        .problem(403, "session_required");
    // What it may do, it still does.
    key.get("/v1/users").await.expect(200);
    let users = a.client.get("/v1/users").await.expect(200);
    assert_eq!(users["items"].as_array().unwrap().len(), 1);
    let keys = a.client.get("/v1/api-keys").await.expect(200);
    assert_eq!(keys["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn removing_a_user_ends_every_credential_they_hold() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Other").await;
    let admin_row = a
        .client
        .post(
            "/v1/users",
            json!({"email": "adm@acme.example", "password": "admin password", "role": "admin"}),
        )
        .await
        .expect(201);
    let admin_id = admin_row["id"].as_str().unwrap().to_string();
    let admin = login(&server, "adm@acme.example", "admin password").await;
    let key = admin
        .post("/v1/api-keys", json!({"name": "admin's key"}))
        .await
        .expect(201);
    let admin_key = server.client().with_token(key["token"].as_str().unwrap());
    admin_key.get("/v1/me").await.expect(200);

    // An admin cannot remove the owner; another tenant cannot even see them.
    admin
        .delete(&format!("/v1/users/{}", a.user_id))
        .await
        .problem(403, "forbidden");
    b.client
        .delete(&format!("/v1/users/{admin_id}"))
        .await
        .problem(404, "not_found");
    b.client
        .patch_json(&format!("/v1/users/{admin_id}"), json!({"role": "viewer"}))
        .await
        .problem(404, "not_found");
    b.client
        .delete(&format!("/v1/users/{admin_id}/sessions"))
        .await
        .problem(404, "not_found");
    admin.get("/v1/me").await.expect(200);

    a.client
        .delete(&format!("/v1/users/{admin_id}"))
        .await
        .expect(204);
    admin.get("/v1/me").await.problem(401, "unauthorized");
    admin_key.get("/v1/me").await.problem(401, "unauthorized");
    server
        .client()
        .post(
            "/v1/auth/login",
            json!({"email": "adm@acme.example", "password": "admin password"}),
        )
        .await
        .problem(401, "unauthorized");
    let keys = a.client.get("/v1/api-keys").await.expect(200);
    assert!(keys["items"].as_array().unwrap().is_empty(), "{keys}");
    // The last owner stays.
    a.client
        .delete(&format!("/v1/users/{}", a.user_id))
        .await
        .problem(409, "conflict");
    a.client.get("/v1/me").await.expect(200);
}

#[tokio::test]
async fn role_changes_apply_to_tokens_already_issued() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let row = a
        .client
        .post(
            "/v1/users",
            json!({"email": "adm@acme.example", "password": "admin password", "role": "admin"}),
        )
        .await
        .expect(201);
    let id = row["id"].as_str().unwrap().to_string();
    let admin = login(&server, "adm@acme.example", "admin password").await;
    // An admin cannot make themselves owner, nor demote the owner.
    admin
        .patch_json(&format!("/v1/users/{id}"), json!({"role": "owner"}))
        .await
        .problem(403, "forbidden");
    admin
        .patch_json(
            &format!("/v1/users/{}", a.user_id),
            json!({"role": "viewer"}),
        )
        .await
        .problem(403, "forbidden");
    admin.get("/v1/api-keys").await.expect(200);

    let changed = a
        .client
        .patch_json(&format!("/v1/users/{id}"), json!({"role": "viewer"}))
        .await
        .expect(200);
    assert_eq!(changed["role"], "viewer");
    // The admin's token, minted as admin, now acts as a viewer.
    admin
        .post("/v1/api-keys", json!({"name": "late"}))
        .await
        .problem(403, "forbidden");
    admin
        .upload("a.wav", common::tone_wav(0.5, 16000))
        .await
        .problem(403, "forbidden");
    admin.get("/v1/files").await.expect(200);
    // The only owner cannot demote themselves.
    a.client
        .patch_json(
            &format!("/v1/users/{}", a.user_id),
            json!({"role": "admin"}),
        )
        .await
        .problem(409, "conflict");
    a.client
        .patch_json(&format!("/v1/users/{id}"), json!({"role": "wizard"}))
        .await
        .problem(400, "invalid_request");
}

#[tokio::test]
async fn ended_sessions_refuse_old_tokens_and_close_their_sockets() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let old = login(&server, &a.email, &a.password).await;
    let key = a
        .client
        .post("/v1/api-keys", json!({"name": "ws", "scopes": ["read"]}))
        .await
        .expect(201);
    let key_token = key["token"].as_str().unwrap().to_string();

    let ws_url = |token: &str| {
        format!(
            "{}/v1/ws?token={token}",
            server.base.replace("http://", "ws://")
        )
    };
    let (mut session_ws, _) =
        tokio_tungstenite::connect_async(ws_url(old.token.as_deref().unwrap()))
            .await
            .unwrap();
    let (mut key_ws, _) = tokio_tungstenite::connect_async(ws_url(&key_token))
        .await
        .unwrap();

    let ended = a
        .client
        .delete(&format!("/v1/users/{}/sessions", a.user_id))
        .await
        .expect(200);
    assert!(ended["tokens_valid_after"].is_string());
    old.get("/v1/me").await.problem(401, "unauthorized");
    a.client.get("/v1/me").await.problem(401, "unauthorized");
    // API keys are separate credentials: they stay until revoked.
    let key_client = server.client().with_token(&key_token);
    key_client.get("/v1/me").await.expect(200);
    // A new login works at once.
    let fresh = login(&server, &a.email, &a.password).await;
    fresh.get("/v1/me").await.expect(200);

    // The socket of the ended session is told why and closed.
    let closed = read_until_closed(&mut session_ws, Duration::from_secs(15)).await;
    assert!(closed.contains("session has been ended"), "{closed}");

    fresh
        .delete(&format!("/v1/api-keys/{}", key["id"].as_str().unwrap()))
        .await
        .expect(204);
    let closed = read_until_closed(&mut key_ws, Duration::from_secs(15)).await;
    assert!(closed.contains("revoked"), "{closed}");
}

/// Every text message until the server closes the socket; panics if it is
/// still open after `within`.
async fn read_until_closed<S>(ws: &mut S, within: Duration) -> String
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    let mut seen = String::new();
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("socket still open after {within:?}; saw {seen}"),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return seen,
            Ok(Some(Ok(Message::Text(t)))) => seen.push_str(&t),
            Ok(Some(Ok(_))) => {}
        }
    }
}
