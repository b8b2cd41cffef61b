//! The real engine: decode, background-music separation, voice-activity
//! detection, Whisper and speaker diarization through `murmur-models`, with
//! checkpoints so an interrupted job resumes where it stopped. Loaded models
//! are kept (Silero, Spleeter and the diarizer once each; Whisper in a small
//! LRU) so a model is loaded once and shared by jobs. A loaded model is
//! immutable and used through `&self`; each job keeps its own decoder state,
//! so every worker of the pool decodes at once, on the same model or not.
//!
//! Memory does not grow with the audio's length, except for diarization:
//! separation decodes in chunks through Spleeter straight into the stems on
//! disk; VAD reads the upload (or the separated vocals) in chunks, and
//! Whisper reads it again window by window. A diarized transcription still
//! decodes its audio whole at 16 kHz (about 230 MB per hour of audio) for
//! the diarizer, which reads it at once; Whisper streams even then.
//!
//! This file holds the engine, its loaded models and the transcription
//! pipeline; `stems.rs` the background-music separation and its stems on
//! disk; `tests.rs` the tests.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::Device;
use murmur_models::audio::{self, AudioError, DecodedAudio};
use murmur_models::diarize::{self, DiarizeError, DiarizeOptions, Diarizer};
use murmur_models::fetch;
use murmur_models::separate::Separator;
use murmur_models::transcript::{Segment, SpeechRegion, Transcript};
use murmur_models::vad::{SileroVad, VadStream};
use murmur_models::whisper::{self, ComputeType, DecodeOptions, WhisperModel};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use crate::job::JobStage;
use crate::params::{JobParams, JobType, Task};
use crate::sealed::StoredFile;

use murmur_models::fetch::{DIARIZATION_MODEL, SEPARATION_MODEL, VAD_MODEL};

mod stems;

pub use stems::stem_path;
use stems::stems_result;

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

    /// The model in `slot`, loading it from the catalogue entry `name` the
    /// first time. Loading holds the slot's lock, so it happens once.
    fn load_once<M, E: std::fmt::Display>(
        &self,
        slot: &Mutex<Option<Arc<M>>>,
        name: &str,
        load: impl FnOnce(&Path, &Device) -> Result<M, E>,
    ) -> Result<Arc<M>, WorkError> {
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
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
        let _loading = self
            .loading_whisper
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Another worker may have loaded it while this one waited.
        if let Some(model) = self.cached_whisper(name) {
            return Ok(model);
        }
        let dir = self.model_dir(name)?;
        let model = WhisperModel::load_as(&dir, &self.device, self.config.compute_type)
            .map_err(|e| WorkError::Transient(format!("cannot load model {name}: {e}")))?;
        let model = Arc::new(model);
        let mut cache = self.whisper.lock().unwrap_or_else(|e| e.into_inner());
        while cache.len() >= self.config.max_loaded_models.max(1) {
            cache.pop_front();
        }
        cache.push_back((name.to_string(), model.clone()));
        Ok(model)
    }

    /// The loaded model `name`, marked most recently used.
    fn cached_whisper(&self, name: &str) -> Option<SharedWhisper> {
        let mut cache = self.whisper.lock().unwrap_or_else(|e| e.into_inner());
        let pos = cache.iter().position(|(n, _)| n == name)?;
        let entry = cache.remove(pos)?;
        let model = entry.1.clone();
        cache.push_back(entry);
        Some(model)
    }
}

/// Decode failures are the input's fault (fail at once), except I/O and a
/// stop. The message names "the audio", never the server's path to it
/// (`path`: the upload, or the vocals separated from it).
fn audio_error(e: AudioError, request: &WorkRequest, path: &Path) -> WorkError {
    let msg = e
        .to_string()
        .replace(&path.display().to_string(), "the audio");
    match (e, &request.audio_limit) {
        (AudioError::Io { .. }, _) => WorkError::Transient(msg),
        (AudioError::Cancelled { .. }, _) => WorkError::Cancelled,
        (AudioError::TooLong { .. }, Some(limit)) => WorkError::InvalidInput(format!(
            "the audio is longer than {}; nothing past it was processed or counted \
             (split the file, or upgrade)",
            limit.rule
        )),
        _ => WorkError::InvalidInput(format!("the file cannot be decoded: {msg}")),
    }
}

/// `options` stopping at the job's length limit.
fn limited(request: &WorkRequest, options: audio::DecodeOptions) -> audio::DecodeOptions {
    audio::DecodeOptions {
        max_duration_s: request.audio_limit.as_ref().map(|l| l.max_s),
        ..options
    }
}

/// The job's audio (`path`: the upload, or the vocals separated from it)
/// decoded whole, at the rate and layout of `options`, stopping at the
/// job's length limit.
fn decode_job_audio(
    request: &WorkRequest,
    file: &StoredFile,
    options: audio::DecodeOptions,
    cancel: &AtomicBool,
) -> Result<DecodedAudio, WorkError> {
    audio::decode_file_until(file.input(), &limited(request, options), &|| {
        cancel.load(Ordering::Relaxed)
    })
    .map_err(|e| audio_error(e, request, file.path()))
}

fn decode_options(p: &JobParams) -> DecodeOptions {
    let mut opts = DecodeOptions {
        task: match p.task {
            Task::Transcribe => whisper::Task::Transcribe,
            Task::Translate => whisper::Task::Translate,
        },
        language: p.language.clone(),
        initial_prompt: p.initial_prompt.clone(),
        // Diarization labels speakers word by word, so it times words too.
        word_timestamps: p.word_timestamps || p.diarize.enabled,
        beam_size: p.beam_size as usize,
        best_of: p.best_of as usize,
        patience: p.patience,
        length_penalty: p.length_penalty,
        suppress_repetition_loops: p.repetition_guard,
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

/// Where each stage's share of the progress bar starts and ends.
struct ProgressPlan {
    decoded: f64,
    /// Separation runs from `decoded` to here.
    separated: f64,
    vad_done: f64,
    /// Transcription runs from `vad_done` to here; diarization from here to
    /// `diarized`.
    transcribed: f64,
    diarized: f64,
}

impl ProgressPlan {
    fn new(job_type: JobType, separating: bool, diarizing: bool) -> ProgressPlan {
        let decoded = 0.05;
        let separated = match (separating, job_type) {
            (false, _) => decoded,
            (true, JobType::BgmSeparation) => 0.95,
            (true, _) => 0.35,
        };
        let vad_done = separated + 0.05;
        let diarized = 0.97;
        let transcribed = if diarizing { 0.8 } else { diarized };
        ProgressPlan {
            decoded,
            separated,
            vad_done,
            transcribed,
            diarized,
        }
    }

    fn separating(&self, f: f64) -> f64 {
        self.decoded + (self.separated - self.decoded) * f.clamp(0.0, 1.0)
    }

    fn transcribing(&self, f: f64) -> f64 {
        self.vad_done + (self.transcribed - self.vad_done) * f.clamp(0.0, 1.0)
    }

    fn diarizing(&self, f: f64) -> f64 {
        self.transcribed + (self.diarized - self.transcribed) * f.clamp(0.0, 1.0)
    }
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

        // Shares of the progress bar: separation and diarization are slow
        // stages when asked for; transcription takes the rest.
        let separating = params.separates();
        let diarizing = params.diarizes();
        let plan = ProgressPlan::new(params.job_type, separating, diarizing);

        sink.stage(JobStage::Decode);
        let wants_vad = params.vad.enabled || params.job_type == JobType::Vad;
        // Separation writes the stems to disk; VAD, Whisper and the
        // diarizer then read the vocals stem instead of the upload.
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
                result: stems_result(&request.job_id, separated.duration_s),
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
        // Without diarization, nothing needs the whole recording at once:
        // VAD reads it in chunks, and Whisper reads it again, window by
        // window. Only the diarizer still wants it whole.
        if !diarizing {
            return self.run_streaming(request, &source, sink, cancel, &plan, checkpoint);
        }
        let decoded = decode_job_audio(
            request,
            &source.file,
            audio::DecodeOptions::default(),
            cancel,
        )?;
        if separated.is_none() {
            sink.progress(plan.decoded);
        }
        // Usage is metered from the source's decoded length (frames / its
        // own rate), not the stem's.
        let duration_s = source.duration_s.unwrap_or(decoded.duration_s);
        let samples = decoded.samples;
        if cancelled() {
            return Err(WorkError::Cancelled);
        }

        let regions = if wants_vad {
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
        sink.progress(plan.vad_done);
        if cancelled() {
            return Err(WorkError::Cancelled);
        }

        // Whisper reads the file again window by window all the same: its
        // joined copy and spectrogram would double what is held.
        let options = limited(request, audio::DecodeOptions::default());
        self.finish_job(
            request,
            sink,
            cancel,
            &plan,
            checkpoint,
            AfterVad {
                file: &source.file,
                options: &options,
                frames: samples.len(),
                whole: Some(&samples),
            },
            duration_s,
            regions,
        )
    }
}

/// What Whisper and the diarizer read after VAD.
#[derive(Clone, Copy)]
struct AfterVad<'a> {
    /// The file Whisper reads again, front to back, as it goes: `frames`
    /// samples at 16 kHz mono decoded with `options`.
    file: &'a StoredFile,
    options: &'a audio::DecodeOptions,
    frames: usize,
    /// The whole recording at 16 kHz mono, in memory: only when diarizing.
    whole: Option<&'a [f32]>,
}

/// A file for [`WhisperModel::transcribe_regions_streamed`]: every read
/// decodes it anew on its own thread, a few chunks ahead.
struct FileChunks<'a> {
    file: &'a StoredFile,
    options: &'a audio::DecodeOptions,
}

impl whisper::ChunkSource for FileChunks<'_> {
    type Reader = FileChunkReader;

    fn open(&self) -> FileChunkReader {
        FileChunkReader {
            reader: audio::ChunkReader::open_input(
                self.file.path(),
                self.file.opener(),
                self.options,
            ),
            path: self.file.path().display().to_string(),
        }
    }
}

struct FileChunkReader {
    reader: audio::ChunkReader,
    /// Scrubbed from error messages: a job's error names "the audio".
    path: String,
}

impl Iterator for FileChunkReader {
    type Item = Result<Vec<f32>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        self.reader
            .next()
            .map(|r| r.map_err(|e| e.to_string().replace(&self.path, "the audio")))
    }
}

/// The audio VAD, Whisper and the diarizer read: the upload, or the vocals
/// separated from it.
struct JobAudio {
    file: StoredFile,
    /// The source's length when `file` is a stem of it (what usage is
    /// metered from); None to take it from decoding `file`.
    duration_s: Option<f64>,
}

/// Why a streamed VAD pass stopped: the decoder, or the model.
enum StreamError {
    Audio(AudioError),
    Work(WorkError),
}

impl From<AudioError> for StreamError {
    fn from(e: AudioError) -> Self {
        StreamError::Audio(e)
    }
}

impl ModelEngine {
    /// A `vad` job, or a transcription without diarization, in bounded
    /// memory, over `source` (the upload, or its separated vocals): the
    /// first pass decodes in chunks into a streaming VAD (the regions and
    /// the length are all it keeps; with VAD off, just the length), then
    /// Whisper reads the file again window by window (twice: see
    /// [`WhisperModel::transcribe_regions_streamed`]). A resumed job with
    /// its regions checkpointed still makes the first pass for the length,
    /// without running the model.
    fn run_streaming(
        &self,
        request: &WorkRequest,
        source: &JobAudio,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        plan: &ProgressPlan,
        mut checkpoint: Checkpoint,
    ) -> Result<WorkOutput, WorkError> {
        let params = &request.params;
        let options = limited(request, audio::DecodeOptions::default());
        let stop = || cancel.load(Ordering::Relaxed);
        let wants_vad = params.vad.enabled || params.job_type == JobType::Vad;
        let known = checkpoint.regions.clone();
        let skip_vad = known.is_some() || !wants_vad;
        // The model loads with the first chunk, so a file refused from its
        // header (too long, not audio) fails before any model is needed.
        let mut vad: Option<Arc<SileroVad>> = None;
        let mut regions = Vec::new();
        let mut staged = false;
        let decoded = {
            let mut stream = VadStream::new(&params.vad);
            let result = audio::decode_chunks::<StreamError>(
                source.file.input(),
                &options,
                &stop,
                |chunk, _| {
                    if skip_vad {
                        return Ok(());
                    }
                    if !staged {
                        staged = true;
                        sink.stage(JobStage::Vad);
                    }
                    let model = match &vad {
                        Some(m) => m,
                        None => vad.insert(self.vad().map_err(StreamError::Work)?),
                    };
                    stream
                        .push(model, chunk, &mut regions)
                        .map_err(|e| StreamError::Work(WorkError::Transient(e.to_string())))
                },
            );
            let decoded = result.map_err(|e| match e {
                StreamError::Audio(e) => audio_error(e, request, source.file.path()),
                StreamError::Work(e) => e,
            })?;
            if let Some(model) = &vad {
                stream
                    .finish(model, &mut regions)
                    .map_err(|e| WorkError::Transient(e.to_string()))?;
            }
            decoded
        };
        let regions = match (known, wants_vad) {
            (Some(r), _) => Some(r),
            (None, true) => {
                checkpoint.regions = Some(regions.clone());
                sink.checkpoint(json!(checkpoint));
                Some(regions)
            }
            (None, false) => None,
        };
        sink.progress(plan.vad_done);
        if stop() {
            return Err(WorkError::Cancelled);
        }
        let duration_s = source.duration_s.unwrap_or(decoded.duration_s);
        let frames = usize::try_from(decoded.frames)
            .map_err(|_| WorkError::InvalidInput("the audio is too long".into()))?;
        self.finish_job(
            request,
            sink,
            cancel,
            plan,
            checkpoint,
            AfterVad {
                file: &source.file,
                options: &options,
                frames,
                whole: None,
            },
            duration_s,
            regions,
        )
    }
}

impl ModelEngine {
    /// After VAD: a `vad` job's result, or Whisper over the speech of
    /// `input` (or all of it, without regions) and, when asked,
    /// diarization over the whole recording.
    #[allow(clippy::too_many_arguments)]
    fn finish_job(
        &self,
        request: &WorkRequest,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        plan: &ProgressPlan,
        mut checkpoint: Checkpoint,
        input: AfterVad,
        duration_s: f64,
        regions: Option<Vec<SpeechRegion>>,
    ) -> Result<WorkOutput, WorkError> {
        let params = &request.params;
        let cancelled = || cancel.load(Ordering::Relaxed);
        let diarizing = params.diarizes();
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
            sink.progress(plan.transcribing(fraction));
            true
        };
        let transcript = if todo.is_empty() {
            Transcript {
                language_probability: None,
                language_candidates: None,
                language: opts.language.clone(),
                duration_s,
                text: String::new(),
                segments: Vec::new(),
                speakers: None,
            }
        } else {
            model
                .transcribe_regions_streamed(
                    &FileChunks {
                        file: input.file,
                        options: input.options,
                    },
                    input.frames,
                    &todo,
                    &opts,
                    &mut on_progress,
                )
                .map_err(|e| match e {
                    whisper::WhisperError::Cancelled => WorkError::Cancelled,
                    other => WorkError::Transient(other.to_string()),
                })?
        };
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
        // A resumed job whose last stretch held no speech keeps the
        // language of what it had already decoded.
        let language = match transcript.language {
            None if !done.is_empty() => opts.language.clone(),
            detected => detected,
        };
        let mut result = Transcript {
            // Detection ran on this run's first window (after a resume,
            // on the part left to decode).
            language_probability: transcript.language_probability,
            language_candidates: transcript.language_candidates,
            language,
            duration_s,
            text,
            segments: done,
            speakers: None,
        };
        let turns = if diarizing {
            sink.stage(JobStage::Diarize);
            let diarizer = self.diarizer()?;
            let options = DiarizeOptions {
                min_speakers: params.diarize.min_speakers.map(|n| n as usize),
                max_speakers: params.diarize.max_speakers.map(|n| n as usize),
                threshold: None,
            };
            let turns = diarizer
                .diarize(
                    input.whole.ok_or_else(|| {
                        WorkError::Transient("diarization needs the whole recording".into())
                    })?,
                    &options,
                    &mut |f| {
                        sink.progress(plan.diarizing(f));
                        if cancelled() {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    },
                )
                .map_err(|e| match e {
                    DiarizeError::Cancelled => WorkError::Cancelled,
                    DiarizeError::Options(m) | DiarizeError::Input(m) => WorkError::InvalidInput(m),
                    other => WorkError::Transient(other.to_string()),
                })?;
            diarize::assign_speakers(&mut result, &turns);
            Some(turns)
        } else {
            None
        };
        sink.stage(JobStage::Format);
        let mut value =
            serde_json::to_value(&result).map_err(|e| WorkError::Transient(e.to_string()))?;
        if let Some(turns) = turns {
            // Raw speaker turns beside the segments: what `format=rttm` reads.
            value["turns"] = json!(turns
                .iter()
                .map(|t| json!({"start": t.start, "end": t.end, "speaker": t.speaker}))
                .collect::<Vec<_>>());
        }
        Ok(WorkOutput {
            result: value,
            audio_seconds: duration_s,
        })
    }
}

#[cfg(test)]
mod tests;
