//! Group commit: [`GroupCommit::flush`] makes every write made before it
//! was called durable, sharing one `sled` flush among the callers that
//! arrive together.
//!
//! One flush runs at a time, on one of tokio's blocking threads. A caller
//! that arrives while none runs starts one, which covers its writes (they
//! were made before it began); a caller that arrives while one runs waits
//! for the next, which begins when the running one ends and covers every
//! caller that arrived meanwhile. So N concurrent writers cost about two
//! flushes, not N: before this, each flush call took its own blocking
//! thread, and under the orchestrator benchmark hundreds of them waited on
//! sled's one condition variable and were all woken at every log write.
//!
//! [`GroupCommit::then`] registers a callback instead of waiting: it runs
//! on the flushing thread once a flush covers the writes made before it
//! was registered, in registration order, before any waiter of the same
//! flush is woken. The job actors announce events that way, so they go on
//! with their next change while the last one is made durable, and events
//! still reach subscribers only once durable and in order.
//!
//! A failed flush fails its callers; a later flush that succeeds covers
//! the writes of callers that have not looked yet, so they succeed.
//! Limits: durability is sled's (`Db::flush`), nothing more.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use super::StoreError;

/// The outcome of the latest finished flush round.
#[derive(Clone, Default)]
struct Round {
    number: u64,
    /// Why it failed (shared by its waiters), or `None`.
    error: Option<Arc<str>>,
}

/// Runs once a flush covers what was written before it was registered:
/// `Ok` when durable, else why not.
pub(super) type Then = Box<dyn FnOnce(Result<(), Arc<str>>) + Send>;

#[derive(Default)]
struct Rounds {
    /// Rounds begun so far (the running one included).
    started: u64,
    /// The highest round a caller waits for.
    wanted: u64,
    running: bool,
    /// Callbacks and the round each needs, in registration order (and so
    /// in order of round).
    callbacks: VecDeque<(u64, Then)>,
}

/// Cloning is shallow.
#[derive(Clone)]
pub(super) struct GroupCommit {
    db: sled::Db,
    rounds: Arc<Mutex<Rounds>>,
    done: Arc<tokio::sync::watch::Sender<Round>>,
}

impl GroupCommit {
    pub(super) fn new(db: sled::Db) -> GroupCommit {
        GroupCommit {
            db,
            rounds: Arc::default(),
            done: Arc::new(tokio::sync::watch::Sender::new(Round::default())),
        }
    }

    /// Answers once every write made before this call is durable.
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        let mut done = self.done.subscribe();
        let need = self.want(None);
        let round = done
            .wait_for(|r| r.number >= need)
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .clone();
        match round.error {
            None => Ok(()),
            Some(why) => Err(StoreError::Io(std::io::Error::other(why.to_string()))),
        }
    }

    /// Runs `then` once every write made before this call is durable (or
    /// could not be made so), after the callbacks registered before it.
    pub(super) fn then(&self, then: Then) {
        self.want(Some(then));
    }

    /// Asks for a round that begins from now on (and so covers the
    /// caller's writes), starting one if none runs; answers its number.
    fn want(&self, then: Option<Then>) -> u64 {
        let mut rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
        let need = rounds.started + 1;
        rounds.wanted = need;
        if let Some(then) = then {
            rounds.callbacks.push_back((need, then));
        }
        if !rounds.running {
            rounds.running = true;
            rounds.started = need;
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.run(need));
        }
        need
    }

    /// Runs rounds from `first` on while callers want more.
    fn run(self, first: u64) {
        let mut number = first;
        loop {
            // A panic in sled must not leave callers waiting forever.
            let began = std::time::Instant::now();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.db.flush()));
            metrics::counter!("murmur_store_flushes_total").increment(1);
            metrics::histogram!("murmur_store_flush_seconds").record(began.elapsed().as_secs_f64());
            let error = match outcome {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(Arc::from(e.to_string())),
                Err(_) => Some(Arc::from("the store's flush panicked")),
            };
            let covered: Vec<Then> = {
                let mut rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
                let n = rounds
                    .callbacks
                    .iter()
                    .take_while(|(need, _)| *need <= number)
                    .count();
                rounds.callbacks.drain(..n).map(|(_, then)| then).collect()
            };
            for then in covered {
                let outcome = error.clone().map_or(Ok(()), Err);
                // One callback's panic must not stop the others or the rounds.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(outcome)));
            }
            let finished = Round { number, error };
            let more = {
                let mut rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
                if rounds.wanted > number {
                    number += 1;
                    rounds.started = number;
                    true
                } else {
                    rounds.running = false;
                    false
                }
            };
            if more {
                publish(&self.done, finished);
                continue;
            }
            // The last round: let go of the database before waking its
            // waiters, so a caller that closes and reopens the store right
            // after never finds it still held by this thread.
            let done = self.done.clone();
            drop(self);
            publish(&done, finished);
            return;
        }
    }
}

/// Announces a finished round, never going back to an earlier one (once
/// `running` is cleared, a new thread's round may finish first).
fn publish(done: &tokio::sync::watch::Sender<Round>, finished: Round) {
    done.send_if_modified(|latest| {
        if finished.number > latest.number {
            *latest = finished;
            true
        } else {
            false
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_flushes_and_all_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let commit = GroupCommit::new(db.clone());
        let writers: Vec<_> = (0..200u32)
            .map(|i| {
                let (db, commit) = (db.clone(), commit.clone());
                tokio::spawn(async move {
                    db.insert(i.to_be_bytes(), &b"v"[..]).unwrap();
                    commit.flush().await.unwrap();
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let rounds = commit.rounds.lock().unwrap().started;
        assert!((1..=200).contains(&rounds), "{rounds} rounds");
        assert!(!commit.rounds.lock().unwrap().running);
        drop(commit);
        drop(db);
        // Reopened, every acknowledged write is there.
        let db = super::super::open_sled(dir.path()).unwrap();
        assert_eq!(db.len(), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callbacks_run_in_order_once_durable_and_before_waiters_wake() {
        let dir = tempfile::tempdir().unwrap();
        let commit = GroupCommit::new(sled::open(dir.path()).unwrap());
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..500 {
            let order = order.clone();
            commit.then(Box::new(move |r| {
                r.unwrap();
                order.lock().unwrap().push(i);
            }));
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        // A flush asked for after them answers after every one ran.
        commit.flush().await.unwrap();
        assert_eq!(*order.lock().unwrap(), (0..500).collect::<Vec<_>>());
        assert!(commit.rounds.lock().unwrap().callbacks.is_empty());
    }

    #[tokio::test]
    async fn a_lone_caller_gets_its_own_round() {
        let dir = tempfile::tempdir().unwrap();
        let commit = GroupCommit::new(sled::open(dir.path()).unwrap());
        commit.flush().await.unwrap();
        commit.flush().await.unwrap();
        assert_eq!(commit.rounds.lock().unwrap().started, 2);
        assert_eq!(commit.done.borrow().number, 2);
    }
}
