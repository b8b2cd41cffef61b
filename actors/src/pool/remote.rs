//! The pool's side of remote workers (see [`crate::cluster`]): slots that
//! join and leave with their worker nodes, the reports of their runs, and
//! runs that go silent or stall. The bytes of a run move in
//! [`super::transfer`].

use std::time::{Duration, Instant};

use ractor::pg::GroupChangeMessage;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use super::hub::Hub;
use super::transfer::{collect, serve_audio, ArtifactChunk, ArtifactDest, Fetch};
use super::{PoolMsg, PoolReply, PoolState, Runner, Running, Slot};
use crate::cluster::wire::{ToControl, ToWorker};
use crate::cluster::WORKER_GROUP;
use crate::engine::{WorkError, WorkRequest};

/// A worker node's slot, as the pool holds it.
pub(super) struct RemoteSlot {
    actor: ActorRef<ToWorker>,
    /// The models its engine holds, as of its last description.
    pub models: Vec<String>,
    /// The pool gave up its last run (silent, stalled, or past its
    /// deadline): no work until the slot answers a description request
    /// saying it holds no run.
    pub held: bool,
    /// A description request is on its way and not answered yet.
    asked: bool,
}

/// A run on a remote slot.
pub(super) struct RemoteRun {
    /// Its name in the slot's reports.
    pub ticket: u64,
    /// Asks for audio go to the task serving it; dropping this ends it.
    feed: mpsc::UnboundedSender<(u64, u32)>,
    /// Where the run's artifacts go on this node, for a job that
    /// separates; taken by the task that fetches them.
    dest: Option<ArtifactDest>,
    /// Artifact chunks go to the task fetching them; dropping this ends it.
    collect: Option<mpsc::UnboundedSender<ArtifactChunk>>,
}

impl RemoteSlot {
    /// Starts `request` on the slot: a task opens the job's audio, sends
    /// the run, then answers the slot's asks for chunks.
    pub(super) fn run(
        &self,
        pool: &ActorRef<PoolMsg>,
        ticket: u64,
        request: Box<WorkRequest>,
    ) -> RemoteRun {
        let (feed, asks) = mpsc::unbounded_channel();
        let dest = request
            .artifacts
            .clone()
            .filter(|_| request.params.separates())
            .map(|folder| ArtifactDest {
                folder,
                key: request.sealing.as_ref().map(|s| s.key.clone()),
                job_id: request.job_id.clone(),
                max_stem_bytes: request
                    .audio_limit
                    .as_ref()
                    .map(|l| ArtifactDest::stem_bytes_for(l.max_s)),
            });
        tokio::spawn(serve_audio(
            self.actor.clone(),
            pool.clone(),
            ticket,
            request,
            asks,
        ));
        RemoteRun {
            ticket,
            feed,
            dest,
            collect: None,
        }
    }

    pub(super) fn cancel(&self, run: &RemoteRun) {
        let _ = self
            .actor
            .send_message(ToWorker::Cancel { ticket: run.ticket });
    }

    /// Asks the slot to describe itself (device, compute type, models,
    /// whether it holds a run): it answers with [`ToControl::Described`]
    /// naming `key`.
    fn describe(&mut self, key: usize) {
        self.asked = true;
        let _ = self
            .actor
            .send_message(ToWorker::Describe { key: key as u64 });
    }

    /// Holds the slot back after the pool gave up its run, until it says
    /// the run has ended; asks it now.
    pub(super) fn hold_back(&mut self, key: usize) {
        self.held = true;
        self.describe(key);
    }
}

/// Starts the hub and takes in the worker nodes' slots, those already
/// known and those that join later.
pub(super) async fn watch(
    me: &ActorRef<PoolMsg>,
    state: &mut PoolState,
) -> Result<(), ActorProcessingErr> {
    Actor::spawn_linked(None, Hub, me.clone(), me.get_cell()).await?;
    ractor::pg::monitor(WORKER_GROUP.to_string(), me.get_cell());
    let members = ractor::pg::get_members(&WORKER_GROUP.to_string());
    join(state, members);
    Ok(())
}

fn join(state: &mut PoolState, cells: Vec<ractor::ActorCell>) {
    for cell in cells {
        // Only other nodes' slots: a slot in this process is not ours.
        let known = state.slots.values().any(|s| match &s.runner {
            Runner::Remote(r) => r.actor.get_id() == cell.get_id(),
            Runner::Local { .. } => false,
        });
        if cell.get_id().is_local() || known {
            continue;
        }
        let mut remote = RemoteSlot {
            actor: cell.into(),
            models: Vec::new(),
            held: false,
            asked: false,
        };
        remote.describe(state.next_index);
        let index = state.add_slot(Slot {
            runner: Runner::Remote(remote),
            node: "remote".into(),
            device: "unknown".into(),
            compute_type: None,
            running: None,
            last_model: None,
            jobs_completed: 0,
            audio_seconds: 0.0,
        });
        tracing::info!(worker = index, "a worker node's slot joined");
    }
}

/// A worker node's slots joined or left the group.
pub(super) fn group_changed(state: &mut PoolState, change: &GroupChangeMessage) {
    match change {
        GroupChangeMessage::Join(_, group, cells) if group == WORKER_GROUP => {
            join(state, cells.clone());
        }
        GroupChangeMessage::Leave(_, group, cells) if group == WORKER_GROUP => {
            let gone: Vec<usize> = state
                .slots
                .iter()
                .filter(|(_, s)| match &s.runner {
                    Runner::Remote(r) => cells.iter().any(|c| c.get_id() == r.actor.get_id()),
                    Runner::Local { .. } => false,
                })
                .map(|(&i, _)| i)
                .collect();
            for index in gone {
                if let Some(mut slot) = state.slots.remove(&index) {
                    let node = slot.node.clone();
                    slot.abandon(index, &format!("on node {node} went away"));
                    metrics::gauge!("murmur_worker_busy", &slot.labels(index)).set(0.0);
                    tracing::warn!(worker = index, %node, "a worker node's slot left");
                }
            }
        }
        _ => {}
    }
}

/// A slot's report. Answers whether it freed a worker (so the pool
/// dispatches again). Reports of runs the pool no longer knows (abandoned,
/// or from before a restart) are dropped: each job completes once.
pub(super) fn report(pool: &ActorRef<PoolMsg>, state: &mut PoolState, report: ToControl) -> bool {
    match report {
        ToControl::Described { key, info } => {
            let Some(slot) = state.slots.get_mut(&(key as usize)) else {
                return false;
            };
            let Runner::Remote(remote) = &mut slot.runner else {
                return false;
            };
            remote.models = info.models;
            remote.asked = false;
            // A held-back slot takes work again once its run has ended.
            let woke = remote.held && !info.busy;
            remote.held &= info.busy;
            if woke {
                tracing::info!(worker = key, node = %slot.node, "a held-back worker slot is free again");
            }
            slot.node = info.node;
            slot.device = info.device;
            slot.compute_type = info.compute_type;
            slot.report_busy(key as usize);
            slot.report_counts(key as usize);
            woke
        }
        ToControl::Alive { ticket } => {
            heard(state, ticket, false);
            false
        }
        ToControl::Fetch {
            ticket,
            offset,
            max,
        } => {
            if let Some(run) = heard(state, ticket, true).and_then(|(_, r)| r.remote.as_ref()) {
                let _ = run.feed.send((offset, max));
            }
            false
        }
        ToControl::Stage { ticket, stage } => {
            if let Some((_, r)) = heard(state, ticket, true) {
                r.stage = Some(stage);
                let _ = r.reply.send_message(PoolReply::Stage(stage));
            }
            false
        }
        ToControl::Progress { ticket, fraction } => {
            if let Some((_, r)) = heard(state, ticket, true) {
                let _ = r.reply.send_message(PoolReply::Progress(fraction));
            }
            false
        }
        ToControl::Checkpoint { ticket, state: cp } => {
            if let Some((_, r)) = heard(state, ticket, true) {
                let _ = r.reply.send_message(PoolReply::Checkpoint(cp));
            }
            false
        }
        ToControl::Produced { ticket, artifacts } => {
            let Some((Runner::Remote(remote), r)) = heard(state, ticket, true) else {
                return false;
            };
            let Some(run) = r.remote.as_mut() else {
                return false;
            };
            let (tx, chunks) = mpsc::unbounded_channel();
            run.collect = Some(tx);
            let fetch = Fetch {
                slot: remote.actor.clone(),
                pool: pool.clone(),
                ticket,
            };
            match run.dest.take() {
                Some(dest) => {
                    tokio::spawn(collect(fetch, dest, artifacts, chunks));
                }
                None => fetch.fail(format!(
                    "run {ticket} produced artifacts for a job that keeps none"
                )),
            }
            false
        }
        ToControl::ArtifactChunk {
            ticket,
            name,
            offset,
            data,
        } => {
            let collect = heard(state, ticket, true)
                .and_then(|(_, r)| r.remote.as_ref())
                .and_then(|run| run.collect.as_ref());
            if let Some(tx) = collect {
                let _ = tx.send(ArtifactChunk { name, offset, data });
            }
            false
        }
        ToControl::Finished { ticket, outcome } => {
            let Some((index, slot)) = state.by_ticket(ticket) else {
                return false;
            };
            let Some(r) = slot.running.take() else {
                return false;
            };
            let result: Result<_, WorkError> = outcome.into();
            if let Ok(out) = &result {
                slot.count_completed(index, out.audio_seconds);
            }
            let _ = r.reply.send_message(PoolReply::Finished(result));
            slot.report_busy(index);
            // What it holds now (the run may have loaded a model).
            if let Runner::Remote(remote) = &mut slot.runner {
                remote.describe(index);
            }
            true
        }
        ToControl::Malformed(_) => false,
    }
}

/// Remote run `ticket`, which has just been heard from (`advanced`: a
/// report of its engine moving on, not a heartbeat), and what runs it.
fn heard(state: &mut PoolState, ticket: u64, advanced: bool) -> Option<(&Runner, &mut Running)> {
    let (_, slot) = state.by_ticket(ticket)?;
    let running = slot.running.as_mut()?;
    running.heard = Instant::now();
    if advanced {
        running.advanced = running.heard;
    }
    Some((&slot.runner, running))
}

/// Gives up remote runs whose slot has said nothing for `silence` (its
/// node hangs, or the network between the nodes does, while the session
/// stays open), or whose engine has reported nothing for `stall` while the
/// heartbeat goes on (the engine hangs in a live process): each job hears
/// a transient error and is retried on another worker. The slot is held
/// back until it says it holds no run; a held-back slot is asked again at
/// every call, one request at a time.
pub(super) fn give_up_silent(state: &mut PoolState, silence: Duration, stall: Duration) {
    for (&index, slot) in state.slots.iter_mut() {
        let why = match slot.running.as_ref().filter(|r| r.remote.is_some()) {
            Some(r) if r.heard.elapsed() > silence => {
                Some(format!("said nothing for {} s", silence.as_secs()))
            }
            Some(r) if r.advanced.elapsed() > stall => {
                Some(format!("made no progress for {} s", stall.as_secs()))
            }
            _ => None,
        };
        if let Some(why) = why {
            slot.abandon(index, &why);
            if let Runner::Remote(remote) = &mut slot.runner {
                remote.hold_back(index);
            }
        } else if let Runner::Remote(remote) = &mut slot.runner {
            if remote.held && !remote.asked {
                remote.describe(index);
            }
        }
    }
}
