//! Diarization speed on real audio: seconds of compute per minute of audio.
//!
//! `cargo run --release -p murmur-models --example bench_diarize [FILE]...`
//! (default: the pyannote sample, JFK, and both concatenated four times).
//! Installs the `diarization` model into the cache on first use.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use murmur_models::audio::decode_file;
use murmur_models::diarize::{DiarizeOptions, Diarizer};
use murmur_models::{fetch, registry, testaudio};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = registry::cache_dir();
    let installed = fetch::install("diarization", &cache.join("models"), &cache, &mut |_| {})?;
    let started = Instant::now();
    let diarizer = Diarizer::load(&installed.path, &Device::Cpu)?;
    println!("load: {:.2} s", started.elapsed().as_secs_f64());

    let mut inputs: Vec<(String, Vec<f32>)> = Vec::new();
    let files: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if files.is_empty() {
        let sample = decode_file(&testaudio::pyannote_sample()?.wav)?.samples;
        let jfk = decode_file(&testaudio::jfk()?)?.samples;
        let mut long = Vec::new();
        for _ in 0..4 {
            long.extend_from_slice(&sample);
            long.extend_from_slice(&jfk);
        }
        inputs.push(("pyannote sample".into(), sample));
        inputs.push(("jfk".into(), jfk));
        inputs.push(("(sample + jfk) x 4".into(), long));
    } else {
        for f in files {
            inputs.push((f.display().to_string(), decode_file(&f)?.samples));
        }
    }

    // Where the time goes: one segmentation batch and one embedding.
    let window = vec![0.01f32; 160_000];
    let started = Instant::now();
    diarizer.segmentation().activity(&[window.as_slice(); 8])?;
    println!(
        "segmentation: {:.3} s per 10 s window (batch of 8)",
        started.elapsed().as_secs_f64() / 8.0
    );
    let speech = &inputs[0].1;
    for secs in [2usize, 5, 10] {
        let n = (secs * 16_000).min(speech.len());
        let started = Instant::now();
        diarizer.embed(&speech[speech.len() - n..])?;
        println!(
            "CAM++ embedding of {secs} s: {:.3} s",
            started.elapsed().as_secs_f64()
        );
    }

    for (name, samples) in &inputs {
        let minutes = samples.len() as f64 / 16_000.0 / 60.0;
        let started = Instant::now();
        let turns = diarizer.diarize(samples, &DiarizeOptions::default(), &mut |_| {
            ControlFlow::Continue(())
        })?;
        let secs = started.elapsed().as_secs_f64();
        let mut speakers: Vec<&str> = turns.iter().map(|t| t.speaker.as_str()).collect();
        speakers.sort();
        speakers.dedup();
        println!(
            "{name}: {:.1} s audio, {secs:.2} s compute = {:.2} s per audio minute, \
             {} turns, {} speakers",
            minutes * 60.0,
            secs / minutes,
            turns.len(),
            speakers.len()
        );
    }
    Ok(())
}
