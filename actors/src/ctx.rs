//! What every actor of the tree shares, and the one way a job's state
//! changes ([`Ctx::transition`]: durable first, announced after). It holds
//! no actor handle and imports no actor module, so the actors all depend on
//! it and it on none of them; each actor is handed the handles it needs
//! (the pool's, its parent's) in its own arguments.

use std::sync::Arc;

use ractor::ActorProcessingErr;

use crate::bus::EventBus;
use crate::config::SystemConfig;
use crate::job::{EventType, Job};
use crate::repo::{Announce, JobChange, JobStore};

/// Lets a parent take its child's reply type (`$reply`) as its own
/// message variant `$msg::$variant`, both ways, as
/// [`ractor::ActorRef::get_derived`] asks: the child then holds a
/// `DerivedActorRef<$reply>` and never names its parent's message type.
macro_rules! carries_replies {
    ($msg:ident::$variant:ident($reply:ty)) => {
        impl From<$reply> for $msg {
            fn from(reply: $reply) -> Self {
                $msg::$variant(reply)
            }
        }

        impl TryFrom<$msg> for $reply {
            type Error = $msg;

            fn try_from(msg: $msg) -> Result<Self, $msg> {
                match msg {
                    $msg::$variant(reply) => Ok(reply),
                    other => Err(other),
                }
            }
        }
    };
}
pub(crate) use carries_replies;

/// The store, the event bus and the settings; cloning is shallow.
#[derive(Clone)]
pub(crate) struct Ctx {
    /// Durable state: jobs, their events, tenants' limits, files.
    pub store: Arc<dyn JobStore>,
    /// Live fan-out of the events the store has made durable.
    pub bus: EventBus,
    /// Retries, backoff and the inference deadline.
    pub config: Arc<SystemConfig>,
}

impl Ctx {
    /// Applies a change and answers the job as changed; its event is
    /// announced once the change is durable (the caller need not wait for
    /// that: see `JobStore::transition_announced`).
    pub async fn transition(
        &self,
        job: &Job,
        kind: Option<EventType>,
        change: JobChange,
    ) -> Result<Option<Job>, ActorProcessingErr> {
        let bus = self.bus.clone();
        let job_id = job.id.clone();
        let announce: Announce = Box::new(move |durable| match durable {
            Ok(Some(event)) => bus.publish(event),
            Ok(None) => {}
            // The store could not flush: nothing is announced, and the
            // next start resumes the job from what is durable.
            Err(e) => tracing::error!(job = %job_id, error = %e, "a job's change is not durable"),
        });
        self.store
            .transition_announced(&job.tenant_id, &job.id, kind, change, announce)
            .await
            .map_err(ActorProcessingErr::from)
    }
}
