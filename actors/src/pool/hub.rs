//! The control node's hub: the one actor worker nodes report to (see
//! [`crate::cluster`]). It joins the [`HUB_GROUP`] process group, so every
//! worker node finds it, and hands each report to the inference pool,
//! which knows which run a ticket belongs to. The pool's, not the
//! cluster's: the cluster module knows nothing of the pool.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::PoolMsg;
use crate::cluster::wire::ToControl;
use crate::cluster::HUB_GROUP;

pub(crate) struct Hub;

impl Actor for Hub {
    type Msg = ToControl;
    type State = ActorRef<PoolMsg>;
    type Arguments = ActorRef<PoolMsg>;

    async fn pre_start(
        &self,
        me: ActorRef<ToControl>,
        pool: ActorRef<PoolMsg>,
    ) -> Result<ActorRef<PoolMsg>, ActorProcessingErr> {
        ractor::pg::join(HUB_GROUP.to_string(), vec![me.get_cell()]);
        Ok(pool)
    }

    async fn handle(
        &self,
        _me: ActorRef<ToControl>,
        msg: ToControl,
        pool: &mut ActorRef<PoolMsg>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ToControl::Malformed(why) => {
                tracing::warn!(%why, "dropped a worker node's message that did not decode");
            }
            msg => {
                let _ = pool.send_message(PoolMsg::Remote(msg));
            }
        }
        Ok(())
    }
}
