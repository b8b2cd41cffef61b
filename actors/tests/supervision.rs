//! The actor tree's supervision, driven without HTTP over the in-memory
//! store: a transient engine error is retried with backoff until the job
//! completes or its attempts run out, and a restart over the same store
//! resumes every queued and running job, each completed exactly once.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{eventually, held_checkpoint, quick_config, MemStore, TestEngine, TRANSIENT};
use murmur_actors::job::{EventType, JobStatus};
use murmur_actors::{Engine, System, SystemConfig};

async fn start(store: &Arc<MemStore>, engine: &Arc<TestEngine>, config: SystemConfig) -> System {
    let (system, _root) = System::start(
        store.clone(),
        vec![engine.clone() as Arc<dyn Engine>],
        config,
    )
    .await
    .expect("start");
    system
}

/// Runs one job, `j1`, on `engine` until it ends `end`, and answers the
/// store after checking that its log is two attempts, then `end`.
async fn one_job(engine: &Arc<TestEngine>, config: SystemConfig, end: JobStatus) -> Arc<MemStore> {
    let store = Arc::new(MemStore::default());
    let system = start(&store, engine, config).await;
    system.submitted(&store.add_queued("t1", "j1"));
    let done = eventually(|| store.status("j1") == end).await;
    system.shutdown().await;
    assert!(done, "status {:?}", store.status("j1"));
    let last = match end {
        JobStatus::Completed => EventType::Completed,
        _ => EventType::Failed,
    };
    assert_eq!(
        store.kinds("j1"),
        vec![
            EventType::Queued,
            EventType::Started,
            EventType::Retrying,
            EventType::Started,
            last,
        ]
    );
    store
}

#[tokio::test]
async fn a_transient_engine_error_is_retried_and_the_job_completes() {
    let engine = Arc::new(TestEngine::default());
    engine.transient_failures.store(1, Ordering::SeqCst);
    let store = one_job(&engine, quick_config(), JobStatus::Completed).await;
    let retrying = &store.events_of("j1")[2];
    assert_eq!(retrying.error.as_deref(), Some(TRANSIENT));
    let job = store.get("j1");
    assert_eq!(job.attempts, 2);
    assert_eq!(job.error, None, "a completed job keeps no error");
    assert_eq!(job.result.unwrap()["text"], "j1");
    assert_eq!(engine.runs_of("j1").len(), 2);
}

#[tokio::test]
async fn a_job_failing_on_every_attempt_fails_once_its_attempts_run_out() {
    let engine = Arc::new(TestEngine::default());
    engine.transient_failures.store(u32::MAX, Ordering::SeqCst);
    let config = SystemConfig {
        max_attempts: 2,
        ..quick_config()
    };
    let store = one_job(&engine, config, JobStatus::Failed).await;
    let job = store.get("j1");
    assert_eq!(
        job.error.as_deref(),
        Some(format!("failed after 2 attempts: {TRANSIENT}").as_str())
    );
    assert_eq!(engine.runs_of("j1").len(), 2, "no third attempt");
}

#[tokio::test]
async fn a_restart_resumes_running_and_queued_jobs_and_completes_each_once() {
    let store = Arc::new(MemStore::default());
    // One job at a time per tenant: the first runs (and is held), the
    // others wait in the tenant's queue when the tree stops.
    let jobs = ["j1", "j2", "j3"];
    for id in jobs {
        store.add_queued("t1", id);
    }
    let first = Arc::new(TestEngine::default());
    first.hold.store(true, Ordering::SeqCst);
    let system = start(&store, &first, quick_config()).await;
    // Recovery at start queued them; wait for the held job's checkpoint to
    // be durable.
    let held = eventually(|| {
        jobs.iter()
            .any(|id| store.get(id).checkpoint == Some(held_checkpoint()))
    })
    .await;
    assert!(held, "no job ran");
    system.shutdown().await;
    // Stopping the tree told the running engine to stop, rather than
    // leaving it to run on unseen.
    let stopped = eventually(|| first.cancelled.load(Ordering::SeqCst) == 1).await;
    assert!(stopped, "the held run was never told to cancel");
    let running: Vec<&str> = jobs
        .into_iter()
        .filter(|id| store.status(id) == JobStatus::Running)
        .collect();
    assert_eq!(running.len(), 1, "one job was running: {running:?}");
    let resumed = running[0];
    for id in jobs {
        assert!(!store.status(id).is_finished(), "{id} ended at shutdown");
    }

    // The same store, a new tree: nothing was lost and nothing runs twice.
    let second = Arc::new(TestEngine::default());
    let system = start(&store, &second, quick_config()).await;
    let done = eventually(|| {
        jobs.iter()
            .all(|id| store.status(id) == JobStatus::Completed)
    })
    .await;
    system.shutdown().await;
    assert!(done, "{:?}", jobs.map(|id| store.status(id)));
    for id in jobs {
        let kinds = store.kinds(id);
        let ends = kinds
            .iter()
            .filter(|k| {
                matches!(
                    k,
                    EventType::Completed | EventType::Failed | EventType::Cancelled
                )
            })
            .count();
        assert_eq!(ends, 1, "{id}: {kinds:?}");
        assert_eq!(kinds.last(), Some(&EventType::Completed), "{id}: {kinds:?}");
        assert_eq!(
            second.runs_of(id).len(),
            1,
            "{id} ran once after the restart"
        );
    }
    // The interrupted job resumed from its checkpoint, as its second attempt.
    assert_eq!(
        second.runs_of(resumed)[0].checkpoint,
        Some(held_checkpoint())
    );
    assert_eq!(store.get(resumed).attempts, 2);
    assert_eq!(first.runs.lock().unwrap().len(), 1, "only one ran before");
}
