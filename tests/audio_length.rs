//! Audio length is measured by decoding, not believed from headers: the
//! tier's maximum audio length at upload, headers that lie, and usage
//! metered from the decoded length, over real HTTP against the real binary.
//! The audio is FLAC silence written by the test (`common::flac_silence`).

mod common;

use common::{files_under, flac_claim_seconds, flac_silence, signup, Server};
use serde_json::json;

/// The test tier table's basic maximum (`max_audio_seconds`).
const BASIC_MAX_S: u32 = 30;

#[tokio::test]
async fn uploads_are_measured_by_decoding_and_refused_past_the_tier_maximum() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;

    // An honest file under the maximum: its length is the decoded one.
    let ok = a
        .client
        .upload("quiet.flac", flac_silence(20, 16_000))
        .await
        .expect(201);
    assert_eq!(ok["duration_s"], 20.0);

    // Twice the maximum: a few kilobytes, refused by length, naming it.
    let long = flac_silence(2 * BASIC_MAX_S, 16_000);
    assert!(
        long.len() < 20_000,
        "silence compresses: {} bytes",
        long.len()
    );
    let refused = a.client.upload("long.flac", long).await;
    let detail = refused.body["detail"].as_str().unwrap_or("").to_string();
    refused.problem(413, "audio_too_long");
    assert!(
        detail.contains("30 s") && detail.contains("basic"),
        "{detail}"
    );

    // 700 s claiming 1 s: still too long for basic (decoding stops at the
    // maximum, whatever the header says)...
    let mut liar = flac_silence(700, 16_000);
    flac_claim_seconds(&mut liar, 1.0, 16_000);
    a.client
        .upload("liar.flac", liar.clone())
        .await
        .problem(413, "audio_too_long");
    // ...and inconsistent where 700 s would be allowed.
    server.set_tier(&a.id, "enterprise");
    let refused = a.client.upload("liar.flac", liar).await;
    let detail = refused.body["detail"].as_str().unwrap_or("").to_string();
    refused.problem(422, "inconsistent_audio");
    assert!(
        detail.contains("1.0 s") && detail.contains("700.0 s"),
        "{detail}"
    );
    // The other way round: a header claiming 10 minutes over 20 s.
    let mut inflated = flac_silence(20, 16_000);
    flac_claim_seconds(&mut inflated, 600.0, 16_000);
    a.client
        .upload("inflated.flac", inflated)
        .await
        .problem(422, "inconsistent_audio");
    // A small disagreement (1 s) is accepted and corrected: the record
    // holds the decoded length.
    let mut off_by_one = flac_silence(20, 16_000);
    flac_claim_seconds(&mut off_by_one, 19.0, 16_000);
    let corrected = a.client.upload("off.flac", off_by_one).await.expect(201);
    assert_eq!(corrected["duration_s"], 20.0);

    // Refusals left nothing behind and counted nothing.
    let files = a.client.get("/v1/files").await.expect(200);
    let items = files["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{files}");
    let on_disk = files_under(&server.data_dir.join("files"));
    assert_eq!(
        on_disk.len(),
        2,
        "only accepted uploads on disk: {on_disk:?}"
    );
    let stored = ok["size"].as_u64().unwrap() + corrected["size"].as_u64().unwrap();
    let usage = a.client.get("/v1/usage").await.expect(200);
    assert_eq!(usage["storage_bytes"], stored);
    assert_eq!(usage["audio_seconds"], 0.0);

    // The tier's limit is shown with the plan, and tenant B sees none of A.
    let sub = b.client.get("/v1/subscription").await.expect(200);
    assert_eq!(sub["limits"]["max_audio_seconds"], BASIC_MAX_S);
    assert_eq!(
        b.client.get("/v1/files").await.expect(200)["items"],
        json!([])
    );
    b.client
        .get(&format!("/v1/files/{}", ok["id"].as_str().unwrap()))
        .await
        .problem(404, "not_found");
    let other = b.client.get("/v1/usage").await.expect(200);
    assert_eq!(other["storage_bytes"], 0);
}

#[tokio::test]
async fn usage_after_a_job_is_the_decoded_length() {
    common::install_models(&["silero-vad"]);
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;
    // Its header says 19 s (within the tolerance); it decodes to 20 s.
    let mut flac = flac_silence(20, 16_000);
    flac_claim_seconds(&mut flac, 19.0, 16_000);
    let file = a.client.upload("quiet.flac", flac).await.expect(201);
    assert_eq!(file["duration_s"], 20.0);
    let job = a
        .client
        .post(
            "/v1/jobs",
            json!({"file_id": file["id"], "params": {"job_type": "vad"}}),
        )
        .await
        .expect(202);
    let done = common::wait_job(&a.client, job["id"].as_str().unwrap(), 120).await;
    assert_eq!(done["status"], "completed", "{done}");
    let usage = a.client.get("/v1/usage").await.expect(200);
    assert_eq!(usage["audio_seconds"], 20.0, "{usage}");
    assert_eq!(usage["jobs"], 1);
    // Tenant B's usage is untouched, and B cannot run a job on A's file.
    b.client
        .post(
            "/v1/jobs",
            json!({"file_id": file["id"], "params": {"job_type": "vad"}}),
        )
        .await
        .problem(404, "not_found");
    let other = b.client.get("/v1/usage").await.expect(200);
    assert_eq!(other["audio_seconds"], 0.0);
    assert_eq!(other["jobs"], 0);
}
