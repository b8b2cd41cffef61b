//! Silero VAD over audio that arrives piece by piece (a chunked decode), so
//! a VAD pass never holds the whole recording.
//!
//! [`VadStream`] keeps the 64 context samples before the next frame, the
//! samples of the batch being filled, the LSTM state and the region state
//! machine; nothing else grows with the audio. Batches cover the same frames
//! as [`SileroVad::speech_probs`] on the whole slice (the same candle calls on
//! the same inputs), so the probabilities, and therefore the regions, are
//! the same whatever the size of the pieces.

use crate::transcript::SpeechRegion;

use super::regions::RegionTracker;
use super::{
    LstmState, SileroVad, VadError, VadParams, BATCH_FRAMES, CONTEXT_SAMPLES, FRAME_SAMPLES,
};

/// Samples a full batch covers.
const BATCH_SAMPLES: usize = BATCH_FRAMES * FRAME_SAMPLES;

/// Streaming speech detection: [`VadStream::push`] audio, collect the regions
/// it finishes, then [`VadStream::finish`] for the rest.
pub struct VadStream {
    /// The context before the next frame (zeros at the start), then the
    /// samples not run yet; under a batch plus the last piece pushed.
    buf: Vec<f32>,
    state: LstmState,
    tracker: RegionTracker,
    samples_in: u64,
}

impl VadStream {
    /// A stream for `params`; every call then takes the loaded model.
    pub fn new(params: &VadParams) -> Self {
        let mut buf = Vec::with_capacity(CONTEXT_SAMPLES + BATCH_SAMPLES);
        buf.resize(CONTEXT_SAMPLES, 0.0);
        VadStream {
            buf,
            state: LstmState::default(),
            tracker: RegionTracker::new(params),
            samples_in: 0,
        }
    }

    /// Samples pushed so far.
    pub fn samples_in(&self) -> u64 {
        self.samples_in
    }

    /// Takes the next 16 kHz mono samples; regions this finishes (the
    /// next one has begun, so their padding is known) go to `out`.
    pub fn push(
        &mut self,
        model: &SileroVad,
        samples: &[f32],
        out: &mut Vec<SpeechRegion>,
    ) -> Result<(), VadError> {
        self.samples_in += samples.len() as u64;
        let mut rest = samples;
        while !rest.is_empty() {
            let room = CONTEXT_SAMPLES + BATCH_SAMPLES - self.buf.len();
            let take = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == CONTEXT_SAMPLES + BATCH_SAMPLES {
                self.run(model, BATCH_FRAMES, out)?;
                // The batch's last samples are the next frame's context.
                self.buf.drain(..BATCH_SAMPLES);
            }
        }
        Ok(())
    }

    /// Ends the audio: the last frames (the last one zero-padded) and the
    /// regions still open go to `out`.
    pub fn finish(
        mut self,
        model: &SileroVad,
        out: &mut Vec<SpeechRegion>,
    ) -> Result<(), VadError> {
        let frames = (self.buf.len() - CONTEXT_SAMPLES).div_ceil(FRAME_SAMPLES);
        if frames > 0 {
            self.run(model, frames, out)?;
        }
        self.tracker.finish(self.samples_in, out);
        Ok(())
    }

    fn run(
        &mut self,
        model: &SileroVad,
        frames: usize,
        out: &mut Vec<SpeechRegion>,
    ) -> Result<(), VadError> {
        let tracker = &mut self.tracker;
        model.run_batch(
            &self.buf,
            CONTEXT_SAMPLES,
            0,
            frames,
            &mut self.state,
            &mut |p| tracker.push(p, out),
        )
    }
}
