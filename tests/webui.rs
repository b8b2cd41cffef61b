//! The Whisper-WebUI backend routes end to end over HTTP, driven the way
//! that backend's own tests drive it (`backend/tests/*.py`): a multipart
//! `file` named like theirs, every parameter of its pydantic models as a
//! query parameter (a `model_dump()`, as httpx encodes it), then polling
//! `GET /task/{identifier}` until `completed`. The one difference is the
//! Authorization header.

mod common;

use std::time::Duration;

use common::*;
use murmur_models::audio::{self, DecodeOptions};
use murmur_models::testaudio;
use serde_json::Value;

/// That backend's test answer for the JFK clip.
const TEST_ANSWER: &str =
    "And so my fellow Americans ask not what your country can do for you ask what you can do for your country";

/// `WhisperParams(model_size=..., compute_type="float32")`,
/// `VadParams()`, `BGMSeparationParams()` and `DiarizationParams()` dumped
/// with `exclude_none=True` and merged, as `TEST_PIPELINE_PARAMS` is there
/// (httpx: booleans as `true`/`false`, `inf` as `inf`, the list
/// `suppress_tokens=[-1]` as one `-1`).
fn pipeline_params(model: &str) -> Vec<(&'static str, String)> {
    let mut p: Vec<(&'static str, String)> = vec![
        ("model_size", model.to_string()),
        ("is_translate", "false".into()),
        ("beam_size", "5".into()),
        ("log_prob_threshold", "-1.0".into()),
        ("no_speech_threshold", "0.6".into()),
        ("compute_type", "float32".into()),
        ("best_of", "5".into()),
        ("patience", "1.0".into()),
        ("condition_on_previous_text", "true".into()),
        ("prompt_reset_on_temperature", "0.5".into()),
        ("temperature", "0.0".into()),
        ("compression_ratio_threshold", "2.4".into()),
        ("length_penalty", "1.0".into()),
        ("repetition_penalty", "1.0".into()),
        ("no_repeat_ngram_size", "0".into()),
        ("suppress_blank", "true".into()),
        ("suppress_tokens", "-1".into()),
        ("max_initial_timestamp", "1.0".into()),
        ("word_timestamps", "false".into()),
        ("prepend_punctuations", "\"'“¿([{-".into()),
        ("append_punctuations", "\"'.。,，!！?？:：”)]}、".into()),
        ("chunk_length", "30".into()),
        ("language_detection_threshold", "0.5".into()),
        ("language_detection_segments", "1".into()),
        ("batch_size", "24".into()),
        ("enable_offload", "true".into()),
    ];
    p.extend(vad_params());
    p.extend(
        bgm_params()
            .into_iter()
            .filter(|(n, _)| *n != "enable_offload"),
    );
    p.extend([
        ("is_diarize", "false".into()),
        ("diarization_device", "cuda".into()),
        ("hf_token", String::new()),
    ]);
    p
}

/// `VadParams().model_dump()` (`TEST_VAD_PARAMS`).
fn vad_params() -> Vec<(&'static str, String)> {
    vec![
        ("vad_filter", "false".into()),
        ("threshold", "0.5".into()),
        ("min_speech_duration_ms", "250".into()),
        ("max_speech_duration_s", "inf".into()),
        ("min_silence_duration_ms", "2000".into()),
        ("speech_pad_ms", "400".into()),
    ]
}

/// `BGMSeparationParams().model_dump()` (`TEST_BGM_SEPARATION_PARAMS`).
fn bgm_params() -> Vec<(&'static str, String)> {
    vec![
        ("is_separate_bgm", "false".into()),
        ("uvr_model_size", "UVR-MDX-NET-Inst_HQ_4".into()),
        ("uvr_device", "cuda".into()),
        ("segment_size", "256".into()),
        ("save_file", "false".into()),
        ("enable_offload", "true".into()),
    ]
}

/// `client.post(path, files={"file": (name, content, "audio/mpeg")},
/// params=params)`.
async fn post_task(
    client: &Client,
    path: &str,
    name: &str,
    bytes: Vec<u8>,
    params: &[(&str, String)],
) -> Answer {
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name(name.to_string())
        .mime_str("audio/mpeg")
        .unwrap();
    let form = reqwest::multipart::Form::new().part("file", part);
    client
        .send(
            client
                .request(reqwest::Method::POST, path)
                .query(params)
                .multipart(form),
        )
        .await
}

/// `wait_for_task_completion`: polls `/task/{identifier}` until
/// `completed`; `failed` is a test failure.
async fn wait_for_task_completion(client: &Client, identifier: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    loop {
        let task = client.get(&format!("/task/{identifier}")).await.expect(200);
        match task["status"].as_str().unwrap() {
            "completed" => return task,
            "failed" => panic!("Task polling failed: {task}"),
            status => assert!(
                ["queued", "in_progress"].contains(&status),
                "unexpected status {status}"
            ),
        }
        assert!(std::time::Instant::now() < deadline, "{identifier}: {task}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Word error rate of `prediction` against `answer` (case-insensitive,
/// punctuation removed, as that backend's test strips `,` and `.`).
fn wer(answer: &str, prediction: &str) -> f64 {
    let words = |s: &str| -> Vec<String> {
        s.split_whitespace()
            .map(|w| {
                w.chars()
                    .filter(|c| c.is_alphanumeric())
                    .collect::<String>()
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect()
    };
    let (a, p) = (words(answer), words(prediction));
    let mut row: Vec<usize> = (0..=p.len()).collect();
    for i in 1..=a.len() {
        let mut prev = row[0];
        row[0] = i;
        for j in 1..=p.len() {
            let cur = row[j];
            row[j] = (row[j] + 1)
                .min(row[j - 1] + 1)
                .min(prev + usize::from(a[i - 1] != p[j - 1]));
            prev = cur;
        }
    }
    row[p.len()] as f64 / a.len() as f64
}

fn jfk() -> Vec<u8> {
    std::fs::read(testaudio::jfk().unwrap()).unwrap()
}

#[tokio::test]
async fn transcription_and_vad_tasks_answer_in_that_backends_shapes() {
    install_models(&["tiny.en", "silero-vad"]);
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;

    // test_backend_transcription.py, with a model Murmur has installed.
    let queued = post_task(
        &a.client,
        "/transcription",
        "jfk.wav",
        jfk(),
        &pipeline_params("tiny.en"),
    )
    .await
    .expect(201);
    assert_eq!(queued["status"], "queued");
    // Every parameter sent was at that backend's default: nothing to report.
    assert_eq!(queued["message"], "Transcription task has queued");
    let id = queued["identifier"].as_str().unwrap().to_string();
    let done = wait_for_task_completion(&a.client, &id).await;
    assert_eq!(done["identifier"], id.as_str());
    assert_eq!(done["task_type"], "transcription");
    assert_eq!(done["result_type"], "json");
    assert_eq!(done["progress"], 1.0);
    assert!(done["duration"].as_f64().unwrap() > 0.0, "{done}");
    assert!(done["error"].is_null());
    assert_eq!(done["task_params"]["model_size"], "tiny.en");
    assert_eq!(done["task_params"]["vad_filter"], false);
    let segments = done["result"].as_array().expect("a list of segments");
    assert!(!segments.is_empty(), "Transcription text is empty");
    for seg in segments {
        for field in [
            "id",
            "seek",
            "text",
            "start",
            "end",
            "tokens",
            "temperature",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
            "words",
        ] {
            assert!(seg.get(field).is_some(), "segment lacks {field}: {seg}");
        }
        assert!(seg["end"].as_f64().unwrap() > seg["start"].as_f64().unwrap());
        // Whisper's own figures for the segment's window; words not asked.
        assert!(seg["seek"].is_u64() && seg["tokens"].is_array(), "{seg}");
        assert!(
            seg["avg_logprob"].is_f64() && seg["temperature"].is_f64(),
            "{seg}"
        );
        assert!(seg["words"].is_null());
    }
    let text: Vec<&str> = segments
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    let rate = wer(TEST_ANSWER, &text.join(" "));
    assert!(rate < 0.1, "WER is too high, it's {rate}: {text:?}");
    // The task is a Murmur job of the caller's, with the same id.
    let job = a.client.get(&format!("/v1/jobs/{id}")).await.expect(200);
    assert_eq!(job["status"], "completed");

    // test_backend_vad.py: the trailing-slash path, as the routes declare it.
    let queued = post_task(&a.client, "/vad/", "jfk.wav", jfk(), &vad_params())
        .await
        .expect(201);
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["message"], "VAD task has queued");
    let vad_id = queued["identifier"].as_str().unwrap().to_string();
    let done = wait_for_task_completion(&a.client, &vad_id).await;
    assert_eq!(done["task_type"], "vad");
    let chunks = done["result"].as_array().unwrap();
    assert!(
        !chunks.is_empty() && chunks[0].get("start").is_some() && chunks[0].get("end").is_some()
    );
    // Sample offsets at 16 kHz inside the 11 s clip, in order.
    for c in chunks {
        let (s, e) = (c["start"].as_u64().unwrap(), c["end"].as_u64().unwrap());
        assert!(s < e && e <= 11 * 16_000 + 16_000, "{c}");
    }

    // No files from either task: that backend keeps no uploads, nor do we
    // once the jobs have ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let files = a.client.get("/v1/files").await.expect(200);
        if files["items"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "uploads kept: {files}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A transcription has no file to download: that backend's 404.
    let gone = a.client.get(&format!("/task/file/{id}")).await;
    assert!(gone.body["detail"]
        .as_str()
        .unwrap()
        .starts_with("File download is only supported for bgm separation"));
    gone.problem(404, "not_found");

    // Tenant B sees none of A's tasks, the same way as ids that never were.
    for path in [
        format!("/task/{id}"),
        format!("/task/file/{id}"),
        format!("/task/{vad_id}"),
        "/task/j_nothing_here".to_string(),
    ] {
        let answer = b.client.get(&path).await;
        assert_eq!(answer.body["detail"], "Identifier not found", "{path}");
        answer.problem(404, "not_found");
    }
    b.client
        .get(&format!("/v1/jobs/{id}"))
        .await
        .problem(404, "not_found");
}

#[tokio::test]
async fn word_timestamps_come_as_that_backends_words() {
    install_models(&["tiny.en", "silero-vad"]);
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let mut params = pipeline_params("tiny.en");
    params.retain(|(n, _)| *n != "word_timestamps");
    params.push(("word_timestamps", "true".into()));
    let queued = post_task(&a.client, "/transcription/", "jfk.wav", jfk(), &params)
        .await
        .expect(201);
    assert_eq!(queued["message"], "Transcription task has queued");
    let id = queued["identifier"].as_str().unwrap().to_string();
    let done = wait_for_task_completion(&a.client, &id).await;
    assert_eq!(done["task_params"]["word_timestamps"], true);
    let segments = done["result"].as_array().expect("segments");
    let mut last_end = 0.0;
    for seg in segments {
        let words = seg["words"].as_array().expect("words per segment");
        assert!(!words.is_empty(), "{seg}");
        let joined: String = words.iter().map(|w| w["word"].as_str().unwrap()).collect();
        assert_eq!(joined.trim(), seg["text"].as_str().unwrap());
        for w in words {
            let (start, end) = (w["start"].as_f64().unwrap(), w["end"].as_f64().unwrap());
            assert!(start <= end && start >= last_end - 1e-9, "{w}");
            assert!((0.0..=1.0).contains(&w["probability"].as_f64().unwrap()));
            last_end = end;
        }
    }
    // JFK's last word, "country", ends near the end of the 11 s clip.
    assert!((10.0..=11.0).contains(&last_end), "{last_end}");
}

#[tokio::test]
async fn what_murmur_cannot_do_is_refused_by_name() {
    install_models(&["tiny.en", "silero-vad"]);
    let server = Server::start();
    let a = signup(&server, "Acme").await;

    // Without a key: 401, as everywhere in Murmur.
    let anonymous = server.client();
    post_task(&anonymous, "/transcription/", "jfk.wav", jfk(), &[])
        .await
        .problem(401, "unauthorized");
    anonymous
        .get("/task/j_x")
        .await
        .problem(401, "unauthorized");

    // Hotwords are asked for: Murmur's decoder cannot be steered with them.
    let mut params = pipeline_params("tiny.en");
    params.push(("hotwords", "Americans".into()));
    let refused = post_task(&a.client, "/transcription/", "jfk.wav", jfk(), &params).await;
    assert!(refused.body["detail"]
        .as_str()
        .unwrap()
        .contains("hotwords"));
    refused.problem(422, "unsupported_parameter");

    // A model Murmur does not run, a misspelt parameter, a bad value.
    for (name, value, status, code) in [
        (
            "model_size",
            "distil-large-v3",
            422,
            "unsupported_parameter",
        ),
        ("langauge", "en", 400, "invalid_request"),
        ("beam_size", "many", 400, "invalid_request"),
        ("threshold", "1.5", 400, "invalid_request"),
    ] {
        let answer = post_task(
            &a.client,
            "/transcription/",
            "jfk.wav",
            jfk(),
            &[("lang", "en".into()), (name, value.into())],
        )
        .await;
        assert!(answer.text.contains(name), "{name}: {}", answer.text);
        answer.problem(status, code);
    }
    // The search is the job's: beam_size=1 runs greedy, quietly; a knob
    // Murmur lacks (repetition_penalty) is named in the message.
    let queued = post_task(
        &a.client,
        "/transcription/",
        "jfk.wav",
        jfk(),
        &[
            ("model_size", "tiny.en".into()),
            ("beam_size", "1".into()),
            ("repetition_penalty", "1.2".into()),
        ],
    )
    .await
    .expect(201);
    let message = queued["message"].as_str().unwrap();
    assert!(message.contains("repetition_penalty=1.2"), "{queued}");
    assert!(!message.contains("beam_size"), "{queued}");
    let job = a
        .client
        .get(&format!(
            "/v1/jobs/{}",
            queued["identifier"].as_str().unwrap()
        ))
        .await
        .expect(200);
    assert_eq!(job["params"]["beam_size"], 1, "{job}");
    // Wider than the basic tier's max_beam_size (5 in the test table).
    post_task(
        &a.client,
        "/transcription/",
        "jfk.wav",
        jfk(),
        &[("model_size", "tiny.en".into()), ("beam_size", "8".into())],
    )
    .await
    .problem(403, "beam_size_not_in_tier");

    // No file part.
    a.client
        .send(
            a.client
                .request(reqwest::Method::POST, "/vad/")
                .multipart(reqwest::multipart::Form::new().text("x", "y")),
        )
        .await
        .problem(400, "invalid_request");

    // The basic tier has neither separation nor diarization: Murmur's gates.
    post_task(
        &a.client,
        "/bgm-separation/",
        "jfk.wav",
        jfk(),
        &bgm_params(),
    )
    .await
    .problem(403, "feature_not_in_tier");
    post_task(
        &a.client,
        "/transcription/",
        "jfk.wav",
        jfk(),
        &[
            ("model_size", "tiny.en".into()),
            ("is_diarize", "true".into()),
        ],
    )
    .await
    .problem(403, "feature_not_in_tier");

    // Refused requests keep no upload.
    wait_no_files(&a.client).await;
}

async fn wait_no_files(client: &Client) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let files = client.get("/v1/files").await.expect(200);
        if files["items"].as_array().unwrap().is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "uploads kept: {files}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_separation_task_downloads_as_a_zip_of_two_wavs() {
    install_models(&["spleeter-2stems"]);
    let server = Server::start();
    let a = signup(&server, "Acme").await;
    let b = signup(&server, "Globex").await;
    server.set_tier(&a.id, "premium");
    let music = std::fs::read(testaudio::music_mp3().unwrap()).unwrap();

    // test_backend_bgm_separation.py
    let queued = post_task(
        &a.client,
        "/bgm-separation",
        "music.mp3",
        music,
        &bgm_params(),
    )
    .await
    .expect(201);
    assert_eq!(queued["status"], "queued");
    let message = queued["message"].as_str().unwrap();
    assert!(message.starts_with("BGM Separation task has queued"));
    assert!(
        message.contains("uvr_model_size=UVR-MDX-NET-Inst_HQ_4"),
        "{message}"
    );
    let id = queued["identifier"].as_str().unwrap().to_string();

    // Before it completes there is no file yet (or it completes first).
    let early = a.client.get(&format!("/task/file/{id}")).await;
    assert!([200, 409].contains(&early.status), "{}", early.text);

    let done = wait_for_task_completion(&a.client, &id).await;
    assert_eq!(done["task_type"], "bgm_separation");
    assert_eq!(done["result_type"], "filepath");
    let result = &done["result"];
    assert!(result["instrumental_hash"]
        .as_str()
        .is_some_and(|h| !h.is_empty()));
    assert!(result["vocal_hash"].as_str().is_some_and(|h| !h.is_empty()));

    // fetch_file_response
    let res = a
        .client
        .request(reqwest::Method::GET, &format!("/task/file/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/zip");
    let announced: u64 = res.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = res.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, announced);

    // Read back by an independent implementation (the zip crate), which
    // checks every entry's CRC-32 as it reads.
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    assert_eq!(archive.len(), 2);
    let mut names = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        names.push(name.clone());
        let mut wav = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut wav).unwrap();
        assert_eq!(&wav[..4], b"RIFF");
        let tmp = tempfile::NamedTempFile::with_suffix(".wav").unwrap();
        std::fs::write(tmp.path(), &wav).unwrap();
        let decoded = audio::decode_file_with(tmp.path(), &DecodeOptions::stereo(44_100)).unwrap();
        assert_eq!((decoded.sample_rate, decoded.channels), (44_100, 2));
        assert!(decoded.duration_s > 1.0, "{name}: {} s", decoded.duration_s);
    }
    let expect = |h: &Value| format!("{}.wav", h.as_str().unwrap());
    assert_eq!(
        names,
        [
            expect(&result["instrumental_hash"]),
            expect(&result["vocal_hash"])
        ]
    );

    // Tenant B: not a trace of it.
    for path in [format!("/task/{id}"), format!("/task/file/{id}")] {
        let answer = b.client.get(&path).await;
        assert_eq!(answer.body["detail"], "Identifier not found");
        answer.problem(404, "not_found");
    }
}
