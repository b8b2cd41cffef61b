//! RevenueCat `TRANSFER` events on the real binary: purchases that move
//! between app users move the paid tier with them, for tokens already
//! issued, once, and never to a tenant the event does not name.

mod common;

use common::revenuecat::{now_ms, rc_event, webhook, SECRET};
use common::{signup, Server};
use serde_json::json;

fn transfer(id: &str, from: &[&str], to: &[&str], ts: i64) -> serde_json::Value {
    json!({
        "id": id,
        "type": "TRANSFER",
        "app_id": "app",
        "event_timestamp_ms": ts,
        "store": "APP_STORE",
        "environment": "PRODUCTION",
        "transferred_from": from,
        "transferred_to": to,
    })
}

fn start() -> Server {
    Server::start_with(&[("MURMUR__BILLING__REVENUECAT__WEBHOOK_SECRET", SECRET)])
}

#[tokio::test]
async fn a_transfer_moves_the_paid_tier_to_the_destination_tenant() {
    let server = start();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;
    let c = signup(&server, "Bystander").await;
    let t0 = now_ms();
    let purchase = rc_event(
        "evt-buy",
        "INITIAL_PURCHASE",
        &a.id,
        "premium",
        t0,
        Some(t0 + 3_600_000),
    );
    webhook(&server, Some(SECRET), purchase).await.expect(200);
    assert_eq!(
        a.client.get("/v1/subscription").await.expect(200)["tier"],
        "premium"
    );

    // Unknown source ids alongside the real one are ignored.
    let ev = transfer(
        "evt-move",
        &["$RCAnonymousID:gone", &a.id],
        &[&b.id],
        t0 + 1000,
    );
    let ack = webhook(&server, Some(SECRET), ev.clone()).await.expect(200);
    assert_eq!(ack["outcome"], "transferred", "{ack}");
    // Tokens minted before the event follow it at once.
    let sa = a.client.get("/v1/subscription").await.expect(200);
    assert_eq!(sa["tier"], "basic", "{sa}");
    assert_eq!(sa["subscription"]["expiration_reason"], "TRANSFERRED");
    let sb = b.client.get("/v1/subscription").await.expect(200);
    assert_eq!(sb["tier"], "premium", "{sb}");
    assert_eq!(sb["subscription"]["entitlement"], "premium");
    let expiry = chrono::DateTime::from_timestamp_millis(t0 + 3_600_000).unwrap();
    let shown: chrono::DateTime<chrono::Utc> = sb["subscription"]["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(shown.timestamp(), expiry.timestamp(), "{sb}");
    // A tenant the event does not name is untouched.
    assert_eq!(
        c.client.get("/v1/subscription").await.expect(200)["tier"],
        "basic"
    );

    // The same event again changes nothing.
    let again = webhook(&server, Some(SECRET), ev).await.expect(200);
    assert_eq!(again["status"], "duplicate");
    assert_eq!(
        b.client.get("/v1/subscription").await.expect(200)["tier"],
        "premium"
    );

    // A transfer out of a tenant with nothing active moves nothing and
    // does not downgrade the destination.
    let empty = transfer("evt-empty", &[&c.id], &[&b.id], t0 + 2000);
    let ack = webhook(&server, Some(SECRET), empty).await.expect(200);
    assert_eq!(
        b.client.get("/v1/subscription").await.expect(200)["tier"],
        "premium",
        "{ack}"
    );
    // Users this server does not know: acknowledged, nothing changes.
    let unknown = transfer("evt-nobody", &["x"], &["y"], t0 + 3000);
    assert_eq!(
        webhook(&server, Some(SECRET), unknown).await.expect(200)["outcome"],
        "unknown_user"
    );
}

#[tokio::test]
async fn a_transfer_is_durable_across_kill9() {
    let server = start();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;
    let t0 = now_ms();
    webhook(
        &server,
        Some(SECRET),
        rc_event(
            "evt-buy",
            "INITIAL_PURCHASE",
            &a.id,
            "enterprise",
            t0,
            Some(t0 + 3_600_000),
        ),
    )
    .await
    .expect(200);
    webhook(
        &server,
        Some(SECRET),
        transfer("evt-move", &[&a.id], &[&b.id], t0 + 1000),
    )
    .await
    .expect(200);
    let server = server.restart_after_kill9();
    let on_new = |c: &common::Client| common::Client {
        base: server.base.clone(),
        ..c.clone()
    };
    assert_eq!(
        on_new(&b.client).get("/v1/subscription").await.expect(200)["tier"],
        "enterprise"
    );
    assert_eq!(
        on_new(&a.client).get("/v1/subscription").await.expect(200)["tier"],
        "basic"
    );
}
