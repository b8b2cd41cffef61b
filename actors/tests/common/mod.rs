//! Shared by the actor tests, which drive the real actor tree without HTTP
//! or sled: an in-memory [`JobStore`] (every write durable at once, events
//! numbered per job), an engine that stands in for the models and can fail
//! or hold a job, or say it holds models, and a poll helper.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use murmur_actors::job::{Event, EventType, Job, JobStatus};
use murmur_actors::params::JobParams;
use murmur_actors::repo::{AudioFile, JobChange};
use murmur_actors::{
    Engine, JobStore, RepoError, SystemConfig, TenantLimits, WorkError, WorkOutput, WorkRequest,
    WorkSink,
};
use serde_json::json;

#[derive(Default)]
pub struct MemStore {
    pub jobs: Mutex<HashMap<String, Job>>,
    pub events: Mutex<Vec<Event>>,
    /// Job ids whose next read is followed at once by a user's cancel.
    pub cancel_after_read: Mutex<Vec<String>>,
}

impl MemStore {
    /// Adds a queued job of `tenant` with its `queued` event, as the API
    /// does, and answers that event.
    pub fn add_queued(&self, tenant: &str, id: &str) -> Event {
        let job = Job::queued(
            id.into(),
            tenant.into(),
            "u1".into(),
            "f1".into(),
            None,
            JobParams::defaults("tiny.en"),
        );
        let event = self.append(&job, EventType::Queued);
        self.jobs.lock().unwrap().insert(job.id.clone(), job);
        event
    }

    pub fn append(&self, job: &Job, kind: EventType) -> Event {
        let mut events = self.events.lock().unwrap();
        let mut event = Event::of(job, kind);
        event.seq = events.iter().filter(|e| e.job_id == job.id).count() as u64 + 1;
        events.push(event.clone());
        event
    }

    /// The kinds of `id`'s events, in order.
    pub fn kinds(&self, id: &str) -> Vec<EventType> {
        self.events_of(id).iter().map(|e| e.kind).collect()
    }

    pub fn events_of(&self, id: &str) -> Vec<Event> {
        let events = self.events.lock().unwrap();
        events.iter().filter(|e| e.job_id == id).cloned().collect()
    }

    /// The job `id` as stored now.
    pub fn get(&self, id: &str) -> Job {
        self.jobs.lock().unwrap().get(id).cloned().expect("job")
    }

    pub fn status(&self, id: &str) -> JobStatus {
        self.get(id).status
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
        let mut unfinished: Vec<Job> = jobs
            .values()
            .filter(|j| !j.status.is_finished())
            .cloned()
            .collect();
        unfinished.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(unfinished)
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
        std::env::temp_dir().join("murmur-actor-tests").join(job_id)
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

/// What the [`TestEngine`] was asked to run: a job and the checkpoint its
/// request carried.
#[derive(Debug, Clone)]
pub struct Run {
    pub job_id: String,
    pub checkpoint: Option<serde_json::Value>,
}

/// Stands in for the models: records every run, fails the first
/// `transient_failures` runs with a transient error, and, while `hold` is
/// set, reports a checkpoint and then waits to be cancelled.
#[derive(Default)]
pub struct TestEngine {
    pub runs: Mutex<Vec<Run>>,
    pub transient_failures: AtomicU32,
    pub hold: AtomicBool,
    /// Held runs that ended because their cancel flag was set.
    pub cancelled: AtomicU32,
    /// The models it says it holds loaded.
    pub holds: Mutex<Vec<String>>,
}

/// The message of the [`TestEngine`]'s transient failures.
pub const TRANSIENT: &str = "the model crashed";

/// The checkpoint a held run reports.
pub fn held_checkpoint() -> serde_json::Value {
    json!({"resume_at": 1.5})
}

impl TestEngine {
    pub fn runs_of(&self, job_id: &str) -> Vec<Run> {
        let runs = self.runs.lock().unwrap();
        runs.iter()
            .filter(|r| r.job_id == job_id)
            .cloned()
            .collect()
    }
}

impl Engine for TestEngine {
    fn run(
        &self,
        request: &WorkRequest,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
    ) -> Result<WorkOutput, WorkError> {
        self.runs.lock().unwrap().push(Run {
            job_id: request.job_id.clone(),
            checkpoint: request.checkpoint.clone(),
        });
        let failing = self
            .transient_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(WorkError::Transient(TRANSIENT.into()));
        }
        if self.hold.load(Ordering::SeqCst) {
            sink.checkpoint(held_checkpoint());
            // Bounded, so a test that goes wrong fails instead of hanging.
            let until = Instant::now() + Duration::from_secs(20);
            while !cancel.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if cancel.load(Ordering::SeqCst) {
                self.cancelled.fetch_add(1, Ordering::SeqCst);
            }
            return Err(WorkError::Cancelled);
        }
        Ok(WorkOutput {
            result: json!({"duration_s": 1.0, "text": request.job_id, "segments": []}),
            audio_seconds: 1.0,
        })
    }

    fn loaded_models(&self) -> Vec<String> {
        self.holds.lock().unwrap().clone()
    }
}

/// Retries after 10 ms rather than seconds.
pub fn quick_config() -> SystemConfig {
    SystemConfig {
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..SystemConfig::default()
    }
}

/// Polls `done` every 10 ms for up to 10 s; answers whether it came true.
pub async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}
