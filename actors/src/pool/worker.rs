//! A local inference worker: an actor that runs one request at a time on
//! the engine, on a blocking thread, and forwards the engine's reports to
//! the job (and its stages to the pool, for the operator's view).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::{PoolMsg, PoolReply, ReplyTo};
use crate::engine::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use crate::error::ActorError;
use crate::job::JobStage;

/// A worker's one message.
pub(crate) enum WorkerMsg {
    /// Run `request` on the engine, on a blocking thread, until it ends
    /// or `cancel` is set; every report goes to `reply`.
    Run {
        request: Box<WorkRequest>,
        cancel: Arc<AtomicBool>,
        reply: ReplyTo,
    },
}

// Local only: never sent to another node.
impl ractor::Message for WorkerMsg {}

pub(super) struct Worker;

/// A worker's arguments, and its state.
pub(super) struct WorkerArgs {
    /// Its slot in the pool.
    pub(super) index: usize,
    /// The engine it runs requests on.
    pub(super) engine: Arc<dyn Engine>,
    /// Told when a request ends, so the slot takes the next one.
    pub(super) pool: ActorRef<PoolMsg>,
}

/// Forwards an engine's reports to the actor that submitted the request,
/// and its stages to the pool too (for the operator's view).
struct ActorSink {
    job: ReplyTo,
    pool: ActorRef<PoolMsg>,
    worker: usize,
    job_id: String,
}

impl WorkSink for ActorSink {
    fn stage(&mut self, stage: JobStage) {
        let _ = self.job.send_message(PoolReply::Stage(stage));
        let _ = self.pool.send_message(PoolMsg::Stage {
            worker: self.worker,
            job_id: self.job_id.clone(),
            stage,
        });
    }
    fn progress(&mut self, fraction: f64) {
        let _ = self.job.send_message(PoolReply::Progress(fraction));
    }
    fn checkpoint(&mut self, state: serde_json::Value) {
        let _ = self.job.send_message(PoolReply::Checkpoint(state));
    }
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        let WorkerMsg::Run {
            request,
            cancel,
            reply,
        } = msg;
        let engine = state.engine.clone();
        let job = reply.clone();
        let model = request.params.model.clone();
        let started = Instant::now();
        let mut sink = ActorSink {
            job,
            pool: state.pool.clone(),
            worker: state.index,
            job_id: request.job_id.clone(),
        };
        let outcome =
            tokio::task::spawn_blocking(move || engine.run(&request, &mut sink, &cancel)).await;
        let outcome: Result<WorkOutput, WorkError> = match outcome {
            Ok(result) => result,
            // The engine panicked: fail this worker; the pool replaces it and
            // tells the job.
            Err(join) => return Err(ActorError::EnginePanicked(join.to_string()).into()),
        };
        if let Ok(out) = &outcome {
            let secs = started.elapsed().as_secs_f64();
            metrics::histogram!("murmur_inference_seconds", "model" => model.clone()).record(secs);
            if out.audio_seconds > 0.0 {
                metrics::histogram!("murmur_real_time_factor", "model" => model)
                    .record(secs / out.audio_seconds);
            }
        }
        let audio_seconds = outcome.as_ref().ok().map(|out| out.audio_seconds);
        let _ = reply.send_message(PoolReply::Finished(outcome));
        let _ = state.pool.send_message(PoolMsg::Idle {
            worker: state.index,
            audio_seconds,
        });
        Ok(())
    }
}
