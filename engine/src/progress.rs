//! The progress bar's plan: which share of it each stage of a job fills,
//! from the stages the job runs.

use murmur_actors::params::JobType;

/// Where each stage's share of the progress bar starts and ends.
pub(crate) struct ProgressPlan {
    pub(crate) decoded: f64,
    /// Separation runs from `decoded` to here.
    pub(crate) separated: f64,
    pub(crate) vad_done: f64,
    /// Transcription runs from `vad_done` to here; diarization from here to
    /// `diarized`.
    pub(crate) transcribed: f64,
    pub(crate) diarized: f64,
}

impl ProgressPlan {
    pub(crate) fn new(job_type: JobType, separating: bool, diarizing: bool) -> ProgressPlan {
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

    pub(crate) fn separating(&self, f: f64) -> f64 {
        self.decoded + (self.separated - self.decoded) * f.clamp(0.0, 1.0)
    }

    pub(crate) fn transcribing(&self, f: f64) -> f64 {
        self.vad_done + (self.transcribed - self.vad_done) * f.clamp(0.0, 1.0)
    }

    pub(crate) fn diarizing(&self, f: f64) -> f64 {
        self.transcribed + (self.diarized - self.transcribed) * f.clamp(0.0, 1.0)
    }
}
