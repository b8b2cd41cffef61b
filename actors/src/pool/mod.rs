//! InferencePool: a fixed set of inference workers (one or more per device)
//! and a fair queue of waiting requests ([`FairQueue`]): tiers share the
//! workers in proportion to their weights, counted in audio seconds, FIFO
//! within a tier. A higher tier is served more, never alone: a steady
//! stream of paid work cannot starve a lower tier.
//!
//! Each worker is an actor that runs one request at a time on a blocking
//! thread, so model work never stalls the async runtime that serves HTTP.
//! The pool supervises its workers: one that panics is replaced, one that
//! runs past its deadline is told to cancel, abandoned and replaced; either
//! way the job hears a transient error and its supervisor retries it.
//!
//! For operators, the pool answers what each worker does ([`PoolView`],
//! asked with [`PoolMsg::Workers`]) and keeps per-worker Prometheus series
//! (`murmur_worker_*`, `murmur_pool_waiting`). Its counts live in the
//! pool's own state and start at zero with the process.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort, SupervisionEvent,
};
use serde::Serialize;

mod fair_queue;
mod hub;
mod remote;
mod transfer;
mod worker;

use fair_queue::FairQueue;
use worker::{Worker, WorkerArgs, WorkerMsg};

use crate::engine::{Engine, WorkError, WorkOutput, WorkRequest};
use crate::job::JobStage;

/// How often the pool looks for stuck workers.
const WATCHDOG_EVERY: Duration = Duration::from_secs(2);

/// What the pool and its workers tell the actor that submitted a request,
/// in the order they happen; that actor takes it as one of its own
/// messages (the pool knows it only as a [`ReplyTo`]).
#[derive(Debug)]
pub(crate) enum PoolReply {
    /// The engine entered a stage of the job.
    Stage(JobStage),
    /// The job's overall progress, 0.0 to 1.0.
    Progress(f64),
    /// A resumable snapshot of the work finished so far.
    Checkpoint(serde_json::Value),
    /// The request ended: the engine's output, or why not (cancelled while
    /// it waited, or a transient error for a worker that crashed or was
    /// abandoned). The last reply of a request.
    Finished(Result<WorkOutput, WorkError>),
}

// Local only: never sent to another node.
impl ractor::Message for PoolReply {}

/// Where a request's [`PoolReply`]s go: the submitting actor, whatever its
/// own message type (it converts them).
pub(crate) type ReplyTo = DerivedActorRef<PoolReply>;

/// The pool's messages.
pub(crate) enum PoolMsg {
    /// A job's work, to queue by its tier's share and run on the next idle
    /// worker.
    Submit {
        /// The work itself (plain data: it could cross machines).
        request: Box<WorkRequest>,
        /// The tier's rank: its class in the fair queue.
        priority: u32,
        /// The tier's name, for the operator's view and metrics.
        tier: String,
        /// The tier's share when classes compete (at least 1).
        weight: u32,
        /// The work asked for, in audio seconds.
        cost_s: f64,
        /// Longest the work may take before its worker counts as stuck.
        deadline: Duration,
        /// Where the request's reports go.
        reply: ReplyTo,
    },
    /// The user cancelled the job: drop its request if it waits (it hears
    /// `Finished(Err(Cancelled))`), or set its worker's cancel flag.
    Cancel {
        /// The job whose request stops.
        job_id: String,
    },
    /// From a worker: the engine entered `stage` of `job_id` (for the
    /// operator's view; the job hears it directly).
    Stage {
        /// The worker's slot.
        worker: usize,
        /// The job the stage belongs to (a late report of an earlier job
        /// is ignored).
        job_id: String,
        /// The stage entered.
        stage: JobStage,
    },
    /// From a worker: its request ended (the job was told already).
    Idle {
        /// The worker's slot.
        worker: usize,
        /// Audio seconds of the engine's output; `None` when the request
        /// ended without one (failed or cancelled), which counts no job.
        audio_seconds: Option<f64>,
    },
    /// An operator asks what the workers do and what waits.
    Workers(RpcReplyPort<PoolView>),
    /// Every [`WATCHDOG_EVERY`]: replace workers past their deadline.
    Watchdog,
    /// From the hub: a worker node's slot reports (see [`crate::cluster`]).
    Remote(crate::cluster::wire::ToControl),
}

// Local only: never sent to another node.
impl ractor::Message for PoolMsg {}

/// A request waiting for a worker.
struct Waiting {
    /// The work.
    request: Box<WorkRequest>,
    /// Longest it may run once started.
    deadline: Duration,
    /// Where its reports go.
    reply: ReplyTo,
}

/// What the pool's workers do and what waits: the operator's view
/// (`GET /v1/ops/workers`, `murmur admin workers`).
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    /// Every worker, by index.
    pub workers: Vec<WorkerView>,
    /// Requests waiting for a worker, by tier name (every tier that has
    /// submitted work since start, zero included).
    pub waiting: BTreeMap<String, usize>,
}

/// One worker in a [`PoolView`].
#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    /// Its slot in the pool (never reused while the process runs).
    pub index: usize,
    /// The node it runs on: `local`, or a worker node's name.
    pub node: String,
    /// The device its engine runs on (`cpu`, `cuda:0`).
    pub device: String,
    /// How its engine stores and multiplies weights (`int8`, `f16`,
    /// `f32`); `None` until a worker node's slot has described itself.
    pub compute_type: Option<String>,
    /// The models its engine holds loaded (a remote slot's as of its last
    /// description, refreshed after each run).
    pub models: Vec<String>,
    /// `idle`, `busy`, or `unresponsive` (a worker node's slot whose run
    /// the pool gave up because it went silent, stalled or ran past its
    /// deadline: it gets no work until it says that run has ended).
    pub state: &'static str,
    /// What it runs, when busy.
    pub job: Option<RunningView>,
    /// Requests it finished with an output since the process started.
    pub jobs_completed: u64,
    /// The audio seconds of those requests.
    pub audio_seconds: f64,
}

/// The request a busy worker runs, in a [`WorkerView`].
#[derive(Debug, Clone, Serialize)]
pub struct RunningView {
    pub job_id: String,
    pub tenant_id: String,
    /// The stage the engine last reported; `None` before its first.
    pub stage: Option<JobStage>,
    /// When the worker took the request.
    pub since: DateTime<Utc>,
}

/// The request a worker runs.
struct Running {
    /// Its job.
    job_id: String,
    /// The job's tenant, for the operator's view.
    tenant_id: String,
    /// The stage the engine last reported.
    stage: Option<JobStage>,
    /// When the worker took it (monotonic, for the deadline).
    started: Instant,
    /// When the worker took it (wall clock, for the operator's view).
    since: DateTime<Utc>,
    /// Longest it may run before the watchdog replaces the worker.
    deadline: Duration,
    /// Set to stop the engine at its next check (cancel, deadline, stop).
    cancel: Arc<AtomicBool>,
    /// When a remote run's slot last reported (any report or heartbeat).
    heard: Instant,
    /// When a remote run's engine last moved on (a report other than a
    /// heartbeat: stage, progress, checkpoint, a fetch of audio or the
    /// sending of an artifact).
    advanced: Instant,
    /// Where its reports go (the pool answers for a replaced worker).
    reply: ReplyTo,
    /// A remote run's name in the worker node's reports, and the task that
    /// serves its audio (it ends when this is dropped).
    remote: Option<remote::RemoteRun>,
}

/// What runs a slot's requests.
enum Runner {
    /// A worker actor in this process, and the engine it runs (kept for
    /// its replacement).
    Local {
        worker: ActorRef<WorkerMsg>,
        engine: Arc<dyn Engine>,
    },
    /// A slot of a worker node (see [`crate::cluster`]).
    Remote(remote::RemoteSlot),
}

impl Runner {
    /// Tells `running` to stop at the engine's next check: its cancel flag
    /// for a local worker, a `Cancel` to a worker node's slot.
    fn stop(&self, running: &Running) {
        running.cancel.store(true, AtomicOrdering::SeqCst);
        if let (Runner::Remote(remote), Some(run)) = (self, &running.remote) {
            remote.cancel(run);
        }
    }
}

/// One worker and what it runs.
struct Slot {
    runner: Runner,
    /// The node it runs on (`local`, or the worker node's name).
    node: String,
    /// The engine's device.
    device: String,
    /// How the engine stores weights (a remote slot's, once described).
    compute_type: Option<String>,
    /// Its request, `None` when idle.
    running: Option<Running>,
    /// The model of the last request it took: a request for the same
    /// model goes to it first (the weights are likely still loaded).
    last_model: Option<String>,
    /// Requests finished with an output since start (kept across a
    /// replacement: the slot is the worker an operator sees).
    jobs_completed: u64,
    /// Their audio seconds.
    audio_seconds: f64,
}

impl Slot {
    fn labels(&self, index: usize) -> [(&'static str, String); 3] {
        [
            ("worker", index.to_string()),
            ("device", self.device.clone()),
            ("node", self.node.clone()),
        ]
    }

    /// Sets the slot's busy gauge.
    fn report_busy(&self, index: usize) {
        let busy = if self.running.is_some() { 1.0 } else { 0.0 };
        metrics::gauge!("murmur_worker_busy", &self.labels(index)).set(busy);
    }

    /// Counts a finished request of `audio_seconds`.
    fn count_completed(&mut self, index: usize, audio_seconds: f64) {
        self.jobs_completed += 1;
        self.audio_seconds += audio_seconds.max(0.0);
        self.report_counts(index);
    }

    /// Sets the slot's counters to its totals (whole audio seconds, rounded
    /// from the exact sum, so short jobs are not each rounded away).
    fn report_counts(&self, index: usize) {
        let labels = self.labels(index);
        metrics::counter!("murmur_worker_jobs_total", &labels).absolute(self.jobs_completed);
        metrics::counter!("murmur_worker_audio_seconds_total", &labels)
            .absolute(self.audio_seconds.round() as u64);
    }

    /// Whether the slot may take a request now: idle, and (a remote one)
    /// not held back since a run the pool gave up on it.
    fn available(&self) -> bool {
        self.running.is_none()
            && match &self.runner {
                Runner::Local { .. } => true,
                Runner::Remote(r) => !r.held,
            }
    }

    /// The models the slot's engine holds loaded.
    fn models(&self) -> Vec<String> {
        match &self.runner {
            Runner::Local { engine, .. } => engine.loaded_models(),
            Runner::Remote(r) => r.models.clone(),
        }
    }

    fn view(&self, index: usize) -> WorkerView {
        WorkerView {
            index,
            node: self.node.clone(),
            device: self.device.clone(),
            compute_type: self.compute_type.clone(),
            models: self.models(),
            state: match &self.runner {
                _ if self.running.is_some() => "busy",
                Runner::Remote(r) if r.held => "unresponsive",
                _ => "idle",
            },
            job: self.running.as_ref().map(|r| RunningView {
                job_id: r.job_id.clone(),
                tenant_id: r.tenant_id.clone(),
                stage: r.stage,
                since: r.since,
            }),
            jobs_completed: self.jobs_completed,
            audio_seconds: self.audio_seconds,
        }
    }

    /// Ends the slot's request as the pool's own decision (worker replaced,
    /// stuck, or gone): the job hears a transient error and retries.
    fn abandon(&mut self, index: usize, why: &str) {
        if let Some(r) = self.running.take() {
            self.runner.stop(&r);
            tracing::warn!(job = %r.job_id, worker = index, node = %self.node, why, "inference worker's job abandoned");
            let _ = r
                .reply
                .send_message(PoolReply::Finished(Err(WorkError::Transient(format!(
                    "the inference worker {why}; the job will be retried"
                )))));
            metrics::counter!("murmur_inference_worker_replacements_total").increment(1);
            self.report_busy(index);
        }
    }
}

pub(crate) struct InferencePool;

pub(crate) struct PoolState {
    /// The workers by index; an index is never reused (a worker node that
    /// leaves takes its slots with it).
    slots: BTreeMap<usize, Slot>,
    /// The next slot's index.
    next_index: usize,
    /// Requests waiting for a worker, fairly shared by tier.
    queue: FairQueue<Waiting>,
    /// Tier names by rank, as last submitted (the queue knows ranks only).
    tiers: BTreeMap<u32, String>,
    /// Names remote runs in worker nodes' reports.
    next_ticket: u64,
    /// How long a remote run may stay silent; `None` when no worker node
    /// can join.
    silence: Option<Duration>,
    /// How long a remote run's engine may go without a report; `None`
    /// when no worker node can join.
    stall: Option<Duration>,
}

impl PoolState {
    fn view(&self) -> PoolView {
        PoolView {
            workers: self.slots.iter().map(|(&i, s)| s.view(i)).collect(),
            waiting: self
                .tiers
                .iter()
                .map(|(&rank, name)| (name.clone(), self.queue.waiting(rank)))
                .collect(),
        }
    }

    fn add_slot(&mut self, slot: Slot) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        // Every worker's series exist from the start, at zero.
        slot.report_busy(index);
        slot.report_counts(index);
        self.slots.insert(index, slot);
        index
    }

    /// The slot running remote run `ticket`.
    fn by_ticket(&mut self, ticket: u64) -> Option<(usize, &mut Slot)> {
        self.slots.iter_mut().find_map(|(&i, s)| {
            s.running
                .as_ref()
                .and_then(|r| r.remote.as_ref())
                .is_some_and(|run| run.ticket == ticket)
                .then_some((i, s))
        })
    }
}

pub(crate) struct PoolArgs {
    /// One engine per worker; workers on the same device share one engine
    /// (and so its loaded models).
    pub engines: Vec<Arc<dyn Engine>>,
    /// Whether worker nodes may join (the control node listens): start
    /// the hub and watch the workers' process group.
    pub remote_workers: Option<crate::cluster::RemoteWorkers>,
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
        let mut state = PoolState {
            slots: BTreeMap::new(),
            next_index: 0,
            queue: FairQueue::default(),
            tiers: BTreeMap::new(),
            next_ticket: 1,
            silence: args.remote_workers.map(|r| r.silence),
            stall: args.remote_workers.map(|r| r.stall),
        };
        for engine in args.engines {
            let index = state.next_index;
            let worker = spawn_worker(&me, index, engine.clone()).await?;
            state.add_slot(Slot {
                device: engine.device(),
                compute_type: engine.compute_type(),
                runner: Runner::Local { worker, engine },
                node: "local".into(),
                running: None,
                last_model: None,
                jobs_completed: 0,
                audio_seconds: 0.0,
            });
        }
        if args.remote_workers.is_some() {
            remote::watch(&me, &mut state).await?;
        }
        me.send_interval(WATCHDOG_EVERY, || PoolMsg::Watchdog);
        Ok(state)
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
                tier,
                weight,
                cost_s,
                deadline,
                reply,
            } => {
                if state.tiers.get(&priority) != Some(&tier) {
                    state.tiers.insert(priority, tier);
                }
                state.queue.push(
                    priority,
                    weight,
                    cost_s,
                    Waiting {
                        request,
                        deadline,
                        reply,
                    },
                );
            }
            PoolMsg::Cancel { job_id } => {
                let dropped = state.queue.remove_if(|w| w.request.job_id == job_id);
                let was_waiting = !dropped.is_empty();
                for w in dropped {
                    let _ = w
                        .reply
                        .send_message(PoolReply::Finished(Err(WorkError::Cancelled)));
                }
                if !was_waiting {
                    for slot in state.slots.values() {
                        if let Some(r) = slot.running.as_ref().filter(|r| r.job_id == job_id) {
                            slot.runner.stop(r);
                        }
                    }
                }
            }
            PoolMsg::Stage {
                worker,
                job_id,
                stage,
            } => {
                let running = state
                    .slots
                    .get_mut(&worker)
                    .and_then(|s| s.running.as_mut());
                if let Some(r) = running.filter(|r| r.job_id == job_id) {
                    r.stage = Some(stage);
                }
                // Nothing queued or freed: no dispatch, no gauges.
                return Ok(());
            }
            PoolMsg::Idle {
                worker,
                audio_seconds,
            } => {
                if let Some(slot) = state.slots.get_mut(&worker) {
                    slot.running = None;
                    slot.report_busy(worker);
                    if let Some(secs) = audio_seconds {
                        slot.count_completed(worker, secs);
                    }
                }
            }
            PoolMsg::Remote(report) => {
                if !remote::report(&me, state, report) {
                    // Progress of a run: nothing queued or freed.
                    return Ok(());
                }
            }
            PoolMsg::Workers(reply) => {
                let _ = reply.send(state.view());
                return Ok(());
            }
            PoolMsg::Watchdog => {
                let stuck: Vec<usize> = state
                    .slots
                    .iter()
                    .filter(|(_, s)| {
                        s.running
                            .as_ref()
                            .is_some_and(|r| r.started.elapsed() > r.deadline)
                    })
                    .map(|(&i, _)| i)
                    .collect();
                for index in stuck {
                    replace_worker(&me, state, index, "ran past its deadline").await?;
                }
                if let (Some(silence), Some(stall)) = (state.silence, state.stall) {
                    remote::give_up_silent(state, silence, stall);
                }
            }
        }
        dispatch(&me, state);
        metrics::gauge!("murmur_inference_queue_depth").set(state.queue.len() as f64);
        metrics::gauge!("murmur_inference_busy_workers")
            .set(state.slots.values().filter(|s| s.running.is_some()).count() as f64);
        for (&rank, tier) in &state.tiers {
            metrics::gauge!("murmur_pool_waiting", "tier" => tier.clone())
                .set(state.queue.waiting(rank) as f64);
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<PoolMsg>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match &event {
            // Workers stop only by failing (a panic in the engine): replace
            // the worker; its job hears a transient error.
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(index) = local_slot_of(state, cell) {
                    replace_worker(&me, state, index, &format!("crashed ({err})")).await?;
                    dispatch(&me, state);
                }
            }
            SupervisionEvent::ProcessGroupChanged(change) => {
                remote::group_changed(state, change);
                dispatch(&me, state);
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<PoolMsg>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        // Let running work stop at its next cancellation check.
        for slot in state.slots.values() {
            if let Some(r) = &slot.running {
                slot.runner.stop(r);
            }
        }
        Ok(())
    }
}

fn local_slot_of(state: &PoolState, cell: &ActorCell) -> Option<usize> {
    state.slots.iter().find_map(|(&i, s)| match &s.runner {
        Runner::Local { worker, .. } if worker.get_id() == cell.get_id() => Some(i),
        _ => None,
    })
}

/// Abandons a worker's request (its job hears a transient error); a local
/// worker is replaced by another with the same engine, a remote one is
/// told to cancel and keeps its slot.
async fn replace_worker(
    me: &ActorRef<PoolMsg>,
    state: &mut PoolState,
    index: usize,
    why: &str,
) -> Result<(), ActorProcessingErr> {
    let Some(slot) = state.slots.get_mut(&index) else {
        return Ok(());
    };
    slot.abandon(index, why);
    match &mut slot.runner {
        Runner::Local { worker, engine } => {
            worker.unlink(me.get_cell());
            worker.kill();
            *worker = spawn_worker(me, index, engine.clone()).await?;
        }
        // It keeps its slot but takes no work until it says the run has
        // stopped: an engine past its deadline may never stop.
        Runner::Remote(remote) => remote.hold_back(index),
    }
    Ok(())
}

/// Gives waiting requests to idle workers: each request in fair order, to
/// an idle worker that can run it, one that holds its model first.
fn dispatch(me: &ActorRef<PoolMsg>, state: &mut PoolState) {
    loop {
        let idle: Vec<usize> = state
            .slots
            .iter()
            .filter(|(_, s)| s.available())
            .map(|(&i, _)| i)
            .collect();
        if idle.is_empty() {
            return;
        }
        let slots = &state.slots;
        let Some(next) = state.queue.pop() else {
            return;
        };
        // A slot that holds the model loaded first, then one that last ran
        // it (its engine may hold it by the time it starts), then any.
        let model = &next.request.params.model;
        let Some(index) = idle.iter().copied().min_by_key(|i| {
            let slot = &slots[i];
            (
                !slot.models().contains(model),
                slot.last_model.as_ref() != Some(model),
                *i,
            )
        }) else {
            return;
        };
        let slot = state.slots.get_mut(&index).expect("an idle slot");
        let cancel = Arc::new(AtomicBool::new(false));
        let mut running = Running {
            job_id: next.request.job_id.clone(),
            tenant_id: next.request.tenant_id.clone(),
            stage: None,
            started: Instant::now(),
            since: Utc::now(),
            deadline: next.deadline,
            cancel: cancel.clone(),
            heard: Instant::now(),
            advanced: Instant::now(),
            reply: next.reply.clone(),
            remote: None,
        };
        slot.last_model = Some(model.clone());
        match &slot.runner {
            Runner::Local { worker, .. } => {
                let _ = worker.send_message(WorkerMsg::Run {
                    request: next.request,
                    cancel,
                    reply: next.reply,
                });
            }
            Runner::Remote(remote) => {
                let ticket = state.next_ticket;
                state.next_ticket += 1;
                running.remote = Some(remote.run(me, ticket, next.request));
            }
        }
        slot.running = Some(running);
        slot.report_busy(index);
    }
}
