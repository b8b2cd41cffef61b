//! JobActor: runs one job. It marks the job running, hands the work to the
//! inference pool, turns the engine's reports into durable state changes
//! and events (each written before it is announced), stores the result and
//! stops. A transient failure makes it fail, so its TenantSupervisor can
//! retry it; a user's cancel ends it `cancelled`.

use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::ctx::{carries_replies, Ctx};
use crate::engine::{WorkError, WorkOutput, WorkRequest};
use crate::error::ActorError;
use crate::job::{EventType, Job, JobStatus};
use crate::pool::{PoolMsg, PoolReply};

/// A job actor's messages.
pub(crate) enum JobMsg {
    /// Sent to itself at start: mark the job running and submit its work.
    Begin,
    /// From the inference pool: a report on the job's work.
    Work(PoolReply),
    /// From its tenant supervisor: the user cancelled the job.
    Cancel,
}

// Local only: never sent to another node.
impl ractor::Message for JobMsg {}

// The pool replies to a job actor as to any submitter.
carries_replies!(JobMsg::Work(PoolReply));

pub(crate) struct JobActor;

pub(crate) struct JobArgs {
    /// The job's tenant.
    pub tenant: String,
    /// The job to run.
    pub job_id: String,
    /// The store, bus and settings.
    pub ctx: Ctx,
    /// Where the job's work is submitted.
    pub pool: ActorRef<PoolMsg>,
}

pub(crate) struct JobState {
    /// The job as last written (each change answers the new row).
    job: Job,
    /// The store, bus and settings.
    ctx: Ctx,
    /// Where the job's work is submitted (and a cancel forwarded).
    pool: ActorRef<PoolMsg>,
    /// When the current stage began, for stage-duration metrics.
    stage_started: Instant,
    /// Set once the user asked to cancel: the engine's `Cancelled` then
    /// ends the job `cancelled` (and not on a shutdown).
    cancel_requested: bool,
    /// The job has ended here: later reports (from a replaced worker)
    /// change nothing.
    done: bool,
}

impl Actor for JobActor {
    type Msg = JobMsg;
    type State = JobState;
    type Arguments = JobArgs;

    async fn pre_start(
        &self,
        me: ActorRef<JobMsg>,
        args: JobArgs,
    ) -> Result<JobState, ActorProcessingErr> {
        let job = args
            .ctx
            .store
            .job(&args.tenant, &args.job_id)
            .await?
            .ok_or_else(|| ActorError::JobVanished(args.job_id.clone()))?;
        me.send_message(JobMsg::Begin)?;
        Ok(JobState {
            cancel_requested: job.cancel_requested,
            job,
            ctx: args.ctx,
            pool: args.pool,
            stage_started: Instant::now(),
            done: false,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<JobMsg>,
        msg: JobMsg,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        if state.done {
            // Late reports after the end (a replaced worker) change nothing.
            return Ok(());
        }
        match msg {
            JobMsg::Begin => begin(&me, state).await?,
            JobMsg::Work(PoolReply::Stage(stage)) => {
                record_stage_time(state);
                state.stage_started = Instant::now();
                update(state, Some(EventType::Stage), move |j| {
                    j.stage = Some(stage);
                    true
                })
                .await?;
            }
            JobMsg::Work(PoolReply::Progress(p)) => {
                let p = p.clamp(0.0, 1.0);
                update(state, Some(EventType::Progress), move |j| {
                    if !progress_advances(j.progress, p) {
                        return false;
                    }
                    j.progress = p;
                    true
                })
                .await?;
            }
            JobMsg::Work(PoolReply::Checkpoint(value)) => {
                update(state, None, move |j| {
                    j.checkpoint = Some(value.clone());
                    true
                })
                .await?;
            }
            JobMsg::Cancel => {
                state.cancel_requested = true;
                let _ = state.pool.send_message(PoolMsg::Cancel {
                    job_id: state.job.id.clone(),
                });
            }
            JobMsg::Work(PoolReply::Finished(outcome)) => {
                record_stage_time(state);
                finish(&me, state, outcome).await?;
            }
        }
        Ok(())
    }
}

fn record_stage_time(state: &JobState) {
    if let Some(stage) = state.job.stage {
        metrics::histogram!("murmur_stage_seconds", "stage" => stage.as_str())
            .record(state.stage_started.elapsed().as_secs_f64());
    }
}

async fn update(
    state: &mut JobState,
    kind: Option<EventType>,
    change: impl FnMut(&mut Job) -> bool + Send + 'static,
) -> Result<(), ActorProcessingErr> {
    if let Some(job) = state
        .ctx
        .transition(&state.job, kind, Box::new(change))
        .await?
    {
        state.job = job;
    }
    Ok(())
}

/// Marks the job running and hands it to the pool, unless it ended or was
/// cancelled while it waited.
async fn begin(me: &ActorRef<JobMsg>, state: &mut JobState) -> Result<(), ActorProcessingErr> {
    if state.job.status.is_finished() {
        state.done = true;
        me.stop(None);
        return Ok(());
    }
    if state.job.cancel_requested {
        return finish(me, state, Err(WorkError::Cancelled)).await;
    }
    let now = Utc::now();
    // Decided on the stored row, not on `state.job`: a cancel of the queued
    // job may have committed since pre_start read it, and a cancelled job
    // must not start (it would end twice, its log with two terminal events).
    let started = state
        .ctx
        .transition(
            &state.job,
            Some(EventType::Started),
            Box::new(move |j| {
                if j.status.is_finished() {
                    return false;
                }
                j.status = JobStatus::Running;
                j.attempts += 1;
                j.started_at.get_or_insert(now);
                j.updated_at = now;
                j.error = None;
                true
            }),
        )
        .await?;
    let Some(job) = started else {
        state.done = true;
        me.stop(None);
        return Ok(());
    };
    state.job = job;
    let ctx = &state.ctx;
    let job = &state.job;
    let audio = ctx.store.audio_file(&job.tenant_id, &job.file_id).await?;
    let Some(audio) = audio else {
        let msg = "the job's file was deleted before the job ran; upload it again".to_string();
        return finish(me, state, Err(WorkError::InvalidInput(msg))).await;
    };
    let limits = ctx.store.tenant_limits(&job.tenant_id).await?;
    let config = &ctx.config;
    let deadline = config.deadline_base
        + Duration::from_secs_f64(
            audio.duration_s.unwrap_or(600.0) * config.deadline_per_audio_second,
        );
    state.pool.send_message(PoolMsg::Submit {
        request: Box::new(WorkRequest {
            job_id: job.id.clone(),
            tenant_id: job.tenant_id.clone(),
            audio: audio.path,
            params: job.params.clone(),
            checkpoint: job.checkpoint.clone(),
            artifacts: Some(ctx.store.artifact_dir(&job.tenant_id, &job.id)),
            audio_limit: limits.audio_limit(&job.params),
            sealing: audio.sealing,
        }),
        priority: limits.priority,
        tier: limits.tier.clone(),
        weight: limits.queue_weight,
        // The work a job asks of the pool, for fair sharing: its audio.
        cost_s: audio.duration_s.unwrap_or(600.0).max(1.0),
        deadline,
        reply: me.get_derived(),
    })?;
    Ok(())
}

/// Smallest rise of progress worth an event: each event is a flushed
/// write and a message to every subscriber, and an engine may report after
/// every second of audio (a 3 h separation reported 10,800 times). So a
/// job's log holds at most about 200 progress events, whatever its length.
const PROGRESS_STEP: f64 = 0.005;

/// Whether progress moving from `recorded` to `reported` is recorded:
/// forward by at least [`PROGRESS_STEP`], or to the end.
fn progress_advances(recorded: f64, reported: f64) -> bool {
    reported > recorded && (reported >= recorded + PROGRESS_STEP || reported >= 1.0)
}

async fn finish(
    me: &ActorRef<JobMsg>,
    state: &mut JobState,
    outcome: Result<WorkOutput, WorkError>,
) -> Result<(), ActorProcessingErr> {
    let now = Utc::now();
    state.done = true;
    match outcome {
        Ok(output) => {
            let result = output.result;
            update(state, Some(EventType::Completed), move |j| {
                j.status = JobStatus::Completed;
                j.progress = 1.0;
                j.result = Some(result.clone());
                j.checkpoint = None;
                j.error = None;
                j.finished_at = Some(now);
                j.updated_at = now;
                true
            })
            .await?;
            metrics::counter!("murmur_jobs_total", "outcome" => "completed").increment(1);
            metrics::counter!("murmur_audio_seconds_total")
                .increment(output.audio_seconds.round() as u64);
        }
        Err(WorkError::Cancelled) if !state.cancel_requested => {
            // Stopped by a shutdown, not by the user: the job stays running
            // with its checkpoint and resumes at the next start.
        }
        Err(WorkError::Cancelled) => {
            update(state, Some(EventType::Cancelled), move |j| {
                if j.status.is_finished() {
                    return false;
                }
                j.status = JobStatus::Cancelled;
                j.finished_at = Some(now);
                j.updated_at = now;
                true
            })
            .await?;
            metrics::counter!("murmur_jobs_total", "outcome" => "cancelled").increment(1);
        }
        Err(WorkError::InvalidInput(msg)) => {
            update(state, Some(EventType::Failed), move |j| {
                j.status = JobStatus::Failed;
                j.error = Some(msg.clone());
                j.finished_at = Some(now);
                j.updated_at = now;
                true
            })
            .await?;
            metrics::counter!("murmur_jobs_total", "outcome" => "failed").increment(1);
        }
        Err(WorkError::Transient(msg)) => {
            // Fail the actor: the TenantSupervisor decides on a retry.
            return Err(ActorError::Transient(msg).into());
        }
    }
    me.stop(None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_recorded_in_steps_and_never_backwards() {
        assert!(progress_advances(0.0, 0.05));
        assert!(!progress_advances(0.05, 0.052));
        assert!(progress_advances(0.05, 0.055));
        assert!(!progress_advances(0.5, 0.4));
        assert!(!progress_advances(0.5, 0.5));
        assert!(progress_advances(0.998, 1.0));
        // Reported every second of a 3 h job: at most one event per step.
        let mut recorded = 0.0;
        let mut events = 0;
        for second in 1..=10_800 {
            let p = f64::from(second) / 10_800.0;
            if progress_advances(recorded, p) {
                recorded = p;
                events += 1;
            }
        }
        assert!(events <= 200, "{events} progress events");
        assert_eq!(recorded, 1.0);
    }
}
