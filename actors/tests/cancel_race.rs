//! A queued job cancelled in the instant between its JobActor reading it
//! and marking it running must stay cancelled: found by reading the code
//! behind scripts/soak's "one terminal event" invariant. The store here is
//! in memory and commits the API's cancel right after the actor's read,
//! which is the race made deterministic.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{MemStore, TestEngine};
use murmur_actors::job::{EventType, JobStatus};
use murmur_actors::{Engine, System, SystemConfig};

#[tokio::test]
async fn a_job_cancelled_while_its_actor_starts_is_never_run() {
    let store = Arc::new(MemStore::default());
    store.add_queued("t1", "j_race");
    store
        .cancel_after_read
        .lock()
        .unwrap()
        .push("j_race".into());
    let engine = Arc::new(TestEngine::default());
    // Recovery at start queues the job, as after a restart.
    let (system, _root) = System::start(
        store.clone(),
        vec![engine.clone() as Arc<dyn Engine>],
        SystemConfig::default(),
    )
    .await
    .unwrap();
    // Long enough for a wrongly started job to run to its end.
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if store.kinds("j_race").len() > 2 {
            break;
        }
    }
    system.shutdown().await;
    let job = store.jobs.lock().unwrap().get("j_race").cloned().unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(job.attempts, 0);
    assert_eq!(
        store.kinds("j_race"),
        vec![EventType::Queued, EventType::Cancelled],
        "one terminal event, the last"
    );
    assert_eq!(
        engine.runs.lock().unwrap().len(),
        0,
        "the engine never ran it"
    );
}
