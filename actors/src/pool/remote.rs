//! The pool's side of remote workers (see [`crate::cluster`]): slots that
//! join and leave with their worker nodes, the reports of their runs, and
//! the task that serves each run's audio in chunks.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use murmur_seal::DataKey;

use ractor::pg::GroupChangeMessage;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use super::hub::Hub;
use super::{PoolMsg, PoolReply, PoolState, Runner, Slot};
use crate::cluster::wire::{Outcome, ToControl, ToWorker};
use crate::cluster::{CHUNK_BYTES, WORKER_GROUP};
use crate::engine::{WorkError, WorkRequest};
use crate::sealed::{is_artifact_name, ArtifactWriter};

/// A worker node's slot, as the pool holds it.
pub(super) struct RemoteSlot {
    actor: ActorRef<ToWorker>,
    /// The models its engine holds, as of its last description.
    pub models: Vec<String>,
    /// Its last run went silent and was given up: no work until the slot
    /// answers a description request again.
    pub silent: bool,
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

/// The job's artifacts folder here, and how its artifacts are sealed.
struct ArtifactDest {
    folder: PathBuf,
    key: Option<Arc<DataKey>>,
    job_id: String,
}

/// A chunk of an artifact, as the slot sent it.
struct ArtifactChunk {
    name: String,
    offset: u64,
    data: Vec<u8>,
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

    /// Asks the slot to describe itself (device, compute type, models):
    /// it answers with [`ToControl::Described`] naming `key`.
    fn describe(&self, key: usize) {
        let _ = self
            .actor
            .send_message(ToWorker::Describe { key: key as u64 });
    }
}

/// Opens the job's audio (through the seal when it is sealed), sends the
/// run, and answers asks for chunks until the run ends.
async fn serve_audio(
    slot: ActorRef<ToWorker>,
    pool: ActorRef<PoolMsg>,
    ticket: u64,
    mut request: Box<WorkRequest>,
    mut asks: mpsc::UnboundedReceiver<(u64, u32)>,
) {
    let stored = request.stored_audio();
    let opened = tokio::task::spawn_blocking(move || stored.open()).await;
    let (mut reader, len) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => {
            let outcome = Outcome::Transient(format!("the job's audio could not be read: {e}"));
            let _ = pool.send_message(PoolMsg::Remote(ToControl::Finished { ticket, outcome }));
            return;
        }
        Err(_) => return,
    };
    // The control node's paths and keys stay here.
    request.audio = Default::default();
    request.sealing = None;
    let _ = slot.send_message(ToWorker::Run {
        ticket,
        request,
        audio_bytes: len,
    });
    while let Some((offset, max)) = asks.recv().await {
        let max = max.clamp(1, CHUNK_BYTES) as usize;
        let read = tokio::task::spawn_blocking(move || {
            let mut data = Vec::with_capacity(max);
            let got = reader
                .seek(SeekFrom::Start(offset))
                .and_then(|_| (&mut reader).take(max as u64).read_to_end(&mut data));
            (reader, got.map(|_| data))
        })
        .await;
        let Ok((back, data)) = read else { return };
        reader = back;
        match data {
            Ok(data) => {
                metrics::counter!("murmur_cluster_audio_bytes_sent_total")
                    .increment(data.len() as u64);
                let _ = slot.send_message(ToWorker::Chunk {
                    ticket,
                    offset,
                    data,
                });
            }
            Err(e) => {
                let outcome = Outcome::Transient(format!("the job's audio could not be read: {e}"));
                let _ = pool.send_message(PoolMsg::Remote(ToControl::Finished { ticket, outcome }));
                return;
            }
        }
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
        let remote = RemoteSlot {
            actor: cell.into(),
            models: Vec::new(),
            silent: false,
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
            // It answers: a slot that had gone silent takes work again.
            let woke = std::mem::take(&mut remote.silent);
            if woke {
                tracing::info!(worker = key, node = %slot.node, "a silent worker slot answers again");
            }
            slot.node = info.node;
            slot.device = info.device;
            slot.compute_type = info.compute_type;
            slot.report_busy(key as usize);
            slot.report_counts(key as usize);
            woke
        }
        ToControl::Alive { ticket } => {
            heard(state, ticket);
            false
        }
        ToControl::Fetch {
            ticket,
            offset,
            max,
        } => {
            if let Some(slot) = heard(state, ticket) {
                if let Some(run) = slot.running.as_ref().and_then(|r| r.remote.as_ref()) {
                    let _ = run.feed.send((offset, max));
                }
            }
            false
        }
        ToControl::Stage { ticket, stage } => {
            if let Some(slot) = heard(state, ticket) {
                if let Some(r) = slot.running.as_mut() {
                    r.stage = Some(stage);
                    let _ = r.reply.send_message(PoolReply::Stage(stage));
                }
            }
            false
        }
        ToControl::Progress { ticket, fraction } => {
            if let Some(slot) = heard(state, ticket) {
                if let Some(r) = slot.running.as_ref() {
                    let _ = r.reply.send_message(PoolReply::Progress(fraction));
                }
            }
            false
        }
        ToControl::Checkpoint { ticket, state: cp } => {
            if let Some(slot) = heard(state, ticket) {
                if let Some(r) = slot.running.as_ref() {
                    let _ = r.reply.send_message(PoolReply::Checkpoint(cp));
                }
            }
            false
        }
        ToControl::Produced { ticket, artifacts } => {
            let Some((index, slot)) = state.by_ticket(ticket) else {
                return false;
            };
            let (Runner::Remote(remote), Some(r)) = (&slot.runner, slot.running.as_mut()) else {
                return false;
            };
            r.heard = Instant::now();
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
                    "worker {index} produced artifacts for a job that keeps none"
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
            if let Some(slot) = heard(state, ticket) {
                let collect = slot
                    .running
                    .as_ref()
                    .and_then(|r| r.remote.as_ref())
                    .and_then(|run| run.collect.as_ref());
                if let Some(tx) = collect {
                    let _ = tx.send(ArtifactChunk { name, offset, data });
                }
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
            if let Runner::Remote(remote) = &slot.runner {
                remote.describe(index);
            }
            true
        }
        ToControl::Malformed(_) => false,
    }
}

/// The slot running remote run `ticket`, which has just been heard from.
fn heard(state: &mut PoolState, ticket: u64) -> Option<&mut Slot> {
    let (_, slot) = state.by_ticket(ticket)?;
    if let Some(r) = slot.running.as_mut() {
        r.heard = Instant::now();
    }
    Some(slot)
}

/// Gives up remote runs whose slot has said nothing for `silence` (its
/// node hangs, or the network between the nodes does, while the session
/// stays open): each job hears a transient error and is retried on
/// another worker. The slot takes no more work until it answers a
/// description request, which is sent now and waits in its mailbox.
pub(super) fn give_up_silent(state: &mut PoolState, silence: Duration) {
    for (&index, slot) in state.slots.iter_mut() {
        let silent = slot
            .running
            .as_ref()
            .is_some_and(|r| r.remote.is_some() && r.heard.elapsed() > silence);
        if !silent {
            continue;
        }
        slot.abandon(index, &format!("said nothing for {} s", silence.as_secs()));
        if let Runner::Remote(remote) = &mut slot.runner {
            remote.silent = true;
            remote.describe(index);
        }
    }
}

/// What the task fetching a run's artifacts talks to.
struct Fetch {
    slot: ActorRef<ToWorker>,
    pool: ActorRef<PoolMsg>,
    ticket: u64,
}

impl Fetch {
    /// Ends the run with a transient error (its job is retried) and tells
    /// the slot to drop it.
    fn fail(&self, why: String) {
        tracing::warn!(ticket = self.ticket, %why, "fetching a worker node's artifacts failed");
        let outcome =
            Outcome::Transient(format!("fetching the job's stems from its worker: {why}"));
        let _ = self.pool.send_message(PoolMsg::Remote(ToControl::Finished {
            ticket: self.ticket,
            outcome,
        }));
        let _ = self.slot.send_message(ToWorker::Cancel {
            ticket: self.ticket,
        });
    }
}

/// Fetches each artifact of a run from its slot, a chunk at a time, into
/// the job's artifacts folder here (sealed with the tenant's key, as the
/// engine writes them), then tells the slot it may report the run done.
async fn collect(
    fetch: Fetch,
    dest: ArtifactDest,
    artifacts: Vec<(String, u64)>,
    mut chunks: mpsc::UnboundedReceiver<ArtifactChunk>,
) {
    if let Some((name, _)) = artifacts.iter().find(|(n, _)| !is_artifact_name(n)) {
        return fetch.fail(format!("an artifact named {name:?}"));
    }
    let folder = dest.folder.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || std::fs::create_dir_all(folder))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    {
        return fetch.fail(format!("creating the artifacts folder: {e}"));
    }
    for (name, len) in artifacts {
        let (folder, key, job) = (dest.folder.clone(), dest.key.clone(), dest.job_id.clone());
        let created = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || {
                ArtifactWriter::create(&folder, &name, key.as_deref(), &job)
            })
            .await
        };
        let mut out = match created {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return fetch.fail(format!("creating {name}: {e}")),
            Err(_) => return,
        };
        let mut offset = 0;
        while offset < len {
            let _ = fetch.slot.send_message(ToWorker::FetchArtifact {
                ticket: fetch.ticket,
                name: name.clone(),
                offset,
                max: CHUNK_BYTES,
            });
            // The run was dropped (cancelled, abandoned, its node gone).
            let Some(chunk) = chunks.recv().await else {
                return;
            };
            if chunk.name != name || chunk.offset != offset || chunk.data.is_empty() {
                return fetch.fail(format!("{name} ended early at byte {offset} of {len}"));
            }
            offset += chunk.data.len() as u64;
            let wrote =
                tokio::task::spawn_blocking(move || out.write_all(&chunk.data).map(|_| out)).await;
            out = match wrote {
                Ok(Ok(out)) => out,
                Ok(Err(e)) => return fetch.fail(format!("writing {name}: {e}")),
                Err(_) => return,
            };
        }
        match tokio::task::spawn_blocking(move || out.commit()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return fetch.fail(format!("writing {name}: {e}")),
            Err(_) => return,
        }
        metrics::counter!("murmur_cluster_artifact_bytes_received_total").increment(len);
    }
    let _ = fetch.slot.send_message(ToWorker::Collected {
        ticket: fetch.ticket,
    });
}
