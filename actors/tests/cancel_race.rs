//! A queued job cancelled in the instant between its JobActor reading it
//! and marking it running must stay cancelled: found by reading the code
//! behind scripts/soak's "one terminal event" invariant. The store here is
//! in memory and commits the API's cancel right after the actor's read,
//! which is the race made deterministic.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use murmur_actors::job::{Event, EventType, Job, JobStatus};
use murmur_actors::params::JobParams;
use murmur_actors::repo::{AudioFile, JobChange};
use murmur_actors::{
    Engine, JobStore, RepoError, System, SystemConfig, TenantLimits, WorkError, WorkOutput,
    WorkRequest, WorkSink,
};
use serde_json::json;

#[derive(Default)]
struct MemStore {
    jobs: Mutex<HashMap<String, Job>>,
    events: Mutex<Vec<Event>>,
    /// Job ids whose next read is followed at once by a user's cancel.
    cancel_after_read: Mutex<Vec<String>>,
}

impl MemStore {
    fn append(&self, job: &Job, kind: EventType) -> Event {
        let mut events = self.events.lock().unwrap();
        let mut event = Event::of(job, kind);
        event.seq = events.iter().filter(|e| e.job_id == job.id).count() as u64 + 1;
        events.push(event.clone());
        event
    }

    fn kinds(&self, id: &str) -> Vec<EventType> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e.job_id == id)
            .map(|e| e.kind)
            .collect()
    }
}

#[async_trait]
impl JobStore for MemStore {
    async fn job(&self, _tenant: &str, id: &str) -> Result<Option<Job>, RepoError> {
        let read = self.jobs.lock().unwrap().get(id).cloned();
        let mut pending = self.cancel_after_read.lock().unwrap();
        if let Some(pos) = pending.iter().position(|j| j == id) {
            pending.remove(pos);
            // What `POST /v1/jobs/{id}/cancel` commits for a queued job.
            let mut jobs = self.jobs.lock().unwrap();
            let job = jobs.get_mut(id).unwrap();
            assert_eq!(job.status, JobStatus::Queued);
            job.cancel_requested = true;
            job.status = JobStatus::Cancelled;
            let job = job.clone();
            drop(jobs);
            self.append(&job, EventType::Cancelled);
        }
        Ok(read)
    }

    async fn transition(
        &self,
        _tenant: &str,
        id: &str,
        kind: Option<EventType>,
        mut change: JobChange,
    ) -> Result<Option<(Job, Option<Event>)>, RepoError> {
        let mut jobs = self.jobs.lock().unwrap();
        let Some(job) = jobs.get_mut(id) else {
            return Ok(None);
        };
        let mut changed = job.clone();
        if !change(&mut changed) {
            return Ok(None);
        }
        *job = changed.clone();
        drop(jobs);
        let event = kind.map(|k| self.append(&changed, k));
        Ok(Some((changed, event)))
    }

    async fn unfinished_jobs(&self) -> Result<Vec<Job>, RepoError> {
        let jobs = self.jobs.lock().unwrap();
        Ok(jobs
            .values()
            .filter(|j| !j.status.is_finished())
            .cloned()
            .collect())
    }

    async fn tenant_limits(&self, _tenant: &str) -> Result<TenantLimits, RepoError> {
        Ok(TenantLimits {
            concurrent_jobs: 1,
            priority: 0,
            queue_weight: 1,
            tier: "basic".into(),
            max_audio_seconds: None,
            translation_max_seconds: None,
        })
    }

    fn artifact_dir(&self, _tenant: &str, job_id: &str) -> PathBuf {
        std::env::temp_dir().join("murmur-cancel-race").join(job_id)
    }

    async fn audio_file(
        &self,
        _tenant: &str,
        _file_id: &str,
    ) -> Result<Option<AudioFile>, RepoError> {
        Ok(Some(AudioFile {
            path: PathBuf::from("/nonexistent.wav"),
            duration_s: Some(1.0),
            sealing: None,
        }))
    }
}

/// Finishes every job it is given, and counts them.
struct Instant(AtomicUsize);

impl Engine for Instant {
    fn run(
        &self,
        _request: &WorkRequest,
        _sink: &mut dyn WorkSink,
        _cancel: &AtomicBool,
    ) -> Result<WorkOutput, WorkError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(WorkOutput {
            result: json!({"duration_s": 1.0, "text": "", "segments": []}),
            audio_seconds: 1.0,
        })
    }
}

#[tokio::test]
async fn a_job_cancelled_while_its_actor_starts_is_never_run() {
    let store = Arc::new(MemStore::default());
    let job = Job::queued(
        "j_race".into(),
        "t1".into(),
        "u1".into(),
        "f1".into(),
        None,
        JobParams::defaults("tiny.en"),
    );
    store.append(&job, EventType::Queued);
    store.jobs.lock().unwrap().insert(job.id.clone(), job);
    store
        .cancel_after_read
        .lock()
        .unwrap()
        .push("j_race".into());
    let engine = Arc::new(Instant(AtomicUsize::new(0)));
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
        engine.0.load(Ordering::SeqCst),
        0,
        "the engine never ran it"
    );
}
