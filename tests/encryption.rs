//! Encryption at rest, on the real binary: what a tenant stores (uploads,
//! results, file names, event logs) is sealed on disk with the tenant's
//! key, served back intact, bound to its tenant and place, and the master
//! key that wraps the tenant keys is checked at start and can be rotated.

mod common;

use common::{files_under, signup, Server};
use serde_json::json;

const MAGIC: &[u8] = b"MURMSEAL";

fn jfk_bytes() -> Vec<u8> {
    std::fs::read(murmur_models::testaudio::jfk().expect("fetch jfk.wav")).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| contains(&b, needle)))
        .collect()
}

async fn download(c: &common::Client, fid: &str) -> reqwest::Response {
    c.request(reqwest::Method::GET, &format!("/v1/files/{fid}/content"))
        .send()
        .await
        .unwrap()
}

/// The same tenant's client against a restarted server.
fn moved(c: &common::Client, server: &Server) -> common::Client {
    common::Client {
        base: server.base.clone(),
        ..c.clone()
    }
}

#[tokio::test]
async fn what_a_tenant_stores_is_sealed_on_disk_and_served_back_intact() {
    common::install_models(&["tiny.en", "silero-vad"]);
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let original = jfk_bytes();
    let name = "confidential-board-meeting.wav";
    let file = a.client.upload(name, original.clone()).await.expect(201);
    let fid = file["id"].as_str().unwrap().to_string();
    assert_eq!(file["size"], original.len());

    // The blob on disk is sealed: no stretch of the recording shows.
    let blob = server.data_dir.join("files").join(&a.id).join(&fid);
    let on_disk = std::fs::read(&blob).unwrap();
    assert!(on_disk.starts_with(MAGIC), "the upload is stored in clear");
    assert!(!contains(&on_disk, &original[4096..4160]));
    assert!(!contains(&on_disk, b"RIFF"));

    // Served back byte for byte, as audio.
    let res = download(&a.client, &fid).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "audio/wav");
    assert_eq!(
        res.headers()["content-length"],
        original.len().to_string().as_str()
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), original.as_slice());

    // A job decodes the sealed upload (streaming VAD, then Whisper).
    let job = a
        .client
        .post(
            "/v1/jobs",
            json!({"file_id": fid, "params": {"model": "tiny.en", "vad": {"enabled": true}}}),
        )
        .await
        .expect(202);
    let jid = job["id"].as_str().unwrap().to_string();
    let done = common::wait_job(&a.client, &jid, 180).await;
    assert_eq!(done["status"], "completed", "{done}");
    let text = a
        .client
        .get(&format!("/v1/jobs/{jid}/result"))
        .await
        .expect(200)["text"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(text.contains("country"), "{text}");

    // Stopped (everything flushed), the store holds neither the transcript
    // nor the file's name in clear, and the master key is private.
    let mut server = server;
    server.terminate();
    let db = server.data_dir.join("db");
    assert!(!files_under(&db).is_empty());
    assert_eq!(files_containing(&db, b"your country").len(), 0);
    assert_eq!(files_containing(&db, name.as_bytes()).len(), 0);
    let key_file = server.data_dir.join("master_key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(key.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(
        files_containing(&server.data_dir, key.trim().as_bytes()).len(),
        1
    );
    // The token signing key is sealed by the master key: a copy of the
    // data directory cannot mint tokens.
    let root = std::fs::read_to_string(server.data_dir.join("root_key")).unwrap();
    assert!(root.starts_with("sealed:"), "{root}");

    // After a restart, all of it reads back.
    let server = server.restart_graceful();
    let again = moved(&a.client, &server);
    let text_after = again
        .get(&format!("/v1/jobs/{jid}/result"))
        .await
        .expect(200);
    assert!(text_after["text"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("country"));
    assert_eq!(
        again.get(&format!("/v1/files/{fid}")).await.expect(200)["name"],
        name
    );
    let events = again
        .get(&format!("/v1/jobs/{jid}/events"))
        .await
        .expect(200);
    assert!(
        events["items"].as_array().is_some_and(|e| e.len() >= 3),
        "{events}"
    );
    let res = download(&again, &fid).await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), original.as_slice());
}

#[tokio::test]
async fn a_sealed_file_moved_to_another_tenant_or_place_does_not_open() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Other").await;
    let a_bytes = common::tone_wav(1.0, 16000);
    let b_bytes = common::tone_wav(2.0, 8000);
    let fa = a.client.upload("a.wav", a_bytes.clone()).await.expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let fb = b.client.upload("b.wav", b_bytes.clone()).await.expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let fa2 = a.client.upload("a2.wav", b_bytes.clone()).await.expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = |t: &str, f: &str| server.data_dir.join("files").join(t).join(f);

    // Someone with write access to the disk puts A's sealed upload where
    // B's was: B's download fails, and never yields A's audio.
    std::fs::copy(path(&a.id, &fa), path(&b.id, &fb)).unwrap();
    let res = download(&b.client, &fb).await;
    assert_eq!(res.status(), 500);
    let body = res.bytes().await.unwrap();
    assert!(!contains(&body, &a_bytes[44..300]));
    assert!(!contains(&body, b"RIFF"));

    // Within one tenant too: a file copied over another's place fails.
    std::fs::copy(path(&a.id, &fa), path(&a.id, &fa2)).unwrap();
    assert_eq!(download(&a.client, &fa2).await.status(), 500);
    // The original still opens.
    let res = download(&a.client, &fa).await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), a_bytes.as_slice());

    // A job on the swapped file fails as bad input; nothing of A's leaks.
    let job = b
        .client
        .post(
            "/v1/jobs",
            json!({"file_id": fb, "params": {"job_type": "vad"}}),
        )
        .await
        .expect(202);
    let done = common::wait_job(&b.client, job["id"].as_str().unwrap(), 60).await;
    assert_eq!(done["status"], "failed", "{done}");
}

#[tokio::test]
async fn a_wrong_master_key_is_refused_at_start_and_rotation_moves_to_a_new_one() {
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let fid = a
        .client
        .upload("a.wav", common::tone_wav(1.0, 16000))
        .await
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut server = server;
    server.terminate();
    let old_key = std::fs::read_to_string(server.data_dir.join("master_key")).unwrap();

    // Another key: refused at start, naming the problem.
    let other = "ab".repeat(32);
    let err = server.start_refused(&[("MURMUR_MASTER_KEY", &other)]);
    assert!(err.contains("master key"), "{err}");
    // A configured key file that does not exist is not created over a
    // store whose keys another key wrapped.
    let missing = server.data_dir.parent().unwrap().join("nowhere.key");
    let err =
        server.start_refused(&[("MURMUR__STORE__MASTER_KEY_FILE", missing.to_str().unwrap())]);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!missing.exists());

    // Rotation to a new key file (created by the command).
    let new_file = server.data_dir.parent().unwrap().join("new.key");
    let new_path = new_file.to_str().unwrap();
    let (ok, out) = server.admin(&["rotate-master-key", "--new-key-file", new_path], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("rewrapped 1 tenant keys"), "{out}");
    let new_key = std::fs::read_to_string(&new_file).unwrap();
    assert_ne!(new_key.trim(), old_key.trim());
    // The default key file was replaced, so the server starts as before.
    assert_eq!(
        std::fs::read_to_string(server.data_dir.join("master_key"))
            .unwrap()
            .trim(),
        new_key.trim()
    );
    // The signing key was sealed again, by the new key.
    let root = std::fs::read_to_string(server.data_dir.join("root_key")).unwrap();
    assert!(root.starts_with("sealed:"), "{root}");
    // The old key no longer opens the store.
    let err = server.start_refused(&[("MURMUR_MASTER_KEY", old_key.trim())]);
    assert!(err.contains("master key"), "{err}");
    // Running the rotation again changes nothing.
    let (ok, out) = server.admin(&["rotate-master-key", "--new-key-file", new_path], &[]);
    assert!(!ok && out.contains("already in use"), "{out}");

    // With the new key (here from the environment), everything opens.
    let server = server.restart_with_env("MURMUR_MASTER_KEY", new_key.trim());
    let c = moved(&a.client, &server);
    let res = download(&c, &fid).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        common::tone_wav(1.0, 16000).as_slice()
    );
    assert_eq!(
        c.get(&format!("/v1/files/{fid}")).await.expect(200)["name"],
        "a.wav"
    );
}

/// A data directory upgraded from a build before encryption at rest: its
/// uploads and stems in clear are sealed in the background after start,
/// and read back the same.
#[tokio::test]
async fn files_an_older_build_wrote_in_clear_are_sealed_after_start() {
    common::install_models(&["silero-vad"]);
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let audio = common::tone_wav(1.0, 16000);
    let fid = a.client.upload("old.wav", audio.clone()).await.expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
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
    let mut server = server;
    server.terminate();
    // As an older build left them: the upload and a stem in clear.
    let blob = server.data_dir.join("files").join(&a.id).join(&fid);
    std::fs::write(&blob, &audio).unwrap();
    let stem_dir = server.data_dir.join("artifacts").join(&a.id).join(&jid);
    std::fs::create_dir_all(&stem_dir).unwrap();
    let stem = stem_dir.join("vocals.wav");
    let stem_audio = common::tone_wav(0.5, 44100);
    std::fs::write(&stem, &stem_audio).unwrap();

    let server = server.restart_graceful();
    let sealed = |p: &std::path::Path| std::fs::read(p).unwrap().starts_with(MAGIC);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !(sealed(&blob) && sealed(&stem)) {
        assert!(
            std::time::Instant::now() < deadline,
            "not sealed after 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!contains(&std::fs::read(&blob).unwrap(), b"RIFF"));
    let c = moved(&a.client, &server);
    let res = download(&c, &fid).await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), audio.as_slice());
    let res = c
        .request(
            reqwest::Method::GET,
            &format!("/v1/jobs/{jid}/stems/vocals"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), stem_audio.as_slice());
    // Nothing half-written is left beside them.
    let leftovers: Vec<_> = files_under(&server.data_dir.join("files"))
        .into_iter()
        .chain(files_under(&stem_dir))
        .filter(|p| p.to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
