//! What beam search costs: greedy against beam 5 (best_of 5, as
//! faster-whisper's and Whisper-WebUI's defaults) on JFK's clip and the
//! 30 s two-speaker call, with tiny.en and base, inside one process (the
//! model loaded once). Runs alternate greedy and beam; prints the median of
//! `--runs` transcription times and the WER of each. Build in release:
//! `cargo run --release -p murmur-models --example bench_beam`.
//!
//! Usage: bench_beam [--runs N] [--models tiny.en,base] [--beam N]

use std::time::Instant;

use murmur_models::wer::{stm_file_text, wer};
use murmur_models::whisper::{DecodeOptions, WhisperModel};
use murmur_models::{audio, fetch, testaudio};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut runs = 3usize;
    let mut models = vec!["tiny.en".to_string(), "base".to_string()];
    let mut beam = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--runs" => runs = value()?.parse()?,
            "--models" => models = value()?.split(',').map(str::to_string).collect(),
            "--beam" => beam = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let call = testaudio::pyannote_sample()?;
    let recordings = [
        (
            "jfk",
            audio::decode_file(&testaudio::jfk()?)?.samples,
            testaudio::JFK_TEXT.to_string(),
        ),
        (
            "call",
            audio::decode_file(&call.wav)?.samples,
            stm_file_text(&call.stm)?,
        ),
    ];
    println!("| model | audio | greedy s | beam {beam} s | ratio | greedy WER | beam {beam} WER |");
    println!("|---|---|---|---|---|---|---|");
    for name in &models {
        let m = WhisperModel::load(
            &fetch::install_cached(name)?.path,
            &candle_core::Device::Cpu,
        )?;
        for (clip, samples, reference) in &recordings {
            let mut times = [Vec::new(), Vec::new()];
            let mut texts = [String::new(), String::new()];
            for _ in 0..runs {
                for (i, beam_size) in [1, beam].into_iter().enumerate() {
                    let opts = DecodeOptions {
                        beam_size,
                        best_of: 5,
                        ..DecodeOptions::default()
                    };
                    let t0 = Instant::now();
                    let t = m.transcribe(samples, &opts, &mut |_| true)?;
                    times[i].push(t0.elapsed().as_secs_f64());
                    texts[i] = t.text;
                }
            }
            let [greedy, beamed] = times.map(median);
            println!(
                "| {name} | {clip} | {greedy:.2} | {beamed:.2} | {:.2} | {:.3} | {:.3} |",
                beamed / greedy,
                wer(reference, &texts[0]),
                wer(reference, &texts[1]),
            );
        }
    }
    Ok(())
}
