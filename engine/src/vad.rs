//! The voice-activity stage: Silero's speech regions over the job's audio,
//! either streamed over decoded chunks (the regions and the length are all
//! it keeps) or over a recording already decoded whole (when diarizing),
//! checkpointed once found so a resumed job skips the model.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use murmur_actors::engine::{WorkError, WorkRequest, WorkSink};
use murmur_actors::job::JobStage;
use murmur_actors::params::{JobParams, JobType};
use murmur_models::audio::{self, AudioError};
use murmur_models::transcript::SpeechRegion;
use murmur_models::vad::{SileroVad, VadParams, VadStream};
use serde_json::json;

use crate::decode::{audio_error, JobAudio};
use crate::{Checkpoint, ModelEngine};

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

/// What the streamed pass learnt of the audio.
pub(crate) struct StreamedPass {
    /// The speech regions, when the job wants VAD (checkpointed ones on a
    /// resumed job).
    pub(crate) regions: Option<Vec<SpeechRegion>>,
    /// Samples at 16 kHz mono, what Whisper then reads window by window.
    pub(crate) frames: usize,
    /// The decoded length in seconds.
    pub(crate) duration_s: f64,
}

/// The VAD settings a job runs with: a batched transcription's speech
/// regions are cut at 30 s (at the longest silence in them), as
/// faster-whisper's batched pipeline asks of its VAD, so no chunk ends in
/// the middle of a word.
fn vad_params(params: &JobParams) -> VadParams {
    let mut vad = params.vad.clone();
    if params.batch_size > 1 && params.runs_whisper() && vad.max_speech_s.is_none() {
        vad.max_speech_s = Some(30.0);
    }
    vad
}

/// Whether a job runs VAD: asked for, or a `vad` job.
pub(crate) fn wants_vad(request: &WorkRequest) -> bool {
    request.params.vad.enabled || request.params.job_type == JobType::Vad
}

impl ModelEngine {
    /// The first pass over `source` (the upload, or its separated vocals)
    /// in bounded memory: decodes it in chunks, with `options`, into a
    /// streaming VAD (with VAD off, or regions checkpointed, it only
    /// measures the length, without running the model).
    pub(crate) fn vad_streamed(
        &self,
        request: &WorkRequest,
        source: &JobAudio,
        options: &audio::DecodeOptions,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        checkpoint: &mut Checkpoint,
    ) -> Result<StreamedPass, WorkError> {
        let params = &request.params;
        let stop = || cancel.load(Ordering::Relaxed);
        let wants_vad = wants_vad(request);
        let known = checkpoint.regions.clone();
        let skip_vad = known.is_some() || !wants_vad;
        // The model loads with the first chunk, so a file refused from its
        // header (too long, not audio) fails before any model is needed.
        let mut vad: Option<Arc<SileroVad>> = None;
        let mut regions = Vec::new();
        let mut staged = false;
        let mut stream = VadStream::new(&vad_params(params));
        let decoded =
            audio::decode_chunks::<StreamError>(source.file.input(), options, &stop, |chunk, _| {
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
            })
            .map_err(|e| match e {
                StreamError::Audio(e) => audio_error(e, request, source.file.path()),
                StreamError::Work(e) => e,
            })?;
        if let Some(model) = &vad {
            stream
                .finish(model, &mut regions)
                .map_err(|e| WorkError::Transient(e.to_string()))?;
        }
        let regions = match (known, wants_vad) {
            (Some(r), _) => Some(r),
            (None, true) => Some(checkpointed(checkpoint, regions, sink)),
            (None, false) => None,
        };
        let frames = usize::try_from(decoded.frames)
            .map_err(|_| WorkError::InvalidInput("the audio is too long".into()))?;
        Ok(StreamedPass {
            regions,
            frames,
            duration_s: decoded.duration_s,
        })
    }

    /// The speech regions of `samples` (the whole recording at 16 kHz
    /// mono), or the checkpointed ones; `None` when the job wants no VAD.
    pub(crate) fn vad_whole(
        &self,
        request: &WorkRequest,
        samples: &[f32],
        sink: &mut dyn WorkSink,
        checkpoint: &mut Checkpoint,
    ) -> Result<Option<Vec<SpeechRegion>>, WorkError> {
        if !wants_vad(request) {
            return Ok(None);
        }
        if let Some(r) = checkpoint.regions.clone() {
            return Ok(Some(r));
        }
        sink.stage(JobStage::Vad);
        let found = self
            .vad()?
            .speech_regions(samples, &vad_params(&request.params))
            .map_err(|e| WorkError::Transient(e.to_string()))?;
        Ok(Some(checkpointed(checkpoint, found, sink)))
    }
}

/// `regions`, once recorded in the checkpoint and reported.
fn checkpointed(
    checkpoint: &mut Checkpoint,
    regions: Vec<SpeechRegion>,
    sink: &mut dyn WorkSink,
) -> Vec<SpeechRegion> {
    checkpoint.regions = Some(regions.clone());
    sink.checkpoint(json!(checkpoint));
    regions
}
