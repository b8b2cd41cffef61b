//! What people record in, over HTTP against the real binary: a browser
//! recording (WebM with Opus, as MediaRecorder makes it), a voice note (Ogg
//! Opus at a voice-note bitrate), a video (Matroska whose first track is
//! video) and Apple Lossless are uploaded, measured and transcribed by
//! tiny.en; surround Opus and a codec Murmur has no decoder for are refused
//! at upload with a problem that names them. The recordings are the JFK clip
//! transcoded by ffmpeg (Debian package `ffmpeg`, which `scripts/test`
//! installs).

mod common;

use std::path::Path;
use std::process::Command;

use common::{signup, wait_job, Server};
use serde_json::json;

const PHRASE: &str = "ask not what your country can do for you";

/// The JFK clip transcoded with `args` into a file named `name`.
fn transcoded(dir: &Path, name: &str, args: &[&str]) -> Vec<u8> {
    let jfk = murmur_models::testaudio::jfk().expect("fetch jfk.wav");
    let out = dir.join(name);
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(&jfk)
        .args(args)
        .arg(&out)
        .status()
        .expect("ffmpeg is needed (Debian package `ffmpeg`)");
    assert!(status.success(), "ffmpeg made no {name}");
    std::fs::read(out).unwrap()
}

fn normalised(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn browser_recordings_voice_notes_and_videos_transcribe() {
    common::install_models(&["tiny.en", "silero-vad"]);
    let server = Server::start();
    let tenant = signup(&server, "formats").await;
    let c = &tenant.client;
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 4] = [
        (
            "recording.webm",
            &[
                "-af",
                "pan=stereo|c0=c0|c1=c0",
                "-c:a",
                "libopus",
                "-b:a",
                "64k",
            ],
        ),
        ("voice-note.ogg", &["-c:a", "libopus", "-b:a", "16k"]),
        (
            "talk.mkv",
            &[
                "-f",
                "lavfi",
                "-i",
                "color=c=navy:s=64x48:r=25",
                "-map",
                "1:v",
                "-map",
                "0:a",
                "-shortest",
                "-c:v",
                "mpeg4",
                "-c:a",
                "libvorbis",
            ],
        ),
        ("memo.m4a", &["-c:a", "alac"]),
    ];
    let mut jobs = Vec::new();
    for (name, args) in cases {
        let bytes = transcoded(dir.path(), name, args);
        let file = c.upload(name, bytes).await.expect(201);
        let duration = file["duration_s"].as_f64().unwrap_or(0.0);
        assert!(
            (duration - 11.0).abs() < 0.3,
            "{name}: measured {duration} s"
        );
        let job = c
            .post(
                "/v1/jobs",
                json!({"file_id": file["id"], "params": {"model": "tiny.en"}}),
            )
            .await
            .expect(202);
        jobs.push((name, job["id"].as_str().unwrap().to_string()));
    }
    for (name, id) in jobs {
        let job = wait_job(c, &id, 120).await;
        assert_eq!(job["status"], "completed", "{name}: {job}");
        let result = c.get(&format!("/v1/jobs/{id}/result")).await.expect(200);
        let text = normalised(result["text"].as_str().unwrap_or_default());
        println!("{name}: {text}");
        assert!(text.contains(PHRASE), "{name}: {text}");
    }
}

#[tokio::test]
async fn uploads_in_codecs_murmur_cannot_decode_are_refused_by_name() {
    let server = Server::start();
    let tenant = signup(&server, "codecs").await;
    let c = &tenant.client;
    let dir = tempfile::tempdir().unwrap();
    let surround = transcoded(
        dir.path(),
        "surround.opus",
        &[
            "-af",
            "pan=5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0",
            "-c:a",
            "libopus",
            "-mapping_family",
            "1",
            "-b:a",
            "64k",
        ],
    );
    let mut cases = vec![("surround.opus", surround, "surround Opus")];
    // Speex needs ffmpeg built with libspeex (Debian's is).
    let has_speex = Command::new("ffmpeg")
        .args(["-hide_banner", "-encoders"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("libspeex"))
        .unwrap_or(false);
    if has_speex {
        cases.push((
            "old.spx",
            transcoded(dir.path(), "old.spx", &["-c:a", "libspeex"]),
            "Speex",
        ));
    } else {
        println!("this ffmpeg has no libspeex; the Speex refusal is not checked");
    }
    for (name, bytes, needle) in cases {
        let answer = c.upload(name, bytes).await;
        let status = answer.status;
        let body = answer.body.clone();
        assert!(
            (400..500).contains(&status),
            "{name}: answered {status} {body}"
        );
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "{name}: {body}");
    }
    // Nothing was kept.
    let files = c.get("/v1/files").await.expect(200);
    assert_eq!(files["items"].as_array().unwrap().len(), 0, "{files}");
}
