//! Whisper beyond one window: the 30 s two-speaker telephone sample of
//! pyannote-audio (against its STM reference) and 20 s of music without
//! speech (demucs's test clip), with the real base weights.

use std::path::PathBuf;
use std::time::Instant;

use murmur_models::audio;
use murmur_models::fetch;
use murmur_models::testaudio;
use murmur_models::transcript::SpeechRegion;
use murmur_models::whisper::{ChunkSource, DecodeOptions, WhisperModel};

fn model(name: &str) -> PathBuf {
    fetch::install_cached(name).expect("install model").path
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

#[test]
fn base_on_two_speaker_telephone_sample() {
    let sample = testaudio::pyannote_sample().expect("fetch sample");
    let decoded = audio::decode_file(&sample.wav).expect("decode");
    assert_eq!((decoded.sample_rate, decoded.channels), (16_000, 1));
    let reference = murmur_models::wer::stm_file_text(&sample.stm).expect("read stm");
    let m = WhisperModel::load(&model("base"), &candle_core::Device::Cpu).expect("load");
    let t0 = Instant::now();
    let t = m
        .transcribe(&decoded.samples, &DecodeOptions::default(), &mut |_| true)
        .expect("transcribe");
    let w = wer(&reference, &t.text);
    eprintln!(
        "base on pyannote sample ({:.1} s) in {:.2} s: WER {:.1}%\nref: {reference}\nhyp: {}\n{:#?}",
        t.duration_s,
        t0.elapsed().as_secs_f64(),
        w * 100.0,
        t.text,
        t.segments
    );
    assert_eq!(t.language.as_deref(), Some("en"));
    // Telephone speech; base is far from perfect on it (32% measured, where
    // faster-whisper's greedy decoding of the same weights, without our
    // repeated-sentence guard, gives 54%). The bound catches a broken
    // decoder; the printed figure is the measurement.
    assert!(w < 0.4, "WER {w}");
    let mut last = 0.0;
    for s in &t.segments {
        assert!(s.start >= last - 1e-6 && s.end > s.start && s.end <= t.duration_s + 0.01);
        last = s.end;
    }
}

#[test]
fn base_on_music_without_speech() {
    let mp3 = testaudio::music_mp3().expect("fetch music");
    let decoded = audio::decode_file(&mp3).expect("decode");
    let m = WhisperModel::load(&model("base"), &candle_core::Device::Cpu).expect("load");
    let t = m
        .transcribe(
            &decoded.samples,
            &DecodeOptions {
                language: Some("en".into()),
                ..DecodeOptions::default()
            },
            &mut |_| true,
        )
        .expect("transcribe");
    eprintln!("music: {:#?}", t);
    let n = words(&t.text).len();
    assert!(n <= 5, "{n} words transcribed from music: {}", t.text);
}

/// A recording in memory read back in pieces of `piece` samples.
struct Pieces {
    samples: Vec<f32>,
    piece: usize,
}

impl ChunkSource for Pieces {
    type Error = std::convert::Infallible;
    type Reader = std::vec::IntoIter<Result<Vec<f32>, Self::Error>>;

    fn open(&self) -> Self::Reader {
        self.samples
            .chunks(self.piece)
            .map(|c| Ok(c.to_vec()))
            .collect::<Vec<_>>()
            .into_iter()
    }
}

#[test]
fn streamed_transcription_equals_the_in_memory_one() {
    // The conversation twice and a half: 75 s, three windows and more.
    let sample = testaudio::pyannote_sample().expect("fetch sample");
    let once = audio::decode_file(&sample.wav).expect("decode").samples;
    let samples: Vec<f32> = once
        .iter()
        .cycle()
        .take(once.len() * 5 / 2)
        .copied()
        .collect();
    let n = samples.len();
    let m = WhisperModel::load(&model("tiny.en"), &candle_core::Device::Cpu).expect("load");
    let opts = DecodeOptions::default();
    let source = Pieces {
        samples: samples.clone(),
        piece: 7_001,
    };
    let whole = [SpeechRegion {
        start: 0.0,
        end: n as f64 / 16_000.0,
    }];
    let some = [
        SpeechRegion {
            start: 1.5,
            end: 29.0,
        },
        SpeechRegion {
            start: 33.2,
            end: 61.0,
        },
        SpeechRegion {
            start: 64.0,
            end: 80.0,
        },
    ];
    for regions in [&whole[..], &some[..]] {
        let t0 = Instant::now();
        let in_memory = m
            .transcribe_regions(&samples, regions, &opts, &mut |_| true)
            .expect("in memory");
        let t1 = Instant::now();
        let streamed = m
            .transcribe_regions_streamed(&source, n, regions, &opts, &mut |_| true)
            .expect("streamed");
        eprintln!(
            "{} regions: in memory {:.1} s, streamed {:.1} s, {} segments: {}",
            regions.len(),
            (t1 - t0).as_secs_f64(),
            t1.elapsed().as_secs_f64(),
            streamed.segments.len(),
            streamed.text
        );
        assert!(in_memory.segments.len() > 5);
        assert_eq!(streamed.segments, in_memory.segments);
        assert_eq!(streamed.text, in_memory.text);
    }
    // A source shorter than announced fails instead of inventing silence.
    let short = Pieces {
        samples: samples[..n / 2].to_vec(),
        piece: 7_001,
    };
    let err = m
        .transcribe_regions_streamed(&short, n, &whole, &opts, &mut |_| true)
        .expect_err("short source");
    assert!(err.to_string().contains("ended"), "{err}");
}

/// A sentence said again within a window is speech, not a loop: JFK's
/// sentence twice (22 s, one window) and five times (55 s), with the
/// repetition guard on, greedy and beam 5. base lost copies here (on the
/// five times, beam 5 kept 69 words of 110, VAD on), as the guard cut the
/// second copy and the window went on past it.
#[test]
fn a_sentence_said_again_is_heard_again() {
    let jfk = audio::decode_file(&testaudio::jfk().expect("fetch jfk")).expect("decode");
    let m = WhisperModel::load(&model("base"), &candle_core::Device::Cpu).expect("load");
    for times in [2, 5] {
        let samples = jfk.samples.repeat(times);
        let reference = vec![testaudio::JFK_TEXT; times].join(" ");
        let duration = samples.len() as f64 / 16_000.0;
        for beam_size in [1, 5] {
            let opts = DecodeOptions {
                beam_size,
                ..DecodeOptions::default()
            };
            assert!(opts.suppress_repetition_loops);
            let t = m
                .transcribe(&samples, &opts, &mut |_| true)
                .expect("transcribe");
            let w = wer(&reference, &t.text);
            assert!(
                w <= 0.05,
                "JFK x{times}, beam {beam_size}: WER {w}: {}",
                t.text
            );
            let mut last = 0.0;
            for s in &t.segments {
                assert!(
                    s.start >= last - 1e-6 && s.end >= s.start && s.end <= duration + 0.01,
                    "JFK x{times}, beam {beam_size}: {:#?}",
                    t.segments
                );
                last = s.end;
            }
        }
    }
}
