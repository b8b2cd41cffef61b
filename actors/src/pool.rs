//! InferencePool: a fixed set of inference workers (one or more per device)
//! and a priority queue of waiting requests, highest tier first, FIFO
//! within a tier.
//!
//! Each worker is an actor that runs one request at a time on a blocking
//! thread, so model work never stalls the async runtime that serves HTTP.
//! The pool supervises its workers: one that panics is replaced, one that
//! runs past its deadline is told to cancel, abandoned and replaced; either
//! way the job hears a transient error and its supervisor retries it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::engine::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use crate::job::JobStage;
use crate::job_actor::JobMsg;

/// How often the pool looks for stuck workers.
const WATCHDOG_EVERY: Duration = Duration::from_secs(2);

pub(crate) enum PoolMsg {
    Submit {
        request: Box<WorkRequest>,
        priority: u32,
        /// Longest the work may take before its worker counts as stuck.
        deadline: Duration,
        reply: ActorRef<JobMsg>,
    },
    Cancel {
        job_id: String,
    },
    /// From a worker: its request ended (the job was told already).
    Idle {
        worker: usize,
    },
    Watchdog,
}

struct Waiting {
    priority: u32,
    order: u64,
    request: Box<WorkRequest>,
    deadline: Duration,
    reply: ActorRef<JobMsg>,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    /// Max-heap: higher priority first, then lower order (older) first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.order.cmp(&self.order))
    }
}

struct Running {
    job_id: String,
    started: Instant,
    deadline: Duration,
    cancel: Arc<AtomicBool>,
    reply: ActorRef<JobMsg>,
}

struct Slot {
    worker: ActorRef<WorkerMsg>,
    engine: Arc<dyn Engine>,
    running: Option<Running>,
}

pub(crate) struct InferencePool;

pub(crate) struct PoolState {
    slots: Vec<Slot>,
    queue: BinaryHeap<Waiting>,
    next_order: u64,
}

pub(crate) struct PoolArgs {
    /// One engine per worker; workers on the same device share one engine
    /// (and so its loaded models).
    pub engines: Vec<Arc<dyn Engine>>,
}

async fn spawn_worker(
    pool: &ActorRef<PoolMsg>,
    index: usize,
    engine: Arc<dyn Engine>,
) -> Result<ActorRef<WorkerMsg>, ActorProcessingErr> {
    let (worker, _) = Actor::spawn_linked(
        None,
        Worker,
        WorkerArgs {
            index,
            engine,
            pool: pool.clone(),
        },
        pool.get_cell(),
    )
    .await?;
    Ok(worker)
}

impl Actor for InferencePool {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        me: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let mut slots = Vec::with_capacity(args.engines.len());
        for (index, engine) in args.engines.into_iter().enumerate() {
            let worker = spawn_worker(&me, index, engine.clone()).await?;
            slots.push(Slot {
                worker,
                engine,
                running: None,
            });
        }
        me.send_interval(WATCHDOG_EVERY, || PoolMsg::Watchdog);
        Ok(PoolState {
            slots,
            queue: BinaryHeap::new(),
            next_order: 0,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::Submit {
                request,
                priority,
                deadline,
                reply,
            } => {
                state.next_order += 1;
                state.queue.push(Waiting {
                    priority,
                    order: state.next_order,
                    request,
                    deadline,
                    reply,
                });
            }
            PoolMsg::Cancel { job_id } => {
                let before = state.queue.len();
                let mut dropped = Vec::new();
                state.queue.retain(|w| {
                    let keep = w.request.job_id != job_id;
                    if !keep {
                        dropped.push(w.reply.clone());
                    }
                    keep
                });
                for reply in dropped {
                    let _ = reply.send_message(JobMsg::Finished(Err(WorkError::Cancelled)));
                }
                if state.queue.len() == before {
                    for slot in &state.slots {
                        if let Some(r) = slot.running.as_ref().filter(|r| r.job_id == job_id) {
                            r.cancel.store(true, AtomicOrdering::SeqCst);
                        }
                    }
                }
            }
            PoolMsg::Idle { worker } => {
                if let Some(slot) = state.slots.get_mut(worker) {
                    slot.running = None;
                }
            }
            PoolMsg::Watchdog => {
                for index in 0..state.slots.len() {
                    let stuck = state.slots[index]
                        .running
                        .as_ref()
                        .is_some_and(|r| r.started.elapsed() > r.deadline);
                    if stuck {
                        replace_worker(&me, state, index, "ran past its deadline").await?;
                    }
                }
            }
        }
        dispatch(state);
        metrics::gauge!("murmur_inference_queue_depth").set(state.queue.len() as f64);
        metrics::gauge!("murmur_inference_busy_workers")
            .set(state.slots.iter().filter(|s| s.running.is_some()).count() as f64);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<PoolMsg>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        // Workers stop only by failing (a panic in the engine): replace the
        // worker; its job hears a transient error from `replace_worker`.
        if let SupervisionEvent::ActorFailed(cell, err) = &event {
            if let Some(index) = slot_of(state, cell) {
                replace_worker(&me, state, index, &format!("crashed ({err})")).await?;
                dispatch(state);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<PoolMsg>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        // Let running work stop at its next cancellation check.
        for slot in &state.slots {
            if let Some(r) = &slot.running {
                r.cancel.store(true, AtomicOrdering::SeqCst);
            }
        }
        Ok(())
    }
}

fn slot_of(state: &PoolState, cell: &ActorCell) -> Option<usize> {
    state
        .slots
        .iter()
        .position(|s| s.worker.get_id() == cell.get_id())
}

/// Abandons a worker (its job hears a transient error) and starts another
/// in its place with the same engine.
async fn replace_worker(
    me: &ActorRef<PoolMsg>,
    state: &mut PoolState,
    index: usize,
    why: &str,
) -> Result<(), ActorProcessingErr> {
    let slot = &mut state.slots[index];
    if let Some(r) = slot.running.take() {
        r.cancel.store(true, AtomicOrdering::SeqCst);
        tracing::warn!(job = %r.job_id, worker = index, why, "inference worker replaced");
        let _ = r
            .reply
            .send_message(JobMsg::Finished(Err(WorkError::Transient(format!(
                "the inference worker {why}; the job will be retried"
            )))));
        metrics::counter!("murmur_inference_worker_replacements_total").increment(1);
    }
    slot.worker.unlink(me.get_cell());
    slot.worker.kill();
    slot.worker = spawn_worker(me, index, slot.engine.clone()).await?;
    Ok(())
}

/// Gives waiting requests to idle workers, best first.
fn dispatch(state: &mut PoolState) {
    for slot in state.slots.iter_mut().filter(|s| s.running.is_none()) {
        let Some(next) = state.queue.pop() else {
            break;
        };
        let cancel = Arc::new(AtomicBool::new(false));
        slot.running = Some(Running {
            job_id: next.request.job_id.clone(),
            started: Instant::now(),
            deadline: next.deadline,
            cancel: cancel.clone(),
            reply: next.reply.clone(),
        });
        let _ = slot.worker.send_message(WorkerMsg::Run {
            request: next.request,
            cancel,
            reply: next.reply,
        });
    }
}

// ---- the worker ------------------------------------------------------------

pub(crate) enum WorkerMsg {
    Run {
        request: Box<WorkRequest>,
        cancel: Arc<AtomicBool>,
        reply: ActorRef<JobMsg>,
    },
}

struct Worker;

struct WorkerArgs {
    index: usize,
    engine: Arc<dyn Engine>,
    pool: ActorRef<PoolMsg>,
}

/// Forwards an engine's reports to its job actor.
struct ActorSink {
    job: ActorRef<JobMsg>,
}

impl WorkSink for ActorSink {
    fn stage(&mut self, stage: JobStage) {
        let _ = self.job.send_message(JobMsg::Stage(stage));
    }
    fn progress(&mut self, fraction: f64) {
        let _ = self.job.send_message(JobMsg::Progress(fraction));
    }
    fn checkpoint(&mut self, state: serde_json::Value) {
        let _ = self.job.send_message(JobMsg::Checkpoint(state));
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
        let outcome = tokio::task::spawn_blocking(move || {
            let mut sink = ActorSink { job };
            engine.run(&request, &mut sink, &cancel)
        })
        .await;
        let outcome: Result<WorkOutput, WorkError> = match outcome {
            Ok(result) => result,
            // The engine panicked: fail this worker; the pool replaces it and
            // tells the job.
            Err(join) => return Err(format!("engine panicked: {join}").into()),
        };
        if let Ok(out) = &outcome {
            let secs = started.elapsed().as_secs_f64();
            metrics::histogram!("murmur_inference_seconds", "model" => model.clone()).record(secs);
            if out.audio_seconds > 0.0 {
                metrics::histogram!("murmur_real_time_factor", "model" => model)
                    .record(secs / out.audio_seconds);
            }
        }
        let _ = reply.send_message(JobMsg::Finished(outcome));
        let _ = state.pool.send_message(PoolMsg::Idle {
            worker: state.index,
        });
        Ok(())
    }
}
