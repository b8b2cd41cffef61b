//! A remote inference slot: on a worker node, the actor the control
//! node's pool dispatches to. It pulls the job's audio from the control
//! node in bounded chunks into a spool file (sealed with a key of the
//! run's own, kept in memory only), runs the engine on it on a blocking
//! thread, and sends every report back to the control node's hub.
//!
//! A job that separates writes its stems beside the spool, sealed with the
//! same key; when the engine succeeds, the slot names them (`Produced`),
//! serves them in chunks as the control node asks, and reports the run
//! finished once the control node says it has them (`Collected`).
//!
//! One run at a time; while it lasts, the slot says so every
//! [`HEARTBEAT`], so the control node can tell a slow run from a hung node.
//! If the hub leaves (the control node went away or the
//! session broke), the run is cancelled: the control node retries the job
//! from its last checkpoint, so nothing here needs to survive.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ractor::pg::GroupChangeMessage;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use murmur_seal::{DataKey, SealWriter};

use super::wire::{Outcome, ToControl, ToWorker, WorkerInfo};
use super::{hub, CHUNK_BYTES, HEARTBEAT, HUB_GROUP};
use crate::engine::{Engine, WorkError, WorkRequest, WorkSink};
use crate::job::JobStage;
use crate::sealed::{
    artifact_context, artifact_names, artifact_path, is_artifact_name, Sealing, StoredFile,
};

pub(crate) struct Slot;

pub(crate) struct SlotArgs {
    pub engine: Arc<dyn Engine>,
    pub info: WorkerInfo,
    /// Where runs' audio is spooled (removed when each run ends).
    pub spool_dir: PathBuf,
}

pub(crate) struct SlotState {
    args: SlotArgs,
    run: Option<Run>,
    /// A run that arrived while the last one was still stopping.
    next: Option<(u64, Box<WorkRequest>, u64)>,
}

/// The run in progress.
struct Run {
    ticket: u64,
    /// The hub that sent it: every report goes there.
    hub: ActorRef<ToControl>,
    /// The request; its audio path is the spool file.
    request: Option<Box<WorkRequest>>,
    /// The audio's length, and what has arrived of it.
    audio_bytes: u64,
    received: u64,
    spool: PathBuf,
    /// The spool, sealed with a key of this run's own that lives only in
    /// memory: the tenant's audio is never plain on the worker's disk, and
    /// a spool left by a crash cannot be read.
    file: Option<SealWriter<std::fs::File>>,
    /// That key; the run's artifacts are sealed with it too.
    key: Arc<DataKey>,
    /// The job's id (the artifacts' sealing context names it).
    job_id: String,
    /// Where the engine writes the run's artifacts (stems), for a job that
    /// separates; removed with the spool.
    artifacts: Option<PathBuf>,
    /// The engine's outcome, held while the control node fetches the
    /// artifacts; reported once it has them all.
    collecting: Option<Outcome>,
    cancel: Arc<AtomicBool>,
}

impl Run {
    /// Whether nothing runs that could end the run by itself: its audio is
    /// still arriving, or its artifacts are being fetched.
    fn waits_on_control(&self) -> bool {
        self.request.is_some() || self.collecting.is_some()
    }

    /// Artifact `name` of the run, as stored (sealed with the run's key).
    fn artifact(&self, name: &str) -> Option<StoredFile> {
        let folder = self.artifacts.as_ref()?;
        is_artifact_name(name).then(|| {
            StoredFile::new(
                &artifact_path(folder, name),
                Some(self.key.clone()),
                artifact_context(&self.job_id, name),
            )
        })
    }

    /// The run's artifacts and their lengths: what the engine left in its
    /// folder.
    fn produced(&self) -> std::io::Result<Vec<(String, u64)>> {
        let Some(folder) = &self.artifacts else {
            return Ok(Vec::new());
        };
        artifact_names(folder)
            .into_iter()
            .map(|name| {
                let (_, len) = self.artifact(&name).expect("a listed name").open()?;
                Ok((name, len))
            })
            .collect()
    }

    /// Up to `max` bytes of artifact `name` from `offset`.
    fn read_artifact(&self, name: &str, offset: u64, max: u32) -> std::io::Result<Vec<u8>> {
        let stored = self
            .artifact(name)
            .ok_or_else(|| std::io::Error::other(format!("no artifact {name:?} in this run")))?;
        let (mut reader, _) = stored.open()?;
        reader.seek(SeekFrom::Start(offset))?;
        let mut data = Vec::new();
        reader
            .take(u64::from(max.clamp(1, CHUNK_BYTES)))
            .read_to_end(&mut data)?;
        Ok(data)
    }
}

impl Run {
    /// Removes what the run wrote: its spool and its artifacts.
    fn remove_files(&self) {
        let _ = std::fs::remove_file(&self.spool);
        if let Some(folder) = &self.artifacts {
            let _ = std::fs::remove_dir_all(folder);
        }
    }

    fn fetch_next(&self) {
        let _ = self.hub.send_message(ToControl::Fetch {
            ticket: self.ticket,
            offset: self.received,
            max: CHUNK_BYTES,
        });
    }
}

/// The engine's reports, sent to the hub as they happen.
struct HubSink {
    hub: ActorRef<ToControl>,
    ticket: u64,
}

impl WorkSink for HubSink {
    fn stage(&mut self, stage: JobStage) {
        let _ = self.hub.send_message(ToControl::Stage {
            ticket: self.ticket,
            stage,
        });
    }
    fn progress(&mut self, fraction: f64) {
        let _ = self.hub.send_message(ToControl::Progress {
            ticket: self.ticket,
            fraction,
        });
    }
    fn checkpoint(&mut self, state: serde_json::Value) {
        let _ = self.hub.send_message(ToControl::Checkpoint {
            ticket: self.ticket,
            state,
        });
    }
}

impl Actor for Slot {
    type Msg = ToWorker;
    type State = SlotState;
    type Arguments = SlotArgs;

    async fn pre_start(
        &self,
        me: ActorRef<ToWorker>,
        args: SlotArgs,
    ) -> Result<SlotState, ActorProcessingErr> {
        // Hear when the control node's hub leaves, to stop a run nobody
        // waits for any more.
        ractor::pg::monitor(HUB_GROUP.to_string(), me.get_cell());
        std::fs::create_dir_all(&args.spool_dir)?;
        me.send_interval(HEARTBEAT, || ToWorker::Beat);
        Ok(SlotState {
            args,
            run: None,
            next: None,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<ToWorker>,
        msg: ToWorker,
        state: &mut SlotState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ToWorker::Describe { key } => {
                if let Some(hub) = hub() {
                    let mut info = state.args.info.clone();
                    info.models = state.args.engine.loaded_models();
                    info.busy = state.run.is_some() || state.next.is_some();
                    let _ = hub.send_message(ToControl::Described { key, info });
                }
            }
            ToWorker::Beat => {
                if let Some(run) = &state.run {
                    let _ = run
                        .hub
                        .send_message(ToControl::Alive { ticket: run.ticket });
                    // The run waiting for this one to stop is alive too:
                    // stopping an engine may take longer than the silence
                    // the control node allows.
                    // (It came from the hub of now, which may not be the
                    // old run's.)
                    if let (Some((ticket, ..)), Some(hub)) = (&state.next, hub()) {
                        let _ = hub.send_message(ToControl::Alive { ticket: *ticket });
                    }
                }
            }
            ToWorker::Run {
                ticket,
                request,
                audio_bytes,
            } => {
                let Some(hub) = hub() else { return Ok(()) };
                if state.run.is_some() {
                    // The last run is winding down after a cancel (its
                    // control node went away and came back): this one
                    // starts when it has stopped.
                    if let Some((old, ..)) = state.next.replace((ticket, request, audio_bytes)) {
                        let _ = hub.send_message(ToControl::Finished {
                            ticket: old,
                            outcome: Outcome::Transient("replaced by a newer run".into()),
                        });
                    }
                    return Ok(());
                }
                begin(state, hub, ticket, request, audio_bytes)?;
            }
            ToWorker::Chunk {
                ticket,
                offset,
                data,
            } => {
                let Some(run) = state.run.as_mut().filter(|r| r.ticket == ticket) else {
                    return Ok(());
                };
                let Some(file) = run.file.as_mut() else {
                    return Ok(());
                };
                if offset != run.received {
                    return Ok(());
                }
                if !data.is_empty() {
                    file.write_all(&data)?;
                    run.received += data.len() as u64;
                }
                if run.received < run.audio_bytes && !data.is_empty() {
                    run.fetch_next();
                    return Ok(());
                }
                // All of it: run the engine.
                if let Some(f) = run.file.take() {
                    f.finish()?;
                }
                let request = run.request.take().expect("a run starts once");
                let engine = state.args.engine.clone();
                let cancel = run.cancel.clone();
                let mut sink = HubSink {
                    hub: run.hub.clone(),
                    ticket,
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let outcome = tokio::task::spawn_blocking(move || {
                        engine.run(&request, &mut sink, &cancel)
                    })
                    .await
                    .unwrap_or_else(|join| {
                        Err(WorkError::Transient(format!(
                            "the remote worker's engine failed: {join}"
                        )))
                    });
                    let _ = me.send_message(ToWorker::Ended {
                        ticket,
                        outcome: outcome.into(),
                    });
                });
            }
            ToWorker::Cancel { ticket } => cancel(state, ticket),
            ToWorker::Ended { ticket, outcome } => {
                let Some(run) = state.run.as_mut().filter(|r| r.ticket == ticket) else {
                    return Ok(());
                };
                if !matches!(outcome, Outcome::Done { .. }) {
                    end(state, ticket, outcome);
                    return Ok(());
                }
                match run.produced() {
                    Ok(artifacts) if artifacts.is_empty() => end(state, ticket, outcome),
                    Ok(artifacts) => {
                        // Reported once the control node holds them.
                        run.collecting = Some(outcome);
                        let _ = run
                            .hub
                            .send_message(ToControl::Produced { ticket, artifacts });
                    }
                    Err(e) => {
                        let outcome =
                            Outcome::Transient(format!("reading the run's artifacts: {e}"));
                        end(state, ticket, outcome);
                    }
                }
            }
            ToWorker::FetchArtifact {
                ticket,
                name,
                offset,
                max,
            } => {
                let Some(run) = state
                    .run
                    .as_ref()
                    .filter(|r| r.ticket == ticket && r.collecting.is_some())
                else {
                    return Ok(());
                };
                match run.read_artifact(&name, offset, max) {
                    Ok(data) => {
                        let _ = run.hub.send_message(ToControl::ArtifactChunk {
                            ticket,
                            name,
                            offset,
                            data,
                        });
                    }
                    Err(e) => {
                        let outcome = Outcome::Transient(format!("reading artifact {name}: {e}"));
                        end(state, ticket, outcome);
                    }
                }
            }
            ToWorker::Collected { ticket } => {
                let outcome = state
                    .run
                    .as_mut()
                    .filter(|r| r.ticket == ticket)
                    .and_then(|r| r.collecting.take());
                if let Some(outcome) = outcome {
                    end(state, ticket, outcome);
                }
            }
            ToWorker::Malformed(why) => {
                tracing::warn!(%why, "dropped a message from the control node that did not decode");
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<ToWorker>,
        event: SupervisionEvent,
        state: &mut SlotState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Leave(_, group, _)) = event
        {
            if group == HUB_GROUP {
                if let Some(ticket) = state.run.as_ref().map(|r| r.ticket) {
                    tracing::warn!(
                        ticket,
                        "the control node went away; cancelling the run it asked for"
                    );
                    cancel(state, ticket);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ToWorker>,
        state: &mut SlotState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(run) = state.run.take() {
            run.cancel.store(true, Ordering::SeqCst);
            run.remove_files();
        }
        Ok(())
    }
}

/// Starts receiving a run's audio.
fn begin(
    state: &mut SlotState,
    hub: ActorRef<ToControl>,
    ticket: u64,
    mut request: Box<WorkRequest>,
    audio_bytes: u64,
) -> std::io::Result<()> {
    let spool = state
        .args
        .spool_dir
        .join(format!("slot{}-{ticket}.audio", state.args.info.slot));
    let key = Arc::new(DataKey::generate());
    let context = format!("spool/{ticket}");
    let file = SealWriter::new(std::fs::File::create(&spool)?, &key, context.as_bytes());
    request.audio = spool.clone();
    request.sealing = Some(Sealing {
        key: key.clone(),
        audio_context: context,
    });
    // A job that separates writes its stems here, sealed with the run's
    // key; the control node fetches them before the run is reported done.
    let artifacts = request.params.separates().then(|| {
        state
            .args
            .spool_dir
            .join(format!("slot{}-{ticket}.artifacts", state.args.info.slot))
    });
    request.artifacts = artifacts.clone();
    let run = Run {
        ticket,
        hub,
        job_id: request.job_id.clone(),
        request: Some(request),
        audio_bytes,
        received: 0,
        spool,
        file: Some(file),
        key,
        artifacts,
        collecting: None,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    run.fetch_next();
    state.run = Some(run);
    Ok(())
}

/// Stops run `ticket` at the engine's next check; a run with no engine
/// running (its audio still arriving, or its artifacts being fetched) ends
/// at once.
fn cancel(state: &mut SlotState, ticket: u64) {
    let Some(run) = state.run.as_ref().filter(|r| r.ticket == ticket) else {
        return;
    };
    run.cancel.store(true, Ordering::SeqCst);
    if run.waits_on_control() {
        end(state, ticket, Outcome::Cancelled);
    }
}

/// Reports the run's end, drops its spooled audio and artifacts, and
/// starts the run that waited for it, if any.
fn end(state: &mut SlotState, ticket: u64, outcome: Outcome) {
    let Some(run) = state.run.take_if(|r| r.ticket == ticket) else {
        return;
    };
    run.remove_files();
    let _ = run
        .hub
        .send_message(ToControl::Finished { ticket, outcome });
    if let (Some((ticket, request, audio_bytes)), Some(hub)) = (state.next.take(), hub()) {
        if let Err(e) = begin(state, hub.clone(), ticket, request, audio_bytes) {
            let outcome = Outcome::Transient(format!("spooling the audio: {e}"));
            let _ = hub.send_message(ToControl::Finished { ticket, outcome });
        }
    }
}
