//! TenantSupervisor: one per tenant with work, spawned on demand by the
//! orchestrator and stopped when idle. Keeps the tenant's FIFO queue, starts
//! at most the tier's number of jobs at once (read at each start, so a tier
//! change applies to the next job), and supervises its JobActors: a job that
//! fails transiently is retried with exponential backoff up to the
//! configured attempts, then marked failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use chrono::Utc;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort, SupervisionEvent,
};

use crate::ctx::Ctx;
use crate::job::{EventType, JobStatus};
use crate::job_actor::{JobActor, JobArgs, JobMsg};
use crate::pool::PoolMsg;

/// A tenant supervisor's messages.
pub(crate) enum TenantMsg {
    /// A job to run (new, recovered or re-enqueued): queued at the back
    /// unless this supervisor knows it already.
    Enqueue(String),
    /// The user cancelled a job: dropped from the queue or its backoff, or
    /// its running JobActor told.
    Cancel(String),
    /// Sent to itself when a backoff ended: the job runs again, first in
    /// line.
    Retry(String),
    /// From the parent after an [`TenantReport::Idle`]: still idle? If so
    /// the supervisor answers `true` and stops.
    ConfirmIdle(RpcReplyPort<bool>),
}

// Local only: never sent to another node.
impl ractor::Message for TenantMsg {}

/// What a tenant supervisor tells its parent (the orchestrator), which
/// takes it as one of its own messages: the supervisor knows its parent
/// only as a `DerivedActorRef<TenantReport>`.
#[derive(Debug)]
pub(crate) enum TenantReport {
    /// The tenant (named) has nothing queued, running or backing off: the
    /// parent may retire the supervisor, once it confirms
    /// ([`TenantMsg::ConfirmIdle`]).
    Idle(String),
}

// Local only: never sent to another node.
impl ractor::Message for TenantReport {}

pub(crate) struct TenantSupervisor;

pub(crate) struct TenantArgs {
    /// The tenant supervised.
    pub tenant: String,
    /// The store, bus and settings.
    pub ctx: Ctx,
    /// Where its jobs submit their work.
    pub pool: ActorRef<PoolMsg>,
    /// Where it reports being idle.
    pub parent: DerivedActorRef<TenantReport>,
}

pub(crate) struct TenantState {
    /// The tenant supervised.
    tenant: String,
    /// The store, bus and settings.
    ctx: Ctx,
    /// Handed to each JobActor.
    pool: ActorRef<PoolMsg>,
    /// Where it reports being idle.
    parent: DerivedActorRef<TenantReport>,
    /// Jobs waiting for a free place, in order.
    queue: VecDeque<String>,
    /// Running JobActors by actor id: their job and handle.
    running: HashMap<ActorId, (String, ActorRef<JobMsg>)>,
    /// Jobs waiting out a retry backoff.
    backing_off: HashSet<String>,
    /// The tenant's tier when last looked up, and the queued/running counts
    /// this supervisor has added to that tier's gauges.
    tier: String,
    counted: (f64, f64),
}

impl TenantState {
    fn knows(&self, job_id: &str) -> bool {
        self.queue.iter().any(|j| j == job_id)
            || self.backing_off.contains(job_id)
            || self.running.values().any(|(j, _)| j == job_id)
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.running.is_empty() && self.backing_off.is_empty()
    }
}

impl Actor for TenantSupervisor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = TenantArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> Result<TenantState, ActorProcessingErr> {
        Ok(TenantState {
            tenant: args.tenant,
            ctx: args.ctx,
            pool: args.pool,
            parent: args.parent,
            queue: VecDeque::new(),
            running: HashMap::new(),
            backing_off: HashSet::new(),
            tier: String::new(),
            counted: (0.0, 0.0),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TenantMsg::Enqueue(job_id) => {
                if !state.knows(&job_id) {
                    state.queue.push_back(job_id);
                }
            }
            TenantMsg::Retry(job_id) => {
                if state.backing_off.remove(&job_id) {
                    // It had its turn already: first in line again.
                    state.queue.push_front(job_id);
                }
            }
            TenantMsg::Cancel(job_id) => {
                // A queued job was ended by the API already; drop it here.
                state.queue.retain(|j| *j != job_id);
                state.backing_off.remove(&job_id);
                if let Some((_, actor)) = state.running.values().find(|(j, _)| *j == job_id) {
                    let _ = actor.send_message(JobMsg::Cancel);
                }
            }
            TenantMsg::ConfirmIdle(reply) => {
                let idle = state.is_idle();
                let _ = reply.send(idle);
                if idle {
                    me.stop(None);
                }
                return Ok(());
            }
        }
        pump(&me, state).await?;
        report(state);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<TenantMsg>,
        event: SupervisionEvent,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.running.remove(&cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some((job_id, _)) = state.running.remove(&cell.get_id()) {
                    retry_or_fail(&me, state, job_id, err.to_string()).await?;
                }
            }
            _ => return Ok(()),
        }
        pump(&me, state).await?;
        report(state);
        Ok(())
    }
}

/// Starts queued jobs while the tier allows more to run.
async fn pump(me: &ActorRef<TenantMsg>, state: &mut TenantState) -> Result<(), ActorProcessingErr> {
    if state.queue.is_empty() {
        return Ok(());
    }
    let limits = state.ctx.store.tenant_limits(&state.tenant).await?;
    if limits.tier != state.tier {
        // Move this tenant's counts to its new tier's gauges.
        set_gauges(state, 0.0, 0.0);
        state.tier = limits.tier;
    }
    let limit = limits.concurrent_jobs.max(1) as usize;
    while state.running.len() < limit {
        let Some(job_id) = state.queue.pop_front() else {
            break;
        };
        let (actor, _) = Actor::spawn_linked(
            None,
            JobActor,
            JobArgs {
                tenant: state.tenant.clone(),
                job_id: job_id.clone(),
                ctx: state.ctx.clone(),
                pool: state.pool.clone(),
            },
            me.get_cell(),
        )
        .await?;
        state.running.insert(actor.get_id(), (job_id, actor));
    }
    Ok(())
}

/// After a transient failure: back off and retry, or give up.
async fn retry_or_fail(
    me: &ActorRef<TenantMsg>,
    state: &mut TenantState,
    job_id: String,
    error: String,
) -> Result<(), ActorProcessingErr> {
    let Some(job) = state.ctx.store.job(&state.tenant, &job_id).await? else {
        return Ok(());
    };
    if job.status.is_finished() {
        return Ok(());
    }
    let config = &state.ctx.config;
    let now = Utc::now();
    if job.cancel_requested || job.attempts >= config.max_attempts {
        let cancelled = job.cancel_requested;
        let kind = if cancelled {
            EventType::Cancelled
        } else {
            EventType::Failed
        };
        let message = format!("failed after {} attempts: {error}", job.attempts);
        state
            .ctx
            .transition(
                &job,
                Some(kind),
                Box::new(move |j| {
                    j.status = if cancelled {
                        JobStatus::Cancelled
                    } else {
                        JobStatus::Failed
                    };
                    if !cancelled {
                        j.error = Some(message.clone());
                    }
                    j.finished_at = Some(now);
                    j.updated_at = now;
                    true
                }),
            )
            .await?;
        metrics::counter!("murmur_jobs_total", "outcome" => if cancelled { "cancelled" } else { "failed" }).increment(1);
        return Ok(());
    }
    let delay = backoff(config.backoff_base, config.backoff_max, job.attempts);
    let message = error.clone();
    state
        .ctx
        .transition(
            &job,
            Some(EventType::Retrying),
            Box::new(move |j| {
                j.status = JobStatus::Queued;
                j.error = Some(message.clone());
                j.updated_at = now;
                true
            }),
        )
        .await?;
    metrics::counter!("murmur_job_retries_total").increment(1);
    tracing::warn!(job = %job_id, attempt = job.attempts, ?delay, %error, "job failed transiently; retrying");
    state.backing_off.insert(job_id.clone());
    me.send_after(delay, move || TenantMsg::Retry(job_id));
    Ok(())
}

/// `base * 2^(attempt-1)`, at most `max`.
pub(crate) fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    base.saturating_mul(factor).min(max)
}

/// Brings the tier's `murmur_jobs_queued` / `murmur_jobs_running` gauges
/// to this tenant's current counts (gauges are shared by all tenants of a
/// tier, so each supervisor adds only its own difference).
fn set_gauges(state: &mut TenantState, queued: f64, running: f64) {
    if state.tier.is_empty() {
        return;
    }
    let (was_queued, was_running) = state.counted;
    let tier = state.tier.clone();
    metrics::gauge!("murmur_jobs_queued", "tier" => tier.clone()).increment(queued - was_queued);
    metrics::gauge!("murmur_jobs_running", "tier" => tier).increment(running - was_running);
    state.counted = (queued, running);
}

/// Updates the gauges and tells the orchestrator when there is nothing left
/// to do.
fn report(state: &mut TenantState) {
    let queued = (state.queue.len() + state.backing_off.len()) as f64;
    let running = state.running.len() as f64;
    set_gauges(state, queued, running);
    if state.is_idle() {
        let _ = state
            .parent
            .send_message(TenantReport::Idle(state.tenant.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(10);
        assert_eq!(backoff(base, max, 1), Duration::from_millis(500));
        assert_eq!(backoff(base, max, 2), Duration::from_secs(1));
        assert_eq!(backoff(base, max, 3), Duration::from_secs(2));
        assert_eq!(backoff(base, max, 10), max);
    }
}
