//! Whisper on a real recording: JFK's "ask not" clip with the real tiny.en
//! and base weights (installed from the registries into the test cache).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use murmur_models::fetch;
use murmur_models::testaudio;
use murmur_models::transcript::{SpeechRegion, Transcript};
use murmur_models::whisper::{DecodeOptions, Progress, Task, WhisperError, WhisperModel};

/// Tests run in parallel threads; two models decoding at once on a 2-core
/// machine only make each slower and the timings meaningless.
static SERIAL: Mutex<()> = Mutex::new(());

fn model(name: &str) -> PathBuf {
    fetch::install_cached(name).expect("install model").path
}

/// 16-bit PCM mono WAV -> f32 samples (the fixture's format).
fn read_wav(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("read wav");
    assert_eq!(&bytes[..4], b"RIFF");
    let mut at = 12;
    let mut fmt_ok = false;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("len")) as usize;
        let body = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        if id == b"fmt " {
            let channels = u16::from_le_bytes([body[2], body[3]]);
            let rate = u32::from_le_bytes(body[4..8].try_into().expect("rate"));
            let bits = u16::from_le_bytes([body[14], body[15]]);
            assert_eq!((channels, rate, bits), (1, 16_000, 16));
            fmt_ok = true;
        } else if id == b"data" {
            assert!(fmt_ok);
            return body
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32 / 32768.0)
                .collect();
        }
        at += 8 + len + (len & 1);
    }
    panic!("no data chunk");
}

fn jfk() -> Vec<f32> {
    read_wav(&testaudio::jfk().expect("fetch jfk.wav"))
}

fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Word error rate after lower-casing and dropping punctuation.
fn wer(reference: &str, hypothesis: &str) -> f64 {
    let r = words(reference);
    let h = words(hypothesis);
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len().max(1) as f64
}

fn check_segments(t: &Transcript, from: f64, to: f64) {
    assert!(!t.segments.is_empty());
    let mut last_end = from;
    for (i, s) in t.segments.iter().enumerate() {
        assert_eq!(s.id as usize, i);
        assert!(
            s.start >= last_end - 1e-6,
            "segment {i} starts before the previous ends: {t:?}"
        );
        assert!(s.end > s.start, "segment {i} is empty: {s:?}");
        assert!(
            s.start >= from && s.end <= to + 1e-6,
            "segment {i} outside {from}..{to}: {s:?}"
        );
        assert!(!s.text.is_empty());
        last_end = s.end;
    }
}

fn transcribe_jfk(name: &str, opts: &DecodeOptions) -> Transcript {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let audio = jfk();
    let t0 = Instant::now();
    let m = WhisperModel::load(&model(name), &candle_core::Device::Cpu).expect("load");
    let loaded = t0.elapsed();
    let mut reports = 0;
    let mut segments_reported = 0;
    let t1 = Instant::now();
    let t = m
        .transcribe(&audio, opts, &mut |p: Progress| {
            reports += 1;
            segments_reported += usize::from(p.segment.is_some());
            assert!(p.processed_s <= p.total_s + 1e-9);
            true
        })
        .expect("transcribe");
    eprintln!(
        "{name} {:?}: load {:.2}s, transcribe {:.2}s for {:.2}s audio; {} progress reports\n{t:#?}",
        opts.task,
        loaded.as_secs_f64(),
        t1.elapsed().as_secs_f64(),
        audio.len() as f64 / 16_000.0,
        reports
    );
    assert_eq!(
        segments_reported,
        t.segments.len(),
        "one report per segment"
    );
    t
}

#[test]
fn tiny_en_transcribes_jfk() {
    let t = transcribe_jfk("tiny.en", &DecodeOptions::default());
    let w = wer(testaudio::JFK_TEXT, &t.text);
    eprintln!("tiny.en WER {:.1}%", w * 100.0);
    assert!(w <= 0.05, "WER {w}: {}", t.text);
    assert_eq!(t.language.as_deref(), Some("en"));
    assert!((t.duration_s - 11.0).abs() < 0.1, "{}", t.duration_s);
    check_segments(&t, 0.0, 11.1);
    check_decoding_figures(&t);
}

/// Each segment carries its window's decoding figures: the window's start
/// frame, the segment's own tokens (timestamps around its text), the
/// temperature actually used and the fallback measures within bounds.
fn check_decoding_figures(t: &Transcript) {
    let ts_begin = 50_363; // tiny.en: <|notimestamps|> + 1
    let mut last_seek = 0;
    for s in &t.segments {
        let seek = s.seek.expect("seek");
        assert!(
            seek >= last_seek && seek as f64 / 100.0 <= s.start + 1e-9,
            "{s:?}"
        );
        last_seek = seek;
        assert!(s.tokens.len() >= 3, "{s:?}");
        assert!(s.tokens[0] >= ts_begin && *s.tokens.last().unwrap() >= ts_begin);
        assert!(s.tokens[1..s.tokens.len() - 1].iter().any(|&t| t < 50_256)); // text before EOT
        assert_eq!(s.temperature, Some(0.0), "greedy passed: {s:?}");
        let lp = s.avg_logprob.expect("avg_logprob");
        assert!((-1.0..0.0).contains(&lp), "{s:?}");
        let cr = s.compression_ratio.expect("compression_ratio");
        assert!(cr > 0.5 && cr < 2.4, "{s:?}");
        let ns = s.no_speech_prob.expect("no_speech_prob");
        assert!((0.0..0.6).contains(&ns), "{s:?}");
    }
    // JFK's 11 s fit one window.
    assert_eq!(t.segments[0].seek, Some(0));
}

#[test]
fn base_detects_english_and_transcribes_jfk() {
    let t = transcribe_jfk("base", &DecodeOptions::default());
    let w = wer(testaudio::JFK_TEXT, &t.text);
    eprintln!("base WER {:.1}%", w * 100.0);
    assert!(w <= 0.05, "WER {w}: {}", t.text);
    assert_eq!(t.language.as_deref(), Some("en"), "language detection");
    check_segments(&t, 0.0, 11.1);
}

#[test]
fn base_translate_task_runs() {
    // English speech "translated" to English must stay the same text.
    let opts = DecodeOptions {
        task: Task::Translate,
        ..DecodeOptions::default()
    };
    let t = transcribe_jfk("base", &opts);
    let w = wer(testaudio::JFK_TEXT, &t.text);
    eprintln!("base translate WER {:.1}%", w * 100.0);
    assert!(w <= 0.10, "WER {w}: {}", t.text);
    check_segments(&t, 0.0, 11.1);
}

#[test]
fn english_only_model_refuses_translation_and_other_languages() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = WhisperModel::load(&model("tiny.en"), &candle_core::Device::Cpu).expect("load");
    let audio = vec![0f32; 16_000];
    for opts in [
        DecodeOptions {
            task: Task::Translate,
            ..DecodeOptions::default()
        },
        DecodeOptions {
            language: Some("de".into()),
            ..DecodeOptions::default()
        },
    ] {
        let err = m
            .transcribe(&audio, &opts, &mut |_| true)
            .expect_err("must refuse");
        assert!(matches!(err, WhisperError::EnglishOnly { .. }), "{err}");
        assert!(err.to_string().contains("multilingual"), "{err}");
    }
}

#[test]
fn speech_regions_map_back_to_the_original_timeline() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 20 s of silence, the clip, 5 s of silence: VAD would report the clip.
    let speech = jfk();
    let lead = 20 * 16_000;
    let mut audio = vec![0f32; lead];
    audio.extend_from_slice(&speech);
    audio.extend(std::iter::repeat_n(0f32, 5 * 16_000));
    let clip_s = speech.len() as f64 / 16_000.0;
    let region = SpeechRegion {
        start: 20.0,
        end: 20.0 + clip_s,
    };
    let m = WhisperModel::load(&model("tiny.en"), &candle_core::Device::Cpu).expect("load");
    let t = m
        .transcribe_regions(&audio, &[region], &DecodeOptions::default(), &mut |_| true)
        .expect("transcribe");
    eprintln!("{t:#?}");
    assert!(wer(testaudio::JFK_TEXT, &t.text) <= 0.05, "{}", t.text);
    assert!((t.duration_s - audio.len() as f64 / 16_000.0).abs() < 1e-6);
    check_segments(&t, 20.0, 20.0 + clip_s + 0.01);

    // No speech at all: nothing to decode, and no language to report
    // unless one was asked for.
    let t = m
        .transcribe_regions(&audio, &[], &DecodeOptions::default(), &mut |_| true)
        .expect("transcribe");
    assert!(t.segments.is_empty() && t.text.is_empty());
    assert_eq!(t.language, None);
    let english = DecodeOptions {
        language: Some("en".into()),
        ..DecodeOptions::default()
    };
    let t = m
        .transcribe_regions(&audio, &[], &english, &mut |_| true)
        .expect("transcribe");
    assert_eq!(t.language.as_deref(), Some("en"));
}

#[test]
fn cancellation_is_prompt_and_typed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = WhisperModel::load(&model("tiny.en"), &candle_core::Device::Cpu).expect("load");
    let audio = jfk();
    let mut calls = 0;
    let t0 = Instant::now();
    let err = m
        .transcribe(&audio, &DecodeOptions::default(), &mut |_| {
            calls += 1;
            false
        })
        .expect_err("cancelled");
    assert!(matches!(err, WhisperError::Cancelled), "{err}");
    assert_eq!(calls, 1, "stops at the first report");
    assert!(t0.elapsed().as_secs_f64() < 1.0);
}

#[test]
fn initial_prompt_is_accepted() {
    let opts = DecodeOptions {
        initial_prompt: Some("President Kennedy's inaugural address.".into()),
        ..DecodeOptions::default()
    };
    let t = transcribe_jfk("tiny.en", &opts);
    assert!(wer(testaudio::JFK_TEXT, &t.text) <= 0.05, "{}", t.text);
}

#[test]
fn unknown_language_is_rejected_with_a_hint() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = WhisperModel::load(&model("base"), &candle_core::Device::Cpu).expect("load");
    assert!(m.is_multilingual());
    let opts = DecodeOptions {
        language: Some("klingon".into()),
        ..DecodeOptions::default()
    };
    let err = m
        .transcribe(&[0.0; 16_000], &opts, &mut |_| true)
        .expect_err("unknown language");
    assert!(matches!(err, WhisperError::UnknownLanguage(_)), "{err}");
    assert!(err.to_string().contains("ISO 639-1"), "{err}");
}

#[test]
fn missing_model_files_are_reported_with_a_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = WhisperModel::load(dir.path(), &candle_core::Device::Cpu).expect_err("empty dir");
    assert!(matches!(err, WhisperError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("murmur models fetch"), "{err}");
}

#[test]
fn two_regions_with_a_long_gap_keep_their_own_times() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The clip cut between its two sentences (7.7 s) with 10 s of silence
    // put in between, and silence around.
    let speech = jfk();
    let cut = (7.7 * 16_000.0) as usize;
    let mut audio = vec![0f32; 3 * 16_000];
    audio.extend_from_slice(&speech[..cut]);
    audio.extend(std::iter::repeat_n(0f32, 10 * 16_000));
    audio.extend_from_slice(&speech[cut..]);
    audio.extend(std::iter::repeat_n(0f32, 2 * 16_000));
    let first = SpeechRegion {
        start: 3.0,
        end: 10.7,
    };
    let second = SpeechRegion {
        start: 20.7,
        end: 20.7 + (speech.len() - cut) as f64 / 16_000.0,
    };
    let m = WhisperModel::load(&model("tiny.en"), &candle_core::Device::Cpu).expect("load");
    let t = m
        .transcribe_regions(
            &audio,
            &[second, first],
            &DecodeOptions::default(),
            &mut |_| true,
        )
        .expect("transcribe");
    eprintln!("{t:#?}");
    assert!(wer(testaudio::JFK_TEXT, &t.text) <= 0.05, "{}", t.text);
    check_segments(&t, 3.0, second.end + 0.01);
    for s in &t.segments {
        let inside = |r: &SpeechRegion| s.start >= r.start - 1e-6 && s.end <= r.end + 1e-6;
        assert!(
            inside(&first) || inside(&second),
            "segment spans the gap: {s:?}"
        );
    }
}

#[test]
fn detected_language_comes_with_its_probability_and_the_runners_up() {
    let t = transcribe_jfk("base", &DecodeOptions::default());
    assert_eq!(t.language.as_deref(), Some("en"));
    let p = t.language_probability.expect("detected, so a probability");
    let candidates = t.language_candidates.expect("candidates");
    println!("base on JFK: en {p:.3}, candidates {candidates:?}");
    assert!(p > 0.5 && p <= 1.0, "{p}");
    assert_eq!(candidates.len(), 5);
    assert_eq!(candidates[0].language, "en");
    assert_eq!(candidates[0].probability, p);
    assert!(candidates
        .windows(2)
        .all(|w| w[0].probability >= w[1].probability));
    assert!(candidates.iter().map(|c| c.probability).sum::<f64>() <= 1.0 + 1e-9);
    assert!(candidates
        .iter()
        .all(|c| c.language.len() >= 2 && c.language.len() <= 3));
    // Asked for, or an English-only model: nothing was detected.
    let forced = transcribe_jfk(
        "base",
        &DecodeOptions {
            language: Some("en".into()),
            ..DecodeOptions::default()
        },
    );
    assert!(forced.language_probability.is_none() && forced.language_candidates.is_none());
    let english = transcribe_jfk("tiny.en", &DecodeOptions::default());
    assert!(english.language_probability.is_none());
}

/// One loaded model, two threads transcribing through it at the same time
/// (no lock around the model): each keeps its own decoder state, so each
/// gets exactly the transcript a lone run gets.
#[test]
fn two_threads_share_one_model_and_each_gets_its_own_transcript() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = std::sync::Arc::new(
        WhisperModel::load(&model("tiny.en"), &candle_core::Device::Cpu).expect("load"),
    );
    let audio = jfk();
    // The clip and its second half: two different inputs, so a state that
    // leaked from one job into the other would show in the text.
    let half = audio[audio.len() / 2..].to_vec();
    let alone: Vec<String> = [&audio, &half]
        .iter()
        .map(|a| {
            m.transcribe(a, &DecodeOptions::default(), &mut |_| true)
                .expect("transcribe")
                .text
        })
        .collect();
    // Both threads wait at the barrier, so they decode at the same time.
    let barrier = std::sync::Barrier::new(2);
    let together: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = [&audio, &half]
            .into_iter()
            .map(|a| {
                let (m, barrier) = (&m, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    m.transcribe(a, &DecodeOptions::default(), &mut |_| true)
                        .expect("transcribe")
                        .text
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("thread"))
            .collect()
    });
    assert_eq!(together, alone);
    assert!(
        wer(testaudio::JFK_TEXT, &together[0]) <= 0.05,
        "{together:?}"
    );
    assert_ne!(together[0], together[1]);
}
