//! The diarization stage: speaker turns over the whole recording (the one
//! stage that needs it in memory), each transcript segment and word then
//! labelled with its speaker.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use murmur_actors::engine::{WorkError, WorkRequest, WorkSink};
use murmur_actors::job::JobStage;
use murmur_models::diarize::{self, DiarizeError, DiarizeOptions};
use murmur_models::formats::SpeakerTurn;
use murmur_models::transcript::Transcript;

use crate::progress::ProgressPlan;
use crate::ModelEngine;

impl ModelEngine {
    /// The speaker turns of `whole` (16 kHz mono), within the job's
    /// speaker-count bounds, assigned to `transcript`'s segments.
    pub(crate) fn diarize(
        &self,
        request: &WorkRequest,
        whole: Option<&[f32]>,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        plan: &ProgressPlan,
        transcript: &mut Transcript,
    ) -> Result<Vec<SpeakerTurn>, WorkError> {
        let params = &request.params;
        sink.stage(JobStage::Diarize);
        let diarizer = self.diarizer()?;
        let options = DiarizeOptions {
            min_speakers: params.diarize.min_speakers.map(|n| n as usize),
            max_speakers: params.diarize.max_speakers.map(|n| n as usize),
            threshold: None,
        };
        let whole = whole
            .ok_or_else(|| WorkError::Transient("diarization needs the whole recording".into()))?;
        let turns = diarizer
            .diarize(whole, &options, &mut |f| {
                sink.progress(plan.diarizing(f));
                if cancel.load(Ordering::Relaxed) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .map_err(|e| match e {
                DiarizeError::Cancelled => WorkError::Cancelled,
                DiarizeError::Options(m) | DiarizeError::Input(m) => WorkError::InvalidInput(m),
                other => WorkError::Transient(other.to_string()),
            })?;
        diarize::assign_speakers(transcript, &turns);
        Ok(turns)
    }
}
