//! The paid features end to end over HTTP, on real recordings and real
//! weights: speaker diarization (pyannote segmentation-3.0 + CAM++) and
//! background-music separation (Spleeter 2 stems), as jobs of a premium
//! tenant, with another tenant looking on.

mod common;

use common::*;
use murmur_models::audio::{self, DecodeOptions};
use murmur_models::diarize::der;
use murmur_models::formats::parse_rttm;
use murmur_models::testaudio;
use serde_json::{json, Value};

async fn premium_and_bystander(server: &Server) -> (Tenant, Tenant) {
    let a = signup(server, "Acme").await;
    let b = signup(server, "Globex").await;
    server.set_tier(&a.id, "premium");
    (a, b)
}

async fn stages_seen(client: &Client, job_id: &str) -> Vec<String> {
    let events = client
        .get(&format!("/v1/jobs/{job_id}/events?limit=1000"))
        .await
        .expect(200);
    let mut stages: Vec<String> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["stage"].as_str().map(str::to_string))
        .collect();
    stages.dedup();
    stages
}

/// Uploads `bytes` as `name`, submits a job with `params` and waits for it
/// to end; answers the job id and the ended job.
async fn run_job(client: &Client, name: &str, bytes: Vec<u8>, params: Value) -> (String, Value) {
    let file = client.upload(name, bytes).await.expect(201);
    let job = client
        .post("/v1/jobs", json!({"file_id": file["id"], "params": params}))
        .await
        .expect(202);
    let id = job["id"].as_str().unwrap().to_string();
    let done = wait_job(client, &id, 900).await;
    (id, done)
}

/// RMS of the interleaved samples of a WAV answer.
fn wav_rms(bytes: &[u8]) -> (f64, audio::DecodedAudio) {
    let tmp = tempfile::NamedTempFile::with_suffix(".wav").unwrap();
    std::fs::write(tmp.path(), bytes).unwrap();
    let decoded = audio::decode_file_with(tmp.path(), &DecodeOptions::stereo(44_100)).unwrap();
    let energy: f64 = decoded.samples.iter().map(|s| f64::from(*s).powi(2)).sum();
    (
        (energy / decoded.samples.len().max(1) as f64).sqrt(),
        decoded,
    )
}

#[tokio::test]
async fn a_diarized_job_names_two_speakers_and_serves_rttm() {
    install_models(&["tiny.en", "silero-vad", "diarization"]);
    let sample = testaudio::pyannote_sample().unwrap();
    let server = Server::start();
    let (a, b) = premium_and_bystander(&server).await;

    let (id, done) = run_job(
        &a.client,
        "call.wav",
        std::fs::read(&sample.wav).unwrap(),
        json!({"model": "tiny.en", "diarize": {"enabled": true}}),
    )
    .await;
    let id = id.as_str();
    assert_eq!(done["status"], "completed", "{done}");
    let stages = stages_seen(&a.client, id).await;
    assert!(stages.contains(&"diarize".to_string()), "stages {stages:?}");

    let result = a
        .client
        .get(&format!("/v1/jobs/{id}/result"))
        .await
        .expect(200);
    let speakers: Vec<&str> = result["speakers"]
        .as_array()
        .expect("a diarized result lists its speakers")
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(speakers.len(), 2, "{result}");
    let segments = result["segments"].as_array().unwrap();
    let mut used = std::collections::BTreeSet::new();
    for seg in segments {
        let who = seg["speaker"]
            .as_str()
            .expect("every segment has a speaker");
        assert!(speakers.contains(&who), "{seg}");
        used.insert(who);
        // Diarizing times words and labels each: a segment is cut where
        // its words change speaker, so a word's speaker is its segment's.
        let words = seg["words"].as_array().expect("a diarized job times words");
        assert!(!words.is_empty(), "{seg}");
        for w in words {
            if let Some(speaker) = w["speaker"].as_str() {
                assert_eq!(speaker, who, "{seg}");
            }
        }
    }
    assert_eq!(used.len(), 2, "both speakers talk in the transcript");

    // RTTM from the same job scores like the model test does.
    let rttm = a
        .client
        .get(&format!("/v1/jobs/{id}/result?format=rttm"))
        .await;
    assert_eq!(rttm.status, 200);
    let hypothesis = parse_rttm(&rttm.text).unwrap();
    let reference = parse_rttm(&std::fs::read_to_string(&sample.rttm).unwrap()).unwrap();
    let report = der::score(&reference, &hypothesis, 0.25);
    println!("DER over HTTP: {report:?}");
    assert!(report.der <= 0.15, "DER {:.3}", report.der);
    // SRT carries the speaker names too.
    let srt = a
        .client
        .get(&format!("/v1/jobs/{id}/result?format=srt"))
        .await;
    assert!(srt.text.contains(speakers[0]) && srt.text.contains(speakers[1]));

    // Another tenant cannot read any of it.
    for path in [
        format!("/v1/jobs/{id}/result"),
        format!("/v1/jobs/{id}/result?format=rttm"),
    ] {
        b.client.get(&path).await.problem(404, "not_found");
    }
    // A basic tenant cannot ask for diarization at all.
    let bf = b
        .client
        .upload("jfk.wav", std::fs::read(testaudio::jfk().unwrap()).unwrap())
        .await
        .expect(201);
    b.client
        .post(
            "/v1/jobs",
            json!({"file_id": bf["id"], "params": {"diarize": {"enabled": true}}}),
        )
        .await
        .problem(403, "feature_not_in_tier");
}

#[tokio::test]
async fn rttm_needs_a_diarized_job() {
    install_models(&["tiny.en", "silero-vad"]);
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let jfk = std::fs::read(testaudio::jfk().unwrap()).unwrap();
    let (id, done) = run_job(&a.client, "jfk.wav", jfk, json!({"model": "tiny.en"})).await;
    assert_eq!(done["status"], "completed");
    a.client
        .get(&format!("/v1/jobs/{id}/result?format=rttm"))
        .await
        .problem(400, "invalid_request");
    // Nor does a transcription job have stems.
    a.client
        .get(&format!("/v1/jobs/{id}/stems/vocals"))
        .await
        .problem(404, "not_found");
}

#[tokio::test]
async fn a_separation_job_returns_downloadable_stems() {
    install_models(&["spleeter-2stems"]);
    let server = Server::start();
    let (a, b) = premium_and_bystander(&server).await;
    let music = std::fs::read(testaudio::music_mp3().unwrap()).unwrap();
    let (id, done) = run_job(
        &a.client,
        "music.mp3",
        music,
        json!({"job_type": "bgm_separation"}),
    )
    .await;
    let id = id.as_str();
    assert_eq!(done["status"], "completed", "{done}");
    assert!(stages_seen(&a.client, id)
        .await
        .contains(&"separate".to_string()));
    let result = a
        .client
        .get(&format!("/v1/jobs/{id}/result"))
        .await
        .expect(200);
    let names: Vec<&str> = result["stems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vocals", "accompaniment"]);

    let mut rms = Vec::new();
    for stem in result["stems"].as_array().unwrap() {
        let url = stem["url"].as_str().unwrap();
        let res = a
            .client
            .request(reqwest::Method::GET, url)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{url}");
        assert_eq!(res.headers()["content-type"], "audio/wav");
        let bytes = res.bytes().await.unwrap();
        let (level, decoded) = wav_rms(&bytes);
        assert_eq!((decoded.sample_rate, decoded.channels), (44_100, 2));
        let input_s = done["duration_s"]
            .as_f64()
            .unwrap_or(result["duration_s"].as_f64().unwrap());
        assert!(
            (decoded.duration_s - input_s).abs() < 0.1,
            "{} vs {input_s}",
            decoded.duration_s
        );
        rms.push(level);
    }
    // Stored sealed with the tenant's key (encryption at rest), served
    // decrypted above.
    for name in ["vocals", "accompaniment"] {
        let path = server
            .data_dir
            .join("artifacts")
            .join(&a.id)
            .join(id)
            .join(format!("{name}.wav"));
        let stored = std::fs::read(&path).unwrap();
        assert!(stored.starts_with(b"MURMSEAL"), "{name} is stored in clear");
        assert!(!stored.windows(4).any(|w| w == b"RIFF"));
    }
    // The recording is music without a voice: nearly all of it is
    // accompaniment.
    println!(
        "stem RMS: vocals {:.4}, accompaniment {:.4}",
        rms[0], rms[1]
    );
    assert!(
        rms[1] > 3.0 * rms[0],
        "vocals {} accompaniment {}",
        rms[0],
        rms[1]
    );

    a.client
        .get(&format!("/v1/jobs/{id}/stems/drums"))
        .await
        .problem(404, "not_found");
    for stem in ["vocals", "accompaniment"] {
        b.client
            .get(&format!("/v1/jobs/{id}/stems/{stem}"))
            .await
            .problem(404, "not_found");
    }
}

/// JFK with the music under it, written as a 32 kHz mono WAV.
fn speech_over_music(gain_db: f32) -> Vec<u8> {
    let rate = 32_000;
    let speech = audio::decode_file_with(
        &testaudio::jfk().unwrap(),
        &DecodeOptions {
            sample_rate: rate,
            ..DecodeOptions::default()
        },
    )
    .unwrap();
    let music = audio::decode_file_with(
        &testaudio::music_mp3().unwrap(),
        &DecodeOptions {
            sample_rate: rate,
            ..DecodeOptions::default()
        },
    )
    .unwrap();
    let rms = |x: &[f32]| (x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32).sqrt();
    let scale = rms(&speech.samples) / rms(&music.samples) * 10f32.powf(gain_db / 20.0);
    let mix: Vec<f32> = speech
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| s + scale * music.samples[i % music.samples.len()])
        .collect();
    let peak = mix.iter().fold(0f32, |m, s| m.max(s.abs())).max(1.0);
    let mix: Vec<f32> = mix.iter().map(|s| s / peak).collect();
    let tmp = tempfile::NamedTempFile::with_suffix(".wav").unwrap();
    audio::write_wav_16bit(tmp.path(), &mix, rate, 1).unwrap();
    std::fs::read(tmp.path()).unwrap()
}

#[tokio::test]
async fn separating_music_before_transcription_keeps_the_words() {
    install_models(&["tiny.en", "silero-vad", "spleeter-2stems"]);
    let server = Server::start();
    let (a, _) = premium_and_bystander(&server).await;
    let (id, done) = run_job(
        &a.client,
        "speech-over-music.wav",
        speech_over_music(-3.0),
        json!({"model": "tiny.en", "separate_bgm": {"enabled": true}}),
    )
    .await;
    let id = id.as_str();
    assert_eq!(done["status"], "completed", "{done}");
    let stages = stages_seen(&a.client, id).await;
    let pos = |s: &str| stages.iter().position(|x| x == s);
    assert!(
        pos("separate") < pos("vad") && pos("vad") < pos("transcribe"),
        "{stages:?}"
    );
    let result: Value = a
        .client
        .get(&format!("/v1/jobs/{id}/result"))
        .await
        .expect(200);
    let wer = murmur_models::wer::wer(testaudio::JFK_TEXT, result["text"].as_str().unwrap());
    println!(
        "WER after separation over HTTP: {wer:.3} ({})",
        result["text"]
    );
    assert!(wer <= 0.2, "WER {wer}: {}", result["text"]);
    // The separated vocals stay downloadable.
    let res = a
        .client
        .request(reqwest::Method::GET, &format!("/v1/jobs/{id}/stems/vocals"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn cancelling_a_separation_ends_it() {
    install_models(&["spleeter-2stems"]);
    let server = Server::start();
    let (a, _) = premium_and_bystander(&server).await;
    let file = a
        .client
        .upload(
            "music.mp3",
            std::fs::read(testaudio::music_mp3().unwrap()).unwrap(),
        )
        .await
        .expect(201);
    let job = a
        .client
        .post(
            "/v1/jobs",
            json!({"file_id": file["id"], "params": {"job_type": "bgm_separation"}}),
        )
        .await
        .expect(202);
    let id = job["id"].as_str().unwrap();
    // Wait until the separation is under way, then cancel.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let j = a.client.get(&format!("/v1/jobs/{id}")).await.expect(200);
        if j["stage"] == "separate" || j["status"] != "queued" && j["status"] != "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never started: {j}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    a.client
        .post(&format!("/v1/jobs/{id}/cancel"), json!({}))
        .await
        .expect(202);
    let done = wait_job(&a.client, id, 120).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    a.client
        .get(&format!("/v1/jobs/{id}/stems/vocals"))
        .await
        .problem(409, "conflict");
}
