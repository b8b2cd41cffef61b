//! EventBus: fans announced job events out to live subscribers (WebSocket
//! connections). Events reach it only after they are durable in the job's
//! log, so a subscriber that missed some replays them from the store.
//!
//! Subscribers get a bounded broadcast receiver: a slow one falls behind
//! and is told it lagged (it then resubscribes with `after`); it never
//! slows a job or another subscriber.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::broadcast;

use crate::job::Event;

/// How many events a subscriber may fall behind before it is told it lagged.
pub const SUBSCRIBER_BUFFER: usize = 1024;

pub enum BusMsg {
    Publish(Event),
    Subscribe(RpcReplyPort<broadcast::Receiver<Arc<Event>>>),
}

pub struct EventBus;

pub struct BusState {
    sender: broadcast::Sender<Arc<Event>>,
}

impl Actor for EventBus {
    type Msg = BusMsg;
    type State = BusState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _me: ActorRef<BusMsg>,
        _: (),
    ) -> Result<BusState, ActorProcessingErr> {
        let (sender, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        Ok(BusState { sender })
    }

    async fn handle(
        &self,
        _me: ActorRef<BusMsg>,
        msg: BusMsg,
        state: &mut BusState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BusMsg::Publish(event) => {
                // No receivers is fine: nobody is watching.
                let _ = state.sender.send(Arc::new(event));
            }
            BusMsg::Subscribe(reply) => {
                let _ = reply.send(state.sender.subscribe());
            }
        }
        Ok(())
    }
}
