//! Subtitle layout options on `GET /v1/jobs/{id}/result`, over HTTP against
//! the real binary with tiny.en on the JFK clip: lines no wider than asked,
//! one cue per word, highlighted words, the words all there in order; bad
//! values, options on other formats and options that need word timestamps
//! on a job without them are refused by name; another tenant gets 404.

mod common;

use common::{signup, wait_job, Answer, Client, Server};
use murmur_models::formats::{parse_srt, parse_vtt};
use serde_json::{json, Value};

fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

async fn jfk_job(c: &Client, params: Value) -> String {
    let bytes = std::fs::read(murmur_models::testaudio::jfk().expect("jfk.wav")).unwrap();
    let file = c.upload("jfk.wav", bytes).await.expect(201);
    let job = c
        .post("/v1/jobs", json!({"file_id": file["id"], "params": params}))
        .await
        .expect(202);
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(wait_job(c, &id, 180).await["status"], "completed");
    id
}

async fn rendered(c: &Client, job: &str, query: &str) -> Answer {
    c.get(&format!("/v1/jobs/{job}/result?{query}")).await
}

#[tokio::test]
async fn subtitle_options_lay_out_cues_from_the_words() {
    common::install_models(&["tiny.en", "silero-vad"]);
    let server = Server::start();
    let a = signup(&server, "Captions").await;
    let timed = jfk_job(
        &a.client,
        json!({"model": "tiny.en", "word_timestamps": true}),
    )
    .await;
    let result = a
        .client
        .get(&format!("/v1/jobs/{timed}/result"))
        .await
        .expect(200);
    let all_words: Vec<Value> = result["segments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["words"].as_array().unwrap().clone())
        .collect();
    let expected = words(result["text"].as_str().unwrap());
    assert!(expected.len() > 15, "{expected:?}");

    // Lines of at most 16 characters, two lines a cue.
    let srt = rendered(
        &a.client,
        &timed,
        "format=srt&max_line_width=16&max_line_count=2",
    )
    .await;
    assert_eq!(srt.status, 200, "{}", srt.text);
    let cues = parse_srt(&srt.text).unwrap();
    for cue in &cues {
        let lines: Vec<&str> = cue.text.lines().collect();
        assert!(lines.len() <= 2, "{lines:?}");
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() <= 16 || !l.contains(' ')),
            "{lines:?}"
        );
    }
    let cue_words: Vec<String> = cues.iter().flat_map(|c| words(&c.text)).collect();
    assert_eq!(cue_words, expected);

    // One cue per word, timed as the word.
    let vtt = rendered(&a.client, &timed, "format=vtt&max_words_per_line=1").await;
    assert_eq!(vtt.status, 200, "{}", vtt.text);
    let cues = parse_vtt(&vtt.text).unwrap();
    assert_eq!(cues.len(), all_words.len());
    for (cue, word) in cues.iter().zip(&all_words) {
        assert_eq!(cue.text, word["word"].as_str().unwrap().trim());
        assert!((cue.start - word["start"].as_f64().unwrap()).abs() < 0.001);
        assert!((cue.end - word["end"].as_f64().unwrap()).abs() < 0.001);
    }

    // Highlighted words: each word underlined once, in order.
    let srt = rendered(&a.client, &timed, "format=srt&highlight_words=true").await;
    assert_eq!(srt.status, 200, "{}", srt.text);
    let underlined: Vec<String> = srt
        .text
        .split("<u>")
        .skip(1)
        .map(|s| s.split("</u>").next().unwrap().to_string())
        .collect();
    let spoken: Vec<String> = all_words
        .iter()
        .map(|w| w["word"].as_str().unwrap().trim().to_string())
        .collect();
    assert_eq!(underlined, spoken);

    // Refused by name.
    rendered(&a.client, &timed, "format=srt&max_line_width=0")
        .await
        .problem(400, "invalid_request");
    let bad = rendered(&a.client, &timed, "format=srt&max_line_count=two").await;
    assert!(bad.text.contains("max_line_count"), "{}", bad.text);
    bad.problem(400, "invalid_request");
    rendered(&a.client, &timed, "format=srt&highlight_words=yes")
        .await
        .problem(400, "invalid_request");
    let txt = rendered(&a.client, &timed, "format=txt&max_line_width=20").await;
    assert!(txt.text.contains("srt and vtt"), "{}", txt.text);
    txt.problem(400, "invalid_request");
    rendered(&a.client, &timed, "max_line_width=20")
        .await
        .problem(400, "invalid_request");

    // Without word timestamps, the width still wraps; the rest need words.
    let plain = jfk_job(&a.client, json!({"model": "tiny.en"})).await;
    let srt = rendered(&a.client, &plain, "format=srt&max_line_width=20").await;
    assert_eq!(srt.status, 200, "{}", srt.text);
    assert!(parse_srt(&srt.text)
        .unwrap()
        .iter()
        .all(|c| c.text.lines().all(|l| l.chars().count() <= 20)));
    let refused = rendered(&a.client, &plain, "format=vtt&max_words_per_line=3").await;
    assert!(refused.text.contains("word_timestamps"), "{}", refused.text);
    refused.problem(400, "invalid_request");

    // Another tenant learns nothing, whatever the options.
    let b = signup(&server, "Other").await;
    b.client
        .get(&format!(
            "/v1/jobs/{timed}/result?format=srt&highlight_words=true"
        ))
        .await
        .problem(404, "not_found");
}
