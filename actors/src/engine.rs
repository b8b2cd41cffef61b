//! What an inference worker runs for a job, behind a trait so the actor
//! system can be driven by the real models or, in benchmarks and tests of
//! the orchestration itself, by a trivial stage.
//!
//! A request names its audio by path (a blob), not by samples, and carries
//! plain data only: it could cross a machine boundary as it is.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::job::JobStage;
use crate::params::JobParams;
use crate::sealed::{Sealing, StoredFile};

/// One job's work for a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkRequest {
    pub job_id: String,
    pub tenant_id: String,
    pub audio: PathBuf,
    pub params: JobParams,
    /// What an earlier attempt finished, as the engine last reported it.
    pub checkpoint: Option<serde_json::Value>,
    /// Folder for files the job produces beside its result (separated
    /// stems), created by the engine when it writes one; the same folder on
    /// every attempt, so a resumed job finds what an earlier one wrote.
    /// `None`: keep nothing on disk once the job ends (a transcription that
    /// separates writes its stems to a scratch folder it then removes).
    #[serde(default)]
    pub artifacts: Option<PathBuf>,
    /// The longest audio this job may process, checked while decoding: a
    /// file whose stored length undercounts (uploaded before lengths were
    /// measured) fails here instead of being processed beyond what its
    /// tier allows. `None`: no limit (the CLI).
    #[serde(default)]
    pub audio_limit: Option<AudioLimit>,
    /// The tenant's data key and the upload's context: the upload is read,
    /// and artifacts written, sealed (encryption at rest). `None`: plain
    /// files (the CLI). Never serialised: a key does not travel with the
    /// request.
    #[serde(skip)]
    pub sealing: Option<Sealing>,
}

impl WorkRequest {
    /// The job's audio as stored (sealed or plain); its
    /// [`input`](StoredFile::input) is what the decoder reads.
    pub fn stored_audio(&self) -> StoredFile {
        StoredFile::new(
            &self.audio,
            self.sealing.as_ref().map(|s| s.key.clone()),
            self.sealing
                .as_ref()
                .map(|s| s.audio_context.clone())
                .unwrap_or_default(),
        )
    }
}

/// A length limit on a job's audio and whose rule it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioLimit {
    pub max_s: f64,
    /// The rule for the error message: "the basic tier's maximum of 10800 s".
    pub rule: String,
}

/// What a finished job produced.
#[derive(Debug, Clone)]
pub struct WorkOutput {
    /// The job's result (docs/API.md, "Results").
    pub result: serde_json::Value,
    /// Seconds of audio processed, for usage and real-time factor.
    pub audio_seconds: f64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WorkError {
    #[error("cancelled")]
    Cancelled,
    /// The input can never work (not audio, unsupported): fail at once.
    #[error("{0}")]
    InvalidInput(String),
    /// Might work on another try (a worker died, a model failed to load).
    #[error("{0}")]
    Transient(String),
}

/// Where an engine reports as it works; calls are cheap and never block.
pub trait WorkSink: Send {
    fn stage(&mut self, stage: JobStage);
    /// Overall progress of the job, 0.0 to 1.0.
    fn progress(&mut self, fraction: f64);
    /// A resumable snapshot of finished work.
    fn checkpoint(&mut self, state: serde_json::Value);
}

/// Runs jobs' stages. Called on a blocking thread, one job per worker at a
/// time; must return soon after `cancel` becomes true.
pub trait Engine: Send + Sync + 'static {
    fn run(
        &self,
        request: &WorkRequest,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
    ) -> Result<WorkOutput, WorkError>;

    /// The device the engine runs its models on (`cpu`, `cuda:0`), for
    /// the operator's view of the workers and their metrics. Engines that
    /// load no models (stand-ins in tests and benchmarks) run on the CPU.
    fn device(&self) -> String {
        "cpu".to_string()
    }

    /// How the engine stores and multiplies model weights (`int8`, `f16`,
    /// `f32`), for the operator's view; `None` for engines that load no
    /// models.
    fn compute_type(&self) -> Option<String> {
        None
    }

    /// The models the engine holds loaded now, by catalogue name: the pool
    /// sends a request to a worker that already holds its model first.
    fn loaded_models(&self) -> Vec<String> {
        Vec::new()
    }
}
