//! Spleeter separation speed: seconds of compute per minute of audio.
//!
//! Separates a real recording (Demucs' test music with JFK's speech mixed in
//! at -5 dB, repeated to the requested length; or a file given with
//! `--file`) `--runs` times and prints the median compute time, seconds per
//! minute of audio and the real-time factor. Run through
//! `scripts/bench-separate` (release build).
//!
//! Usage: bench_separate [--seconds N] [--runs N] [--file PATH]

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use murmur_models::audio::{self, DecodeOptions, DecodedAudio};
use murmur_models::separate::{Separator, SAMPLE_RATE};
use murmur_models::{fetch, registry, testaudio};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seconds = 60.0f64;
    let mut runs = 3usize;
    let mut file: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => seconds = value()?.parse()?,
            "--runs" => runs = value()?.parse()?,
            "--file" => file = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }

    let cache = registry::cache_dir();
    let model = fetch::install(
        "spleeter-2stems",
        &cache.join("models"),
        &cache,
        &mut |_| {},
    )?;
    let t0 = Instant::now();
    let separator = Separator::load(&model.path, &candle_core::Device::Cpu)?;
    let load_s = t0.elapsed().as_secs_f64();

    let stereo = DecodeOptions::stereo(SAMPLE_RATE);
    let input = match &file {
        Some(path) => audio::decode_file_with(path, &stereo)?,
        None => {
            let music = audio::decode_file_with(&testaudio::music_mp3()?, &stereo)?;
            let speech = audio::decode_file_with(&testaudio::jfk()?, &stereo)?;
            let rms = |x: &[f32]| (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
            let gain = rms(&speech.samples) * 10f32.powf(-5.0 / 20.0) / rms(&music.samples);
            let mut clip: Vec<f32> = music.samples.iter().map(|m| m * gain).collect();
            for (c, s) in clip
                .iter_mut()
                .skip(2 * 2 * SAMPLE_RATE as usize)
                .zip(&speech.samples)
            {
                *c += s;
            }
            let want = (seconds * f64::from(SAMPLE_RATE)) as usize * 2;
            let samples: Vec<f32> = clip.iter().copied().cycle().take(want).collect();
            DecodedAudio {
                duration_s: seconds,
                samples,
                sample_rate: SAMPLE_RATE,
                channels: 2,
                source_rate: SAMPLE_RATE,
                source_channels: 2,
            }
        }
    };
    let audio_s = input.frames() as f64 / f64::from(SAMPLE_RATE);
    println!(
        "spleeter-2stems on {audio_s:.1} s of {} audio, {} run(s), {} rayon threads; load {load_s:.2} s",
        file.as_ref().map_or("music + speech".into(), |p| p.display().to_string()),
        runs,
        rayon_threads(),
    );
    let mut times = Vec::new();
    for run in 1..=runs.max(1) {
        let t = Instant::now();
        let stems = separator.separate(&input, &mut |_| ControlFlow::Continue(()))?;
        let s = t.elapsed().as_secs_f64();
        assert_eq!(stems.vocals.frames(), input.frames());
        println!("run {run}: {s:.2} s");
        times.push(s);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "median {median:.2} s: {:.2} s of compute per minute of audio, real-time factor {:.3}",
        median / audio_s * 60.0,
        median / audio_s
    );
    Ok(())
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
}
