//! Orchestrator: the root. It starts the inference pool, makes the event bus,
//! puts every unfinished job back in its tenant's queue at start (a job that
//! was running resumes from its checkpoint), and routes jobs and cancels to
//! TenantSupervisors, which it spawns on demand and retires when idle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{call, Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::bus::EventBus;
use crate::config::SystemConfig;
use crate::ctx::{carries_replies, Ctx};
use crate::engine::Engine;
use crate::error::ActorError;
use crate::pool::{InferencePool, PoolArgs, PoolMsg};
use crate::repo::JobStore;
use crate::tenant::{TenantArgs, TenantMsg, TenantReport, TenantSupervisor};

/// The orchestrator's messages.
pub(crate) enum OrchMsg {
    /// A job to run (created, or recovered at start): to its tenant's
    /// supervisor, spawned if the tenant has none.
    Enqueue { tenant: String, job_id: String },
    /// The user cancelled a job: to its tenant's supervisor, if it has one
    /// (a tenant without one has nothing running).
    Cancel { tenant: String, job_id: String },
    /// From a TenantSupervisor.
    Tenant(TenantReport),
    /// The shared context (for the bus), for the system handle.
    Ctx(ractor::RpcReplyPort<Ctx>),
    /// The inference pool, for the system handle (the operator's view of
    /// the workers asks it directly).
    Pool(ractor::RpcReplyPort<ActorRef<PoolMsg>>),
}

// Local only: never sent to another node.
impl ractor::Message for OrchMsg {}

// Tenant supervisors report to the orchestrator as to any parent.
carries_replies!(OrchMsg::Tenant(TenantReport));

pub(crate) struct Orchestrator;

pub(crate) struct OrchArgs {
    /// Durable state.
    pub store: Arc<dyn JobStore>,
    /// One engine per inference worker.
    pub engines: Vec<Arc<dyn Engine>>,
    /// Whether worker nodes may join, and how long their runs may stay
    /// silent (see [`crate::cluster`]).
    pub remote_workers: Option<crate::cluster::RemoteWorkers>,
    /// Retries, backoff and deadlines.
    pub config: Arc<SystemConfig>,
}

pub(crate) struct OrchState {
    /// The store, bus and settings, handed to every supervisor.
    ctx: Ctx,
    /// The inference pool (a linked child), handed to every supervisor.
    pool: ActorRef<PoolMsg>,
    /// The live tenant supervisors, by tenant.
    tenants: HashMap<String, ActorRef<TenantMsg>>,
}

impl Actor for Orchestrator {
    type Msg = OrchMsg;
    type State = OrchState;
    type Arguments = OrchArgs;

    async fn pre_start(
        &self,
        me: ActorRef<OrchMsg>,
        args: OrchArgs,
    ) -> Result<OrchState, ActorProcessingErr> {
        let bus = EventBus::new();
        let (pool, _) = Actor::spawn_linked(
            None,
            InferencePool,
            PoolArgs {
                engines: args.engines,
                remote_workers: args.remote_workers,
            },
            me.get_cell(),
        )
        .await?;
        let ctx = Ctx {
            store: args.store,
            bus,
            config: args.config,
        };
        // Recovery: every queued or running job goes back in line, oldest
        // first. Nothing a tenant submitted is lost to a crash or restart.
        let unfinished = ctx.store.unfinished_jobs().await?;
        if !unfinished.is_empty() {
            tracing::info!(jobs = unfinished.len(), "recovering unfinished jobs");
        }
        for job in unfinished {
            me.send_message(OrchMsg::Enqueue {
                tenant: job.tenant_id,
                job_id: job.id,
            })?;
        }
        Ok(OrchState {
            ctx,
            pool,
            tenants: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<OrchMsg>,
        msg: OrchMsg,
        state: &mut OrchState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            OrchMsg::Enqueue { tenant, job_id } => {
                let sup = supervisor(&me, state, &tenant).await?;
                sup.send_message(TenantMsg::Enqueue(job_id))?;
            }
            OrchMsg::Cancel { tenant, job_id } => {
                if let Some(sup) = state.tenants.get(&tenant) {
                    let _ = sup.send_message(TenantMsg::Cancel(job_id));
                }
            }
            OrchMsg::Tenant(TenantReport::Idle(tenant)) => {
                if let Some(sup) = state.tenants.get(&tenant).cloned() {
                    // Messages to it are ordered: if an Enqueue went out
                    // before this question, it is not idle any more.
                    if let Ok(true) = call!(sup, TenantMsg::ConfirmIdle) {
                        state.tenants.remove(&tenant);
                    }
                }
            }
            OrchMsg::Ctx(reply) => {
                let _ = reply.send(state.ctx.clone());
            }
            OrchMsg::Pool(reply) => {
                let _ = reply.send(state.pool.clone());
            }
        }
        metrics::gauge!("murmur_tenant_supervisors").set(state.tenants.len() as f64);
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<OrchMsg>,
        state: &mut OrchState,
    ) -> Result<(), ActorProcessingErr> {
        // The tree kills what is left once the root stops, and a killed
        // pool never runs its own post_stop: stop it first, so running
        // engine work is told to cancel (and ends at its next check)
        // instead of running on unseen.
        let _ = state
            .pool
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<OrchMsg>,
        event: SupervisionEvent,
        state: &mut OrchState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = event {
            let failed = state
                .tenants
                .iter()
                .find(|(_, sup)| sup.get_id() == cell.get_id())
                .map(|(t, _)| t.clone());
            match failed {
                Some(tenant) => {
                    // Rebuild the tenant's queue from the store.
                    tracing::error!(%tenant, %err, "tenant supervisor failed; restarting it");
                    state.tenants.remove(&tenant);
                    let jobs = state.ctx.store.unfinished_jobs().await?;
                    for job in jobs.into_iter().filter(|j| j.tenant_id == tenant) {
                        me.send_message(OrchMsg::Enqueue {
                            tenant: job.tenant_id,
                            job_id: job.id,
                        })?;
                    }
                }
                None => {
                    // The pool: without it no job can run. Stop
                    // the tree; the service sees it end and exits, its process
                    // supervisor restarts it, and recovery resumes every job.
                    return Err(ActorError::CoreActorFailed(err.to_string()).into());
                }
            }
        }
        Ok(())
    }
}

async fn supervisor(
    me: &ActorRef<OrchMsg>,
    state: &mut OrchState,
    tenant: &str,
) -> Result<ActorRef<TenantMsg>, ActorProcessingErr> {
    if let Some(sup) = state.tenants.get(tenant) {
        return Ok(sup.clone());
    }
    let (sup, _) = Actor::spawn_linked(
        None,
        TenantSupervisor,
        TenantArgs {
            tenant: tenant.to_string(),
            ctx: state.ctx.clone(),
            pool: state.pool.clone(),
            parent: me.get_derived(),
        },
        me.get_cell(),
    )
    .await?;
    state.tenants.insert(tenant.to_string(), sup.clone());
    Ok(sup)
}
