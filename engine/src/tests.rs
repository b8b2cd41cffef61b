use super::separate::stem_part_path;
use super::transcribe::{decode_options, regions_after};
use super::*;
use murmur_actors::params::JobParams;
use murmur_models::separate::STEMS;
use murmur_models::transcript::Transcript;
use murmur_models::whisper::ComputeType;
use serde_json::json;
use std::ops::ControlFlow;

#[test]
fn regions_after_cuts_at_the_resume_point() {
    let r = [
        SpeechRegion {
            start: 0.0,
            end: 2.0,
        },
        SpeechRegion {
            start: 3.0,
            end: 5.0,
        },
    ];
    let left = regions_after(&r, 3.5);
    assert_eq!(
        left,
        vec![SpeechRegion {
            start: 3.5,
            end: 5.0
        }]
    );
    assert_eq!(regions_after(&r, 0.0), r.to_vec());
    assert!(regions_after(&r, 6.0).is_empty());
}

struct NullSink;
impl WorkSink for NullSink {
    fn stage(&mut self, _: JobStage) {}
    fn progress(&mut self, _: f64) {}
    fn checkpoint(&mut self, _: serde_json::Value) {}
}

/// A VAD job on a 3 s tone, with `limit`; decoding comes before any
/// model is loaded, so these run without weights.
fn vad_request(dir: &Path, limit: Option<f64>) -> WorkRequest {
    let audio = dir.join("tone.wav");
    let tone: Vec<f32> = (0..48_000).map(|i| 0.3 * (i as f32 * 0.17).sin()).collect();
    audio::write_wav_16bit(&audio, &tone, 16_000, 1).unwrap();
    let params =
        JobParams::merged(&JobParams::defaults("base"), &json!({"job_type": "vad"})).unwrap();
    WorkRequest {
        job_id: "j1".into(),
        tenant_id: "t1".into(),
        audio,
        params,
        checkpoint: None,
        artifacts: None,
        audio_limit: limit.map(|max_s| murmur_actors::engine::AudioLimit {
            max_s,
            rule: format!("the basic tier's maximum audio length of {max_s} s"),
        }),
        sealing: None,
    }
}

fn engine(dir: &Path) -> ModelEngine {
    engine_over(dir, &dir.join("models"))
}

/// An engine caching under `dir` whose models are installed in `models`.
fn engine_over(dir: &Path, models: &Path) -> ModelEngine {
    ModelEngine::new(
        ModelEngineConfig {
            models_dir: models.to_path_buf(),
            cache_dir: dir.join("cache"),
            max_loaded_models: 1,
            fetch_missing: false,
            compute_type: ComputeType::F32,
            int8_encoder: false,
        },
        Device::Cpu,
    )
}

#[test]
fn audio_longer_than_the_job_limit_fails_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let request = vad_request(dir.path(), Some(1.0));
    let err = engine(dir.path())
        .run(&request, &mut NullSink, &AtomicBool::new(false))
        .unwrap_err();
    match err {
        WorkError::InvalidInput(msg) => {
            assert!(msg.contains("maximum audio length of 1 s"), "{msg}")
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn a_cancelled_job_stops_while_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let request = vad_request(dir.path(), None);
    let err = engine(dir.path())
        .run(&request, &mut NullSink, &AtomicBool::new(true))
        .unwrap_err();
    assert!(matches!(err, WorkError::Cancelled), "{err:?}");
}

/// The shared model cache (`~/.cache/murmur/models`), installing the
/// named models first.
fn cached_models(names: &[&str]) -> PathBuf {
    let cache = murmur_models::registry::cache_dir();
    for name in names {
        fetch::install(name, &cache.join("models"), &cache, &mut |_| {}).expect("install");
    }
    cache.join("models")
}

fn job(audio: PathBuf, params: serde_json::Value, artifacts: Option<PathBuf>) -> WorkRequest {
    WorkRequest {
        job_id: "j1".into(),
        tenant_id: "t1".into(),
        audio,
        params: JobParams::merged(&JobParams::defaults("tiny.en"), &params).unwrap(),
        checkpoint: None,
        artifacts,
        audio_limit: None,
        sealing: None,
    }
}

#[test]
fn written_stems_are_byte_for_byte_the_whole_file_separation() {
    let models = cached_models(&["spleeter-2stems"]);
    // 30 s of a real conversation at 16 kHz mono: two of Spleeter's
    // chunks, resampled and duplicated to 44.1 kHz stereo on the way.
    let upload = murmur_models::testaudio::pyannote_sample().unwrap().wav;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("artifacts");
    let request = job(
        upload.clone(),
        json!({"job_type": "bgm_separation"}),
        Some(folder.clone()),
    );
    let engine = engine_over(dir.path(), &models);
    let out = engine
        .run(&request, &mut NullSink, &AtomicBool::new(false))
        .unwrap();
    assert!(
        (out.audio_seconds - 30.0).abs() < 0.01,
        "{}",
        out.audio_seconds
    );

    // The reference: the whole file decoded, separated in memory, and
    // written with the buffer writer.
    let input = audio::decode_file_with(
        &upload,
        &audio::DecodeOptions::stereo(murmur_models::separate::SAMPLE_RATE),
    )
    .unwrap();
    let separator = Separator::load(&models.join("spleeter-2stems"), &Device::Cpu).unwrap();
    let stems = separator
        .separate(&input, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    for (name, stem) in STEMS.iter().zip([&stems.vocals, &stems.accompaniment]) {
        let reference = dir.path().join(format!("{name}-reference.wav"));
        audio::write_wav_16bit(&reference, &stem.samples, stem.sample_rate, 2).unwrap();
        let written = std::fs::read(stem_path(&folder, name)).unwrap();
        assert_eq!(
            written.len() as u64,
            audio::WAV_HEADER_BYTES + 4 * input.frames() as u64
        );
        assert!(
            written == std::fs::read(&reference).unwrap(),
            "the streamed {name} stem differs from the whole-file one"
        );
        assert!(!stem_part_path(&folder, name).exists());
    }
}

#[test]
fn a_resumed_separation_reads_its_stems_instead_of_separating_again() {
    // No models installed: separating again would fail.
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("artifacts");
    std::fs::create_dir_all(&folder).unwrap();
    let tone: Vec<f32> = (0..2 * 88_200)
        .map(|i| 0.2 * (i as f32 * 0.03).sin())
        .collect();
    for name in STEMS {
        audio::write_wav_16bit(&stem_path(&folder, name), &tone, 44_100, 2).unwrap();
    }
    let mut request = job(
        dir.path().join("gone.wav"),
        json!({"job_type": "bgm_separation"}),
        Some(folder.clone()),
    );
    request.checkpoint = Some(json!(Checkpoint {
        separated: true,
        ..Checkpoint::default()
    }));
    let out = engine(dir.path())
        .run(&request, &mut NullSink, &AtomicBool::new(false))
        .unwrap();
    assert!(
        (out.audio_seconds - 2.0).abs() < 1e-6,
        "{}",
        out.audio_seconds
    );
    assert_eq!(out.result["stems"][0]["name"], "vocals");
    // A damaged stem is separated again: here that reads the upload,
    // which is gone.
    std::fs::write(stem_path(&folder, "vocals"), b"RIFF....WAVE").unwrap();
    let err = engine(dir.path())
        .run(&request, &mut NullSink, &AtomicBool::new(false))
        .unwrap_err();
    assert!(
        matches!(&err, WorkError::Transient(m) if m.contains("cannot read the audio")),
        "{err:?}"
    );
}

#[test]
fn a_transcription_without_a_folder_separates_through_a_scratch_folder() {
    let models = cached_models(&["spleeter-2stems", "silero-vad", "tiny.en"]);
    let dir = tempfile::tempdir().unwrap();
    let request = job(
        murmur_models::testaudio::jfk().unwrap(),
        json!({"model": "tiny.en", "separate_bgm": {"enabled": true}}),
        None,
    );
    let engine = ModelEngine::new(
        ModelEngineConfig {
            models_dir: models,
            ..engine(dir.path()).config
        },
        Device::Cpu,
    );
    let scratch_before = scratch_folders();
    let out = engine
        .run(&request, &mut NullSink, &AtomicBool::new(false))
        .unwrap();
    assert!(
        (out.audio_seconds - 11.0).abs() < 0.01,
        "{}",
        out.audio_seconds
    );
    let text = out.result["text"].as_str().unwrap();
    let wer = murmur_models::wer::wer(murmur_models::testaudio::JFK_TEXT, text);
    assert!(wer <= 0.2, "WER {wer}: {text}");
    assert_eq!(
        scratch_folders(),
        scratch_before,
        "the scratch folder stays"
    );
}

#[test]
fn a_transcription_without_vad_reads_the_file_window_by_window_to_the_same_words() {
    let models = cached_models(&["tiny.en"]);
    let dir = tempfile::tempdir().unwrap();
    let upload = murmur_models::testaudio::jfk().unwrap();
    let request = job(
        upload.clone(),
        json!({"model": "tiny.en", "vad": {"enabled": false}}),
        None,
    );
    let engine = engine_over(dir.path(), &models);
    let out = engine
        .run(&request, &mut NullSink, &AtomicBool::new(false))
        .unwrap();
    // The same model over the whole recording in memory.
    let samples = audio::decode_file(&upload).unwrap();
    let model = WhisperModel::load(&models.join("tiny.en"), &Device::Cpu).unwrap();
    let whole = model
        .transcribe_regions(
            &samples.samples,
            &[SpeechRegion {
                start: 0.0,
                end: samples.duration_s,
            }],
            &decode_options(&request.params),
            &mut |_| true,
        )
        .unwrap();
    let result: Transcript = serde_json::from_value(out.result).unwrap();
    assert!(!whole.segments.is_empty());
    assert_eq!(result.segments, whole.segments);
}

/// This process's scratch stem folders.
fn scratch_folders() -> Vec<PathBuf> {
    let prefix = format!("murmur-stems-{}-", std::process::id());
    let mut found: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

#[test]
fn decode_options_start_at_the_asked_temperature() {
    let mut p = JobParams::defaults("base");
    p.temperature = 0.4;
    let o = decode_options(&p);
    assert_eq!(o.temperatures, vec![0.4, 0.6, 0.8, 1.0]);
    p.temperature = 0.3;
    assert_eq!(
        decode_options(&p).temperatures,
        vec![0.3, 0.4, 0.6, 0.8, 1.0]
    );
    assert!(o.suppress_repetition_loops);
    p.repetition_guard = false;
    assert!(!decode_options(&p).suppress_repetition_loops);
}

/// What a job told its sink, in order: progress, and each checkpoint's
/// resume point.
#[derive(Default)]
struct Recorder(Vec<(&'static str, f64)>);
impl WorkSink for Recorder {
    fn stage(&mut self, _: JobStage) {}
    fn progress(&mut self, p: f64) {
        self.0.push(("progress", p));
    }
    fn checkpoint(&mut self, value: serde_json::Value) {
        let c: Checkpoint = serde_json::from_value(value).unwrap();
        self.0.push(("checkpoint", c.resume_at));
    }
}

/// A restart between a progress report and the checkpoint keeping what
/// it reports would show progress that the retry throws away: no report
/// may get ahead of the last checkpoint, in the long-form loop and in the
/// batched pipeline.
#[test]
fn transcription_progress_never_gets_ahead_of_its_checkpoint() {
    let models = cached_models(&["tiny.en"]);
    let dir = tempfile::tempdir().unwrap();
    // Three JFKs, 33 s: two windows.
    let jfk = audio::decode_file(&murmur_models::testaudio::jfk().unwrap()).unwrap();
    let thrice: Vec<f32> = jfk.samples.repeat(3);
    let total_s = thrice.len() as f64 / 16_000.0;
    let upload = dir.path().join("jfk3.wav");
    audio::write_wav_16bit(&upload, &thrice, 16_000, 1).unwrap();
    let plan = ProgressPlan::new(JobType::Transcription, false, false);
    for batch in [1, 2] {
        let request = job(
            upload.clone(),
            json!({"model": "tiny.en", "vad": {"enabled": false}, "batch_size": batch}),
            None,
        );
        let mut sink = Recorder::default();
        engine_over(dir.path(), &models)
            .run(&request, &mut sink, &AtomicBool::new(false))
            .unwrap();
        let mut kept = 0.0;
        let mut checkpoints = 0;
        for &(what, value) in &sink.0 {
            if what == "checkpoint" {
                kept = value;
                checkpoints += 1;
            } else if value > plan.vad_done && value <= plan.transcribed {
                let reported_s =
                    (value - plan.vad_done) / (plan.transcribed - plan.vad_done) * total_s;
                assert!(
                    reported_s <= kept + 1e-3,
                    "batch {batch}: progress at {reported_s:.2} s, checkpoint at {kept:.2} s: {:?}",
                    sink.0
                );
            }
        }
        // One within the recording, one at its end, at least.
        assert!(checkpoints >= 2, "batch {batch}: {:?}", sink.0);
        assert!(
            (kept - total_s).abs() < 1e-3,
            "batch {batch}: ends at {kept}"
        );
    }
}
