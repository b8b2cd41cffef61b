//! Where the pool sends a job: to an idle worker whose engine holds the
//! job's model loaded, before one with a lower index that does not (its
//! first job there would load the model again).

mod common;

use std::sync::Arc;

use common::{eventually, quick_config, MemStore, TestEngine};
use murmur_actors::job::JobStatus;
use murmur_actors::{Engine, System};

/// The actor tree over `store`, one worker per engine, in order.
async fn start(store: &Arc<MemStore>, engines: [&Arc<TestEngine>; 2]) -> System {
    let engines = engines
        .into_iter()
        .map(|e| e.clone() as Arc<dyn Engine>)
        .collect();
    let (system, _root) = System::start(store.clone(), engines, quick_config())
        .await
        .expect("start");
    system
}

#[tokio::test]
async fn an_idle_worker_holding_the_jobs_model_is_chosen_first() {
    let store = Arc::new(MemStore::default());
    let first = Arc::new(TestEngine::default());
    let holder = Arc::new(TestEngine::default());
    let probe = store.add_queued("t1", "probe");
    let model = store.get("probe").params.model.clone();
    *first.holds.lock().unwrap() = vec!["some-other-model".to_string()];
    *holder.holds.lock().unwrap() = vec![model.clone()];
    let system = start(&store, [&first, &holder]).await;

    // One at a time, so both workers are idle at every choice.
    system.submitted(&probe);
    let mut ids = vec!["probe".to_string()];
    for i in 0..3 {
        let id = format!("j{i}");
        assert!(eventually(|| store.status(&ids[ids.len() - 1]) == JobStatus::Completed).await);
        system.submitted(&store.add_queued("t1", &id));
        ids.push(id);
    }
    assert!(eventually(|| store.status(&ids[ids.len() - 1]) == JobStatus::Completed).await);
    system.shutdown().await;
    for id in &ids {
        assert_eq!(
            holder.runs_of(id).len(),
            1,
            "{id} ran on the worker holding {model}"
        );
        assert!(first.runs_of(id).is_empty(), "{id}");
    }

    // With the model on neither, the lowest index takes it, as before.
    holder.holds.lock().unwrap().clear();
    let store = Arc::new(MemStore::default());
    let system = start(&store, [&first, &holder]).await;
    system.submitted(&store.add_queued("t1", "k0"));
    assert!(eventually(|| store.status("k0") == JobStatus::Completed).await);
    system.shutdown().await;
    assert_eq!(first.runs_of("k0").len(), 1);
}
