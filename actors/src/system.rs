//! The handle the service holds on the actor tree: submit, cancel,
//! subscribe, shut down. Cloning is shallow.

use std::sync::Arc;
use std::time::Duration;

use ractor::{call, Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::bus::{EventBus, Subscription, Topic};
pub use crate::config::SystemConfig;
use crate::ctx::Ctx;
use crate::engine::Engine;
use crate::job::Event;
use crate::orchestrator::{OrchArgs, OrchMsg, Orchestrator};
use crate::pool::{PoolMsg, PoolView};
use crate::repo::JobStore;

/// How long an operator's question waits for the pool's answer.
const VIEW_WAIT: Duration = Duration::from_secs(5);

/// Why [`System::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The root actor could not start (recovery could not read the store,
    /// or the pool could not spawn its workers).
    #[error("the job system could not start: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    /// The root started but did not answer with its context.
    #[error("the job system could not start: {0}")]
    NoAnswer(String),
}

#[derive(Clone)]
pub struct System {
    /// The root actor, where jobs and cancels go.
    orchestrator: ActorRef<OrchMsg>,
    /// The event bus, for publishing and subscriptions.
    bus: EventBus,
    /// The inference pool, for the operator's view (its failure stops the
    /// tree, so this handle lasts as long as the system).
    pool: ActorRef<PoolMsg>,
}

impl System {
    /// Starts the tree; unfinished jobs in `store` are resumed at once.
    /// `engines` has one entry per inference worker. Answers the handle and
    /// the root's join handle (it ends when the tree stops).
    pub async fn start(
        store: Arc<dyn JobStore>,
        engines: Vec<Arc<dyn Engine>>,
        config: SystemConfig,
    ) -> Result<(System, JoinHandle<()>), StartError> {
        Self::start_with(store, engines, config, None).await
    }

    /// As [`start`](Self::start); with `remote_workers`, the pool also
    /// dispatches to worker nodes that join (the control node must listen:
    /// [`crate::cluster::start_control`]). `engines` may then be empty.
    pub async fn start_with(
        store: Arc<dyn JobStore>,
        engines: Vec<Arc<dyn Engine>>,
        config: SystemConfig,
        remote_workers: Option<crate::cluster::RemoteWorkers>,
    ) -> Result<(System, JoinHandle<()>), StartError> {
        let (orchestrator, handle) = Actor::spawn(
            None,
            Orchestrator,
            OrchArgs {
                store,
                engines,
                config: Arc::new(config),
                remote_workers,
            },
        )
        .await?;
        let ctx: Ctx =
            call!(orchestrator, OrchMsg::Ctx).map_err(|e| StartError::NoAnswer(e.to_string()))?;
        let pool =
            call!(orchestrator, OrchMsg::Pool).map_err(|e| StartError::NoAnswer(e.to_string()))?;
        Ok((
            System {
                orchestrator,
                bus: ctx.bus,
                pool,
            },
            handle,
        ))
    }

    /// What announces a new job's `queued` event once it is durable, on
    /// the store's flushing thread (before [`System::submitted`]).
    pub fn announcer(&self) -> Box<dyn FnOnce(Event) + Send> {
        let bus = self.bus.clone();
        Box::new(move |queued| bus.publish(queued))
    }

    /// A job was created and its `queued` event announced (see
    /// [`System::announcer`]): queue it for its tenant.
    pub fn submitted(&self, queued: &Event) {
        let _ = self.orchestrator.send_message(OrchMsg::Enqueue {
            tenant: queued.tenant_id.clone(),
            job_id: queued.job_id.clone(),
        });
    }

    /// Announces an event the service wrote itself (a queued job cancelled).
    pub fn publish(&self, event: Event) {
        self.bus.publish(event);
    }

    /// Asks a running job to stop; the store already says it should.
    pub fn cancel(&self, tenant: &str, job_id: &str) {
        let _ = self.orchestrator.send_message(OrchMsg::Cancel {
            tenant: tenant.to_string(),
            job_id: job_id.to_string(),
        });
    }

    /// A live feed of one of `tenant`'s topics: that tenant's events only
    /// (see [`EventBus`]). Dropping it unsubscribes.
    pub fn subscribe(&self, tenant: &str, topic: Topic) -> Subscription {
        self.bus.subscribe(tenant, topic)
    }

    /// What each inference worker does and what waits, as the pool sees it
    /// now (one message to the pool, answered from its state). `None` when
    /// the pool does not answer in time (stopping, or overloaded).
    pub async fn workers(&self) -> Option<PoolView> {
        ractor::call_t!(self.pool, PoolMsg::Workers, VIEW_WAIT.as_millis() as u64).ok()
    }

    /// The bus itself, for tests and metrics.
    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    /// Stops the tree. Running jobs keep their `running` state and last
    /// checkpoint, and resume at the next start.
    pub async fn shutdown(&self) {
        let _ = self
            .orchestrator
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
    }
}
