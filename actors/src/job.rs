//! A job as stored and as announced: its status, stage and events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::params::JobParams;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        match s {
            "queued" => Some(JobStatus::Queued),
            "running" => Some(JobStatus::Running),
            "completed" => Some(JobStatus::Completed),
            "failed" => Some(JobStatus::Failed),
            "cancelled" => Some(JobStatus::Cancelled),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum JobStage {
    Decode,
    Separate,
    Vad,
    Transcribe,
    Diarize,
    Format,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub user_id: String,
    pub tenant_id: String,
    pub file_id: String,
    pub workflow_id: Option<String>,
    pub job_type: String,
    pub params: JobParams,
    pub status: JobStatus,
    pub stage: Option<JobStage>,
    pub progress: f64,
    pub attempts: u32,
    /// Set once the job completes; served by `/v1/jobs/{id}/result`.
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// Set by a cancel request; the running job stops at its next check.
    #[serde(default)]
    pub cancel_requested: bool,
    /// What a running job has finished so far (stage outputs), so a job
    /// interrupted by a crash resumes instead of starting over. Opaque to
    /// the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Job {
    /// A new job, `queued`, not yet stored.
    pub fn queued(
        id: String,
        tenant_id: String,
        user_id: String,
        file_id: String,
        workflow_id: Option<String>,
        params: JobParams,
    ) -> Job {
        let now = Utc::now();
        Job {
            id,
            user_id,
            tenant_id,
            file_id,
            workflow_id,
            job_type: params.job_type.as_str().to_string(),
            params,
            status: JobStatus::Queued,
            stage: None,
            progress: 0.0,
            attempts: 0,
            result: None,
            error: None,
            cancel_requested: false,
            checkpoint: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
        }
    }
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl JobStage {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStage::Decode => "decode",
            JobStage::Separate => "separate",
            JobStage::Vad => "vad",
            JobStage::Transcribe => "transcribe",
            JobStage::Diarize => "diarize",
            JobStage::Format => "format",
        }
    }
}

/// What happened to a job (docs/API.md, "Live events").
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Queued,
    Started,
    Stage,
    Progress,
    Completed,
    Failed,
    Cancelled,
    Retrying,
}

/// One entry of a job's durable event log, as sent to subscribers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Increases by one per event of the same job, from 1.
    pub seq: u64,
    pub job_id: String,
    /// Whose job: subscribers only ever see their own tenant's events.
    #[serde(skip_serializing)]
    #[serde(default)]
    pub tenant_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub status: JobStatus,
    pub stage: Option<JobStage>,
    pub progress: f64,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attempt number, on `started` and `retrying` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl Event {
    /// An event describing `job` as it is now; `seq` is set by the bus.
    pub fn of(job: &Job, kind: EventType) -> Event {
        Event {
            seq: 0,
            job_id: job.id.clone(),
            tenant_id: job.tenant_id.clone(),
            kind,
            status: job.status,
            stage: job.stage,
            progress: job.progress,
            at: Utc::now(),
            error: job.error.clone(),
            attempt: None,
        }
    }
}
