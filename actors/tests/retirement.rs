//! A tenant supervisor retires once its tenant has nothing queued, running
//! or backing off, and a later job of that tenant starts a new one: seen
//! through the `murmur_tenant_supervisors` gauge the orchestrator keeps
//! (its own test binary, since a metrics recorder is process-wide).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{eventually, quick_config, MemStore, TestEngine};
use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use murmur_actors::job::JobStatus;
use murmur_actors::{Engine, System};

/// The gauge's value (f64 bits) and the most it has been.
static SUPERVISORS: AtomicU64 = AtomicU64::new(0);
static MOST: AtomicU64 = AtomicU64::new(0);

struct SupervisorGauge;

impl GaugeFn for SupervisorGauge {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        SUPERVISORS.store(value.to_bits(), Ordering::SeqCst);
        MOST.fetch_max(value as u64, Ordering::SeqCst);
    }
}

/// Records the one gauge this test reads; every other metric is a no-op.
struct Only;

impl Recorder for Only {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        if key.name() == "murmur_tenant_supervisors" {
            Gauge::from_arc(Arc::new(SupervisorGauge))
        } else {
            Gauge::noop()
        }
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn supervisors() -> f64 {
    f64::from_bits(SUPERVISORS.load(Ordering::SeqCst))
}

#[tokio::test]
async fn an_idle_tenant_supervisor_retires_and_a_later_job_starts_another() {
    metrics::set_global_recorder(Only).expect("the only recorder");
    let store = Arc::new(MemStore::default());
    let engine = Arc::new(TestEngine::default());
    let (system, _root) = System::start(
        store.clone(),
        vec![engine.clone() as Arc<dyn Engine>],
        quick_config(),
    )
    .await
    .expect("start");

    for (round, tenants) in [["ta", "tb"], ["ta", "tc"]].into_iter().enumerate() {
        MOST.store(0, Ordering::SeqCst);
        let ids: Vec<String> = tenants.iter().map(|t| format!("{t}-{round}")).collect();
        for (tenant, id) in tenants.iter().zip(&ids) {
            system.submitted(&store.add_queued(tenant, id));
        }
        let done = eventually(|| {
            ids.iter()
                .all(|id| store.status(id) == JobStatus::Completed)
        })
        .await;
        assert!(done, "round {round}: jobs did not complete");
        let retired = eventually(|| supervisors() == 0.0).await;
        assert!(retired, "round {round}: {} supervisors left", supervisors());
        assert_eq!(
            MOST.load(Ordering::SeqCst),
            2,
            "round {round}: one supervisor per tenant with work"
        );
    }
    system.shutdown().await;
    // "ta" was retired after round 0 and served again in round 1.
    assert_eq!(engine.runs_of("ta-1").len(), 1);
}
