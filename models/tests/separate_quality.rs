//! Spleeter separation on real recordings: speech (JFK's clip, the pyannote
//! conversation) mixed with real music (Demucs' test clip) at known gains,
//! scored by SI-SDR against the clean speech and by Whisper's word error
//! rate with and without separation.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use murmur_models::audio::{self, DecodeOptions, DecodedAudio};
use murmur_models::fetch;
use murmur_models::separate::{
    si_sdr, SeparateError, SeparationStream, Separator, Stems, SAMPLE_RATE,
};
use murmur_models::testaudio;
use murmur_models::wer;
use murmur_models::whisper::{self, WhisperModel};

/// One separation at a time: two at once on a 2-core machine only make
/// each slower and the timings meaningless.
static SERIAL: Mutex<()> = Mutex::new(());

fn model(name: &str) -> PathBuf {
    fetch::install_cached(name).expect("install model").path
}

fn separator() -> &'static Separator {
    static SEPARATOR: OnceLock<Separator> = OnceLock::new();
    SEPARATOR.get_or_init(|| {
        Separator::load(&model("spleeter-2stems"), &candle_core::Device::Cpu).expect("load")
    })
}

fn decode_44k(path: &std::path::Path) -> DecodedAudio {
    audio::decode_file_with(path, &DecodeOptions::stereo(SAMPLE_RATE)).expect("decode")
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

fn stereo(samples: Vec<f32>) -> DecodedAudio {
    DecodedAudio {
        duration_s: samples.len() as f64 / 2.0 / f64::from(SAMPLE_RATE),
        samples,
        sample_rate: SAMPLE_RATE,
        channels: 2,
        source_rate: SAMPLE_RATE,
        source_channels: 2,
    }
}

/// 44.1 kHz stereo -> 16 kHz mono, the way Whisper hears it.
fn to_16k_mono(a: &DecodedAudio) -> Vec<f32> {
    assert_eq!((a.sample_rate, a.channels), (SAMPLE_RATE, 2));
    let mono: Vec<f32> = a
        .samples
        .chunks_exact(2)
        .map(|f| 0.5 * (f[0] + f[1]))
        .collect();
    audio::resample(&mono, 1, SAMPLE_RATE, 16_000).expect("resample")
}

/// A speech recording placed `offset_s` into the music, the music scaled to
/// `music_db` relative to the speech's RMS; the mix lasts as long as the
/// music or `len_s`, whichever is shorter.
struct Mix {
    /// Speech alone on the mix's timeline (zeros around it).
    speech: DecodedAudio,
    mixture: DecodedAudio,
}

fn mix(speech: &DecodedAudio, offset_s: f64, music_db: f64, len_s: f64) -> Mix {
    let music = decode_44k(&testaudio::music_mp3().expect("fetch music"));
    let frames = music
        .frames()
        .min((len_s * f64::from(SAMPLE_RATE)) as usize);
    let offset = (offset_s * f64::from(SAMPLE_RATE)) as usize * 2;
    let mut placed = vec![0f32; frames * 2];
    let n = speech.samples.len().min(placed.len() - offset);
    placed[offset..offset + n].copy_from_slice(&speech.samples[..n]);
    let music = &music.samples[..frames * 2];
    let gain = rms(&speech.samples[..n]) * 10f64.powf(music_db / 20.0) / rms(music);
    let mixture = placed
        .iter()
        .zip(music)
        .map(|(s, m)| s + (gain as f32) * m)
        .collect();
    Mix {
        speech: stereo(placed),
        mixture: stereo(mixture),
    }
}

fn separate(audio: &DecodedAudio) -> Stems {
    let t0 = Instant::now();
    let mut reports = Vec::new();
    let stems = separator()
        .separate(audio, &mut |p| {
            reports.push(p);
            ControlFlow::Continue(())
        })
        .expect("separate");
    eprintln!(
        "separated {:.1} s of audio in {:.2} s ({} progress reports)",
        audio.duration_s,
        t0.elapsed().as_secs_f64(),
        reports.len()
    );
    assert_eq!(reports.first(), Some(&0.0));
    assert_eq!(reports.last(), Some(&1.0));
    assert!(reports.windows(2).all(|w| w[0] < w[1]), "{reports:?}");
    for stem in [&stems.vocals, &stems.accompaniment] {
        assert_eq!((stem.sample_rate, stem.channels), (SAMPLE_RATE, 2));
        assert_eq!(stem.frames(), audio.frames());
        assert!(stem.samples.iter().all(|v| v.is_finite()));
    }
    stems
}

fn transcribe(whisper: &WhisperModel, samples: &[f32]) -> String {
    whisper
        .transcribe(samples, &whisper::DecodeOptions::default(), &mut |_| true)
        .expect("transcribe")
        .text
}

#[test]
fn separation_cleans_jfk_from_music_and_helps_whisper() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let speech = decode_44k(&testaudio::jfk().expect("fetch jfk"));
    let m = mix(&speech, 2.0, -5.0, 60.0);
    let stems = separate(&m.mixture);

    let reference = to_16k_mono(&m.speech);
    let mixture = to_16k_mono(&m.mixture);
    let vocals = to_16k_mono(&stems.vocals);
    let mix_sdr = si_sdr(&reference, &mixture);
    let vocals_sdr = si_sdr(&reference, &vocals);
    let gain = vocals_sdr - mix_sdr;
    eprintln!(
        "JFK + music at -5 dB: SI-SDR mix {mix_sdr:.2} dB, vocals {vocals_sdr:.2} dB, \
         improvement {gain:.2} dB"
    );

    // The accompaniment is mostly music: it scores far below the vocals
    // against the speech.
    let accompaniment_sdr = si_sdr(&reference, &to_16k_mono(&stems.accompaniment));
    eprintln!("accompaniment vs speech: {accompaniment_sdr:.2} dB");
    assert!(accompaniment_sdr < mix_sdr, "{accompaniment_sdr}");

    // The ratio masks sum to one below 11 kHz, so the stems add back up to
    // the mixture as Whisper hears it (16 kHz).
    let sum: Vec<f32> = stems
        .vocals
        .samples
        .iter()
        .zip(&stems.accompaniment.samples)
        .map(|(a, b)| a + b)
        .collect();
    let resum_sdr = si_sdr(&mixture, &to_16k_mono(&stereo(sum)));
    eprintln!("vocals + accompaniment vs mixture: {resum_sdr:.2} dB");
    assert!(resum_sdr > 30.0, "{resum_sdr}");

    assert!(gain >= 8.0, "SI-SDR improvement {gain:.2} dB < 8 dB");

    let whisper =
        WhisperModel::load(&model("tiny.en"), &candle_core::Device::Cpu).expect("load whisper");
    let clean_text = transcribe(&whisper, &reference);
    let mix_text = transcribe(&whisper, &mixture);
    let vocals_text = transcribe(&whisper, &vocals);
    let clean_wer = wer::wer(testaudio::JFK_TEXT, &clean_text);
    let mix_wer = wer::wer(testaudio::JFK_TEXT, &mix_text);
    let vocals_wer = wer::wer(testaudio::JFK_TEXT, &vocals_text);
    eprintln!("tiny.en WER clean {:.1}%: {clean_text}", clean_wer * 100.0);
    eprintln!("tiny.en WER mix {:.1}%: {mix_text}", mix_wer * 100.0);
    eprintln!(
        "tiny.en WER separated {:.1}%: {vocals_text}",
        vocals_wer * 100.0
    );
    assert!(vocals_wer <= mix_wer, "separation made Whisper worse");
    assert!(vocals_wer <= 0.15, "WER {vocals_wer}: {vocals_text}");
}

#[test]
fn separation_cleans_a_conversation_from_louder_music() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sample = testaudio::pyannote_sample().expect("fetch pyannote sample");
    let speech = decode_44k(&sample.wav);
    let m = mix(&speech, 0.0, 0.0, 60.0);
    let stems = separate(&m.mixture);
    let reference = to_16k_mono(&m.speech);
    let mix_sdr = si_sdr(&reference, &to_16k_mono(&m.mixture));
    let vocals_sdr = si_sdr(&reference, &to_16k_mono(&stems.vocals));
    let gain = vocals_sdr - mix_sdr;
    eprintln!(
        "pyannote sample + music at 0 dB: SI-SDR mix {mix_sdr:.2} dB, vocals \
         {vocals_sdr:.2} dB, improvement {gain:.2} dB"
    );
    assert!(gain >= 5.0, "SI-SDR improvement {gain:.2} dB");
}

#[test]
fn mono_input_at_another_rate_gives_44k_stereo_stems_of_its_length() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // JFK as decoded for Whisper: 16 kHz mono.
    let speech = audio::decode_file(&testaudio::jfk().expect("fetch jfk")).expect("decode");
    assert_eq!((speech.sample_rate, speech.channels), (16_000, 1));
    let stems = separator()
        .separate(&speech, &mut |_| ControlFlow::Continue(()))
        .expect("separate");
    let expected = speech.frames() as f64 * f64::from(SAMPLE_RATE) / 16_000.0;
    for stem in [&stems.vocals, &stems.accompaniment] {
        assert_eq!((stem.sample_rate, stem.channels), (SAMPLE_RATE, 2));
        assert!(
            (stem.frames() as f64 - expected).abs() < 2.0,
            "{} frames, expected {expected}",
            stem.frames()
        );
    }
    // Clean speech stays in the vocal stem.
    let speech_44k = audio::resample(&speech.samples, 1, 16_000, SAMPLE_RATE).expect("resample");
    let v = si_sdr(&speech_44k, &stems.vocals.channel(0));
    let a = si_sdr(&speech_44k, &stems.accompaniment.channel(0));
    eprintln!("clean speech: vocals {v:.2} dB, accompaniment {a:.2} dB");
    assert!(v > 10.0 && v > a + 10.0, "vocals {v}, accompaniment {a}");
}

#[test]
fn cancellation_is_typed_and_prompt() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let speech = decode_44k(&testaudio::jfk().expect("fetch jfk"));
    // Long enough for several chunks: four copies of the clip (44 s).
    let long = stereo(speech.samples.repeat(4));
    let mut calls = Vec::new();
    let err = separator()
        .separate(&long, &mut |p| {
            calls.push(p);
            if p > 0.0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect_err("cancelled");
    assert!(matches!(err, SeparateError::Cancelled), "{err}");
    assert_eq!(calls.len(), 2, "stops after the first chunk: {calls:?}");
    assert!(calls[1] < 1.0, "{calls:?}");

    let err = separator()
        .separate(&long, &mut |_| ControlFlow::Break(()))
        .expect_err("cancelled up front");
    assert!(matches!(err, SeparateError::Cancelled), "{err}");
}

#[test]
fn empty_and_malformed_audio() {
    let empty = stereo(Vec::new());
    let stems = separator()
        .separate(&empty, &mut |_| ControlFlow::Continue(()))
        .expect("empty audio separates to empty stems");
    assert_eq!(stems.vocals.frames(), 0);
    let odd = DecodedAudio {
        samples: vec![0.0; 3],
        ..stereo(Vec::new())
    };
    let err = separator()
        .separate(&odd, &mut |_| ControlFlow::Continue(()))
        .expect_err("3 samples in 2 channels");
    assert!(matches!(err, SeparateError::InvalidAudio(_)), "{err}");
}

#[test]
fn separator_and_stems_can_cross_threads() {
    // The job engine shares one loaded separator between workers.
    fn shareable<T: Send + Sync>() {}
    shareable::<Separator>();
    shareable::<Stems>();
    shareable::<SeparateError>();
}

#[test]
fn long_input_is_separated_chunk_by_chunk_without_seams() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Three copies of the JFK mix back to back: 60 s, three chunks.
    let speech = decode_44k(&testaudio::jfk().expect("fetch jfk"));
    let m = mix(&speech, 2.0, -5.0, 60.0);
    let long_speech = stereo(m.speech.samples.repeat(3));
    let long_mix = stereo(m.mixture.samples.repeat(3));
    let mut reports = Vec::new();
    let stems = separator()
        .separate(&long_mix, &mut |p| {
            reports.push(p);
            ControlFlow::Continue(())
        })
        .expect("separate");
    eprintln!("progress reports: {reports:?}");
    assert!(reports.len() >= 4, "one report per chunk: {reports:?}");
    let reference = to_16k_mono(&long_speech);
    let mix_sdr = si_sdr(&reference, &to_16k_mono(&long_mix));
    let vocals = to_16k_mono(&stems.vocals);
    let vocals_sdr = si_sdr(&reference, &vocals);
    eprintln!(
        "60 s JFK + music: SI-SDR mix {mix_sdr:.2} dB, vocals {vocals_sdr:.2} dB, improvement \
         {:.2} dB",
        vocals_sdr - mix_sdr
    );
    assert!(vocals_sdr - mix_sdr >= 8.0);
    // Each copy on its own scores about the same: no copy is damaged by a
    // chunk boundary running through it.
    let third = reference.len() / 3;
    for i in 0..3 {
        let part = i * third..(i + 1) * third;
        let sdr = si_sdr(&reference[part.clone()], &vocals[part]);
        eprintln!("copy {i}: vocals {sdr:.2} dB");
        assert!((sdr - vocals_sdr).abs() < 2.0, "copy {i}: {sdr} dB");
    }
}

#[test]
fn streamed_separation_equals_the_whole_file_path() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A real recording long enough for three chunks (two full, one short):
    // the pyannote conversation over the demucs music, looped to 50 s,
    // written at 32 kHz stereo so both paths resample.
    let rate = 32_000;
    let stereo_at = |path: &std::path::Path| {
        audio::decode_file_with(path, &DecodeOptions::stereo(rate)).expect("decode")
    };
    let speech = stereo_at(&testaudio::pyannote_sample().expect("fetch").wav);
    let music = stereo_at(&testaudio::music_mp3().expect("fetch music"));
    let n = 50 * rate as usize * 2;
    let mix: Vec<f32> = (0..n)
        .map(|i| {
            0.6 * speech.samples[i % speech.samples.len()]
                + 0.3 * music.samples[i % music.samples.len()]
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mix.wav");
    audio::write_wav_16bit(&path, &mix, rate, 2).expect("write");

    let options = DecodeOptions::stereo(SAMPLE_RATE);
    let t0 = Instant::now();
    let input = audio::decode_file_with(&path, &options).expect("decode");
    let whole = separator()
        .separate(&input, &mut |_| ControlFlow::Continue(()))
        .expect("separate");
    let whole_s = t0.elapsed().as_secs_f64();

    // The streamed path: the decoder's chunks (about 0.4 s each) straight
    // into the stream, the stems collected as they come out.
    let t0 = Instant::now();
    let mut stream = SeparationStream::new(separator(), input.frames());
    let (mut vocals, mut accompaniment) = (Vec::new(), Vec::new());
    let mut emitted = Vec::new();
    let mut progress = vec![stream.fraction_done()];
    audio::decode_chunks::<SeparateError>(&path, &options, &|| false, |chunk, _| {
        stream.push(chunk, &mut |v, a| {
            assert_eq!(v.len(), a.len());
            emitted.push(v.len() / 2);
            vocals.extend_from_slice(v);
            accompaniment.extend_from_slice(a);
            Ok(())
        })?;
        if progress.last() != Some(&stream.fraction_done()) {
            progress.push(stream.fraction_done());
        }
        Ok(())
    })
    .expect("streamed separation");
    stream.finish().expect("every frame arrived");
    eprintln!(
        "50 s: whole-file {whole_s:.1} s, streamed {:.1} s; stems emitted in pieces of \
         {emitted:?} frames; progress {progress:?}",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(emitted.len(), 3, "one piece per chunk: {emitted:?}");
    assert_eq!(progress.first(), Some(&0.0));
    assert_eq!(progress.last(), Some(&1.0));

    // Same frames, same chunks, same order of the overlap-add: the same
    // numbers, bit for bit.
    for (name, streamed, reference) in [
        ("vocals", &vocals, &whole.vocals.samples),
        (
            "accompaniment",
            &accompaniment,
            &whole.accompaniment.samples,
        ),
    ] {
        assert_eq!(streamed.len(), reference.len(), "{name}");
        let diff = streamed
            .iter()
            .zip(reference.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("{name}: max difference {diff:e}");
        assert_eq!(diff, 0.0, "{name} differs by up to {diff}");
    }
}

#[test]
fn a_stream_refuses_more_or_less_than_it_was_told() {
    let mut stream = SeparationStream::new(separator(), 10);
    let err = stream
        .push(&[0.0; 22], &mut |_, _| Ok(()))
        .expect_err("11 frames into a 10-frame stream");
    assert!(matches!(err, SeparateError::InvalidAudio(_)), "{err}");
    let mut stream = SeparationStream::new(separator(), 10);
    stream
        .push(&[0.0; 18], &mut |_, _| Ok(()))
        .expect("9 frames");
    assert!(matches!(
        stream.finish(),
        Err(SeparateError::InvalidAudio(_))
    ));
}
