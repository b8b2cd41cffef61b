//! EventBus: routes announced job events to live subscribers (WebSocket
//! connections) by topic. Events reach it only after they are durable in
//! the job's log, so a subscriber that missed some replays them from the
//! store.
//!
//! Topics are keyed by tenant first: a tenant's topics (`tenant`, every job
//! of it; `job:<id>`, one job) live in that tenant's own entry, and
//! [`EventBus::subscribe`] takes the tenant as a key, so a subscriber can
//! only ever hold a receiver of its own tenant's events; there is no
//! server-wide feed to filter. An event costs a map look-up when nobody
//! watches its tenant or job, and is serialized once (to a shared
//! [`Published::json`]) when somebody does, however many watch.
//!
//! Every topic is a bounded broadcast channel ([`SUBSCRIBER_BUFFER`]): a
//! slow subscriber falls behind and is told it lagged (it then resubscribes
//! with `after`); publishing never waits for a subscriber, so it never slows
//! a job or another subscriber. A topic's channel exists while somebody
//! holds a [`Subscription`] to it: the last one dropped removes it.
//!
//! Limits: one process (the topics are in memory); a subscriber sees events
//! published after it subscribed, and replays older ones from the store.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::ReusableBoxFuture;

use crate::job::Event;

/// How many events a subscriber may fall behind on one topic before it is
/// told it lagged.
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// An announced event and its JSON, serialized once for every subscriber.
#[derive(Debug)]
pub struct Published {
    pub event: Event,
    /// `event` as subscribers receive it (no tenant id, see [`Event`]).
    pub json: Arc<str>,
}

/// What a subscriber watches within its tenant.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub enum Topic {
    /// Every job of the tenant.
    Tenant,
    /// One job.
    Job(String),
}

type Sender = broadcast::Sender<Arc<Published>>;

/// One tenant's topics that somebody watches.
#[derive(Default)]
struct TenantTopics {
    all: Option<Sender>,
    jobs: HashMap<String, Sender>,
}

impl TenantTopics {
    fn get(&self, topic: &Topic) -> Option<&Sender> {
        match topic {
            Topic::Tenant => self.all.as_ref(),
            Topic::Job(id) => self.jobs.get(id),
        }
    }

    fn is_empty(&self) -> bool {
        self.all.is_none() && self.jobs.is_empty()
    }
}

type Topics = HashMap<String, TenantTopics>;

/// The bus; cloning is shallow (every clone routes through the same topics).
#[derive(Clone, Default)]
pub struct EventBus {
    tenants: Arc<RwLock<Topics>>,
}

impl EventBus {
    pub fn new() -> EventBus {
        EventBus::default()
    }

    /// Announces a durable event to the subscribers of its tenant's topic
    /// and of its job's. Never waits for a subscriber.
    pub fn publish(&self, event: Event) {
        let (all, job) = {
            // A panic elsewhere under the lock left the map whole (every
            // change to it is one insert or remove): carry on with it.
            let tenants = self.tenants.read().unwrap_or_else(PoisonError::into_inner);
            let Some(topics) = tenants.get(&event.tenant_id) else {
                return;
            };
            (topics.all.clone(), topics.jobs.get(&event.job_id).cloned())
        };
        if all.is_none() && job.is_none() {
            return;
        }
        let json: Arc<str> = match serde_json::to_string(&event) {
            Ok(json) => json.into(),
            Err(e) => {
                tracing::error!(error = %e, "an event could not be serialized");
                return;
            }
        };
        let published = Arc::new(Published { event, json });
        // An error means every receiver went away meanwhile: nobody to tell.
        for sender in all.iter().chain(job.iter()) {
            let _ = sender.send(published.clone());
        }
    }

    /// A live feed of one topic of `tenant`'s: only that tenant's events
    /// ever reach it. Dropping it unsubscribes.
    pub fn subscribe(&self, tenant: &str, topic: Topic) -> Subscription {
        let mut tenants = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        let topics = tenants.entry(tenant.to_string()).or_default();
        let sender = match &topic {
            Topic::Tenant => topics.all.get_or_insert_with(new_sender),
            Topic::Job(id) => topics.jobs.entry(id.clone()).or_insert_with(new_sender),
        };
        let receiver = sender.subscribe();
        drop(tenants);
        Subscription {
            feed: ReusableBoxFuture::new(next(receiver)),
            topic,
            tenant: tenant.to_string(),
            bus: self.clone(),
        }
    }

    /// Removes a topic nobody holds any more (and its tenant's entry when
    /// it was the last). Checked under the write lock, where no new
    /// receiver can appear.
    fn release(&self, tenant: &str, topic: &Topic) {
        let mut tenants = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        let Some(topics) = tenants.get_mut(tenant) else {
            return;
        };
        if topics.get(topic).is_some_and(|s| s.receiver_count() == 0) {
            match topic {
                Topic::Tenant => topics.all = None,
                Topic::Job(id) => {
                    topics.jobs.remove(id);
                }
            }
        }
        if topics.is_empty() {
            tenants.remove(tenant);
        }
    }

    /// Topics with at least one subscriber (tenant topics, job topics),
    /// for tests and metrics.
    pub fn topic_counts(&self) -> (usize, usize) {
        let tenants = self.tenants.read().unwrap_or_else(PoisonError::into_inner);
        tenants.values().fold((0, 0), |(t, j), topics| {
            (t + usize::from(topics.all.is_some()), j + topics.jobs.len())
        })
    }
}

fn new_sender() -> Sender {
    broadcast::channel(SUBSCRIBER_BUFFER).0
}

type Next = (
    Result<Arc<Published>, RecvError>,
    broadcast::Receiver<Arc<Published>>,
);

/// Waits for the next event, handing the receiver back with it (so one
/// boxed future is reused for every event, as tokio-stream does).
async fn next(mut receiver: broadcast::Receiver<Arc<Published>>) -> Next {
    let got = receiver.recv().await;
    (got, receiver)
}

/// One topic's live feed. Dropping it unsubscribes; the topic's channel
/// goes with its last subscriber.
pub struct Subscription {
    // The receiver lives inside the pending future (see [`next`]).
    feed: ReusableBoxFuture<'static, Next>,
    topic: Topic,
    tenant: String,
    bus: EventBus,
}

impl Subscription {
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The next event, or `Lagged(n)` when this subscriber fell more than
    /// [`SUBSCRIBER_BUFFER`] events behind (it then continues with the
    /// oldest event still buffered), or `Closed` (never while the bus
    /// lives: a topic's sender goes only with its last subscriber).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Arc<Published>, RecvError>> {
        let (got, receiver) = std::task::ready!(self.feed.poll(cx));
        self.feed.set(next(receiver));
        Poll::Ready(got)
    }

    pub async fn recv(&mut self) -> Result<Arc<Published>, RecvError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Drop the receiver (inside the future) first, then see whether
        // the topic is left without subscribers.
        self.feed.set(std::future::ready((
            Err(RecvError::Closed),
            broadcast::channel(1).1,
        )));
        self.bus.release(&self.tenant, &self.topic);
    }
}

/// A subscriber's topics, received as one feed (a WebSocket connection may
/// watch its tenant and any number of jobs). Topics are polled in turn, so
/// a busy one does not starve the others.
#[derive(Default)]
pub struct Feeds {
    subs: Vec<Subscription>,
    turn: usize,
}

impl Feeds {
    pub fn new() -> Feeds {
        Feeds::default()
    }

    pub fn contains(&self, topic: &Topic) -> bool {
        self.subs.iter().any(|s| &s.topic == topic)
    }

    /// Whether `job:<job_id>` is one of the topics (without building one).
    pub fn holds_job(&self, job_id: &str) -> bool {
        self.subs
            .iter()
            .any(|s| matches!(&s.topic, Topic::Job(id) if id == job_id))
    }

    /// Adds a subscription, replacing one to the same topic.
    pub fn insert(&mut self, sub: Subscription) {
        self.remove(&sub.topic.clone());
        self.subs.push(sub);
    }

    /// Unsubscribes from `topic`; `false` if it was not subscribed.
    pub fn remove(&mut self, topic: &Topic) -> bool {
        let before = self.subs.len();
        self.subs.retain(|s| &s.topic != topic);
        self.subs.len() != before
    }

    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// The next event on any topic, with the topic it came on. Pending
    /// while there is no topic.
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<(Topic, Result<Arc<Published>, RecvError>)> {
        let n = self.subs.len();
        for i in 0..n {
            let at = (self.turn + i) % n;
            if let Poll::Ready(got) = self.subs[at].poll_recv(cx) {
                self.turn = (at + 1) % n;
                return Poll::Ready((self.subs[at].topic.clone(), got));
            }
        }
        Poll::Pending
    }

    /// See [`Feeds::poll_recv`]. Cancel-safe: an event is taken only when
    /// it is returned.
    pub async fn recv(&mut self) -> (Topic, Result<Arc<Published>, RecvError>) {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// An event that is ready now, without waiting.
    pub fn try_recv(&mut self) -> Option<(Topic, Result<Arc<Published>, RecvError>)> {
        let waker = std::task::Waker::noop();
        match self.poll_recv(&mut Context::from_waker(waker)) {
            Poll::Ready(got) => Some(got),
            Poll::Pending => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{EventType, Job};
    use crate::params::JobParams;
    use std::time::Duration;

    fn event(tenant: &str, job: &str, seq: u64) -> Event {
        let job = Job::queued(
            job.into(),
            tenant.into(),
            "u".into(),
            "f".into(),
            None,
            JobParams::defaults("base"),
        );
        let mut e = Event::of(&job, EventType::Queued);
        e.seq = seq;
        e
    }

    #[tokio::test]
    async fn a_subscriber_gets_only_its_tenants_topic() {
        let bus = EventBus::new();
        let mut a = bus.subscribe("ta", Topic::Tenant);
        let mut b = bus.subscribe("tb", Topic::Tenant);
        let mut one_job = bus.subscribe("ta", Topic::Job("j1".into()));
        bus.publish(event("ta", "j1", 1));
        bus.publish(event("ta", "j2", 1));
        bus.publish(event("tb", "j3", 1));
        for want in ["j1", "j2"] {
            let got = a.recv().await.unwrap();
            assert_eq!(got.event.job_id, want);
            assert_eq!(got.event.tenant_id, "ta");
        }
        assert_eq!(b.recv().await.unwrap().event.job_id, "j3");
        assert_eq!(one_job.recv().await.unwrap().event.job_id, "j1");
        // Nothing else is waiting anywhere.
        for sub in [&mut a, &mut b, &mut one_job] {
            assert!(tokio::time::timeout(Duration::from_millis(50), sub.recv())
                .await
                .is_err());
        }
    }

    #[tokio::test]
    async fn the_json_is_the_event_without_its_tenant() {
        let bus = EventBus::new();
        let mut a = bus.subscribe("ta", Topic::Tenant);
        bus.publish(event("ta", "j1", 7));
        let got = a.recv().await.unwrap();
        assert_eq!(&*got.json, serde_json::to_string(&got.event).unwrap());
        assert!(got.json.contains("\"seq\":7"), "{}", got.json);
        assert!(!got.json.contains("ta\""), "{}", got.json);
    }

    #[tokio::test]
    async fn a_slow_subscriber_lags_and_never_holds_up_publishers_or_others() {
        let bus = EventBus::new();
        let mut slow = bus.subscribe("t", Topic::Tenant);
        let mut fast = bus.subscribe("t", Topic::Tenant);
        let total = SUBSCRIBER_BUFFER as u64 * 3;
        let reader = tokio::spawn(async move {
            let mut seen = 0;
            while seen < total {
                let got = fast.recv().await.expect("the fast subscriber never lags");
                seen += 1;
                assert_eq!(got.event.seq, seen);
            }
            seen
        });
        // The slow one reads nothing meanwhile; publishing never waits.
        let started = std::time::Instant::now();
        for seq in 1..=total {
            bus.publish(event("t", "j", seq));
            if seq % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), reader)
                .await
                .unwrap()
                .unwrap(),
            total
        );
        // The slow one is told how much it missed, then resumes with the
        // oldest event still buffered.
        match slow.recv().await {
            Err(RecvError::Lagged(missed)) => {
                assert_eq!(missed, total - SUBSCRIBER_BUFFER as u64)
            }
            other => panic!("expected a lag, got {other:?}"),
        }
        let next = slow.recv().await.unwrap();
        assert_eq!(next.event.seq, total - SUBSCRIBER_BUFFER as u64 + 1);
    }

    #[tokio::test]
    async fn topics_go_with_their_last_subscriber() {
        let bus = EventBus::new();
        let a = bus.subscribe("t", Topic::Tenant);
        let b = bus.subscribe("t", Topic::Tenant);
        let j = bus.subscribe("t", Topic::Job("j".into()));
        assert_eq!(bus.topic_counts(), (1, 1));
        drop(a);
        assert_eq!(bus.topic_counts(), (1, 1));
        drop(j);
        assert_eq!(bus.topic_counts(), (1, 0));
        drop(b);
        assert_eq!(bus.topic_counts(), (0, 0));
        assert!(bus.tenants.read().unwrap().is_empty());
        // Nobody watching: publishing is a look-up and nothing else.
        bus.publish(event("t", "j", 1));
    }

    #[tokio::test]
    async fn feeds_merge_topics_and_stop_at_unsubscribe() {
        let bus = EventBus::new();
        let mut feeds = Feeds::new();
        feeds.insert(bus.subscribe("t", Topic::Job("j1".into())));
        feeds.insert(bus.subscribe("t", Topic::Job("j2".into())));
        assert!(feeds.try_recv().is_none());
        bus.publish(event("t", "j1", 1));
        bus.publish(event("t", "j2", 1));
        bus.publish(event("t", "j3", 1));
        let mut got = Vec::new();
        while let Some((topic, e)) = feeds.try_recv() {
            let e = e.unwrap();
            assert_eq!(topic, Topic::Job(e.event.job_id.clone()));
            got.push(e.event.job_id.clone());
        }
        got.sort();
        assert_eq!(got, ["j1", "j2"]);
        assert!(feeds.remove(&Topic::Job("j1".into())));
        assert_eq!(bus.topic_counts(), (0, 1));
        bus.publish(event("t", "j1", 2));
        assert!(feeds.try_recv().is_none());
    }
}
