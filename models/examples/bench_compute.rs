//! What the compute type costs and buys: f32 against int8 (and optionally
//! f16) on JFK's clip and the 30 s two-speaker call, with tiny.en and base,
//! inside one process (each model loaded once per compute type). Runs
//! alternate between the compute types; prints the median of `--runs`
//! transcription times, the encoder's time for one 30 s window alone, and
//! the WER of each. Build in release:
//! `cargo run --release -p murmur-models --example bench_compute`.
//!
//! Peak memory is per process, so it is measured by running one compute
//! type at a time (`--compute int8`) under `/usr/bin/time -v`.
//!
//! Usage: bench_compute [--runs N] [--models tiny.en,base]
//! [--compute f32,int8] [--beam N] [--clips jfk,call] [--int8-encoder]
//!
//! `--int8-encoder` loads int8 with the encoder's linear layers in int8
//! (`models.int8_encoder`; on a CPU without AVX-512 VNNI it says so and
//! the encoder stays float32).

use std::time::Instant;

use murmur_models::wer::{stm_file_text, wer};
use murmur_models::whisper::{ComputeType, DecodeOptions, WhisperModel};
use murmur_models::{audio, fetch, testaudio};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As `murmur` does (see its docs); CANDLE_NUM_THREADS=2 measures the pool.
    murmur_models::whisper::quantized_kernels_on_calling_thread();
    let mut runs = 3usize;
    let mut models = vec!["tiny.en".to_string(), "base".to_string()];
    let mut computes = vec![ComputeType::F32, ComputeType::Int8];
    let mut beam = 1usize;
    let mut clips = vec!["jfk".to_string(), "call".to_string()];
    let mut int8_encoder = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--runs" => runs = value()?.parse()?,
            "--models" => models = value()?.split(',').map(str::to_string).collect(),
            "--compute" => {
                computes = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--beam" => beam = value()?.parse()?,
            "--clips" => clips = value()?.split(',').map(str::to_string).collect(),
            "--int8-encoder" => int8_encoder = true,
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
    let opts = DecodeOptions {
        beam_size: beam,
        best_of: 5,
        ..DecodeOptions::default()
    };
    println!("| model | audio | compute | load s | encoder s (30 s window) | transcribe s | WER |");
    println!("|---|---|---|---|---|---|---|");
    for name in &models {
        let dir = fetch::install_cached(name)?.path;
        let loaded = computes
            .iter()
            .map(|&c| {
                let t0 = Instant::now();
                let m = WhisperModel::load_with(&dir, &candle_core::Device::Cpu, c, int8_encoder)?;
                if int8_encoder && c == ComputeType::Int8 && !m.int8_encoder() {
                    eprintln!("no AVX-512 VNNI on this CPU: the encoder stays float32");
                }
                Ok((m, t0.elapsed().as_secs_f64()))
            })
            .collect::<Result<Vec<_>, murmur_models::whisper::WhisperError>>()?;
        // The encoder alone, on a window of near-silence (its cost does not
        // depend on the content).
        let mut encoder_s = vec![Vec::new(); loaded.len()];
        for _ in 0..runs {
            for (i, (m, _)) in loaded.iter().enumerate() {
                let window = vec![-0.5f32; m.config().num_mel_bins * 3000];
                let t0 = Instant::now();
                m.encode_window(window)?;
                encoder_s[i].push(t0.elapsed().as_secs_f64());
            }
        }
        let encoder_s: Vec<f64> = encoder_s.into_iter().map(median).collect();
        for (clip, samples, reference) in &recordings {
            if !clips.iter().any(|c| c == clip) {
                continue;
            }
            let mut times = vec![Vec::new(); loaded.len()];
            let mut texts = vec![String::new(); loaded.len()];
            for _ in 0..runs {
                for (i, (m, _)) in loaded.iter().enumerate() {
                    let t0 = Instant::now();
                    let t = m.transcribe(samples, &opts, &mut |_| true)?;
                    times[i].push(t0.elapsed().as_secs_f64());
                    texts[i] = t.text;
                }
            }
            for (i, (m, load_s)) in loaded.iter().enumerate() {
                println!(
                    "| {name} | {clip} | {} | {load_s:.2} | {:.3} | {:.3} | {:.3} |",
                    m.compute_type(),
                    encoder_s[i],
                    median(times[i].clone()),
                    wer(reference, &texts[i]),
                );
            }
        }
    }
    Ok(())
}
