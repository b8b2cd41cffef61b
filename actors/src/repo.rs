//! The one seam to durable state: what the actors need from the store, and
//! nothing of how it is kept (sled today, a distributed store later).

use std::path::PathBuf;

use async_trait::async_trait;

use crate::engine::AudioLimit;
use crate::job::{Event, EventType, Job};
use crate::params::JobParams;

#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct RepoError(pub String);

/// A tenant's current limits, read at each job start so tier changes apply
/// to the next job.
#[derive(Debug, Clone)]
pub struct TenantLimits {
    pub concurrent_jobs: u32,
    /// The tier's rank: its class in the inference pool's fair queue.
    pub priority: u32,
    /// The tier's share of the inference pool when tiers compete (see
    /// `pool::FairQueue`); at least 1.
    pub queue_weight: u32,
    /// The tier's name, for metrics labelled by tier (never by tenant).
    pub tier: String,
    /// Longest audio a job may process, in decoded seconds.
    pub max_audio_seconds: Option<u64>,
    /// Longest audio a translation may process, when the tier limits it.
    pub translation_max_seconds: Option<u64>,
}

impl TenantLimits {
    /// The length limit for a job with `params`: the tier's maximum, or its
    /// translation limit when that is shorter and the job translates.
    pub fn audio_limit(&self, params: &JobParams) -> Option<AudioLimit> {
        let tier = &self.tier;
        let general = self.max_audio_seconds.map(|s| AudioLimit {
            max_s: s as f64,
            rule: format!("the {tier} tier's maximum audio length of {s} s"),
        });
        let translation = self
            .translation_max_seconds
            .filter(|_| params.translates())
            .map(|s| AudioLimit {
                max_s: s as f64,
                rule: format!("the {tier} tier's translation limit of {s} s"),
            });
        match (general, translation) {
            (Some(g), Some(t)) if g.max_s < t.max_s => Some(g),
            (g, t) => t.or(g),
        }
    }
}

/// A job's input audio, by reference.
#[derive(Debug, Clone)]
pub struct AudioFile {
    pub path: PathBuf,
    pub duration_s: Option<f64>,
    /// How it is sealed, when it is (encryption at rest).
    pub sealing: Option<crate::sealed::Sealing>,
}

/// Changes a job row; answers `false` to leave it as it is. May run more
/// than once (transactions retry).
pub type JobChange = Box<dyn FnMut(&mut Job) -> bool + Send>;

/// Called once a committed change is durable, with its event if it had
/// one, or with why it could not be made durable (see
/// [`JobStore::transition_announced`]).
pub type Announce = Box<dyn FnOnce(Result<Option<Event>, RepoError>) + Send>;

/// Durable state as the actors see it. Every write is durable when the
/// future completes, except [`JobStore::transition_announced`]'s.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    async fn job(&self, tenant: &str, id: &str) -> Result<Option<Job>, RepoError>;
    /// Applies `change` and, when `kind` is given, appends the event that
    /// announces it, atomically. Answers the job and its event, or `None`
    /// when the job does not exist or `change` declined.
    async fn transition(
        &self,
        tenant: &str,
        id: &str,
        kind: Option<EventType>,
        change: JobChange,
    ) -> Result<Option<(Job, Option<Event>)>, RepoError>;

    /// [`JobStore::transition`] that may answer as soon as the change is
    /// committed (readers see it, a crash may still lose it) and hands its
    /// event to `announce` once it is durable, in commit order with every
    /// other announcement; not called when the job does not exist or
    /// `change` declined. A job actor goes on with its next report
    /// meanwhile, and its events still reach subscribers only once durable
    /// and in order. This default waits for durability, then announces.
    async fn transition_announced(
        &self,
        tenant: &str,
        id: &str,
        kind: Option<EventType>,
        change: JobChange,
        announce: Announce,
    ) -> Result<Option<Job>, RepoError> {
        let changed = self.transition(tenant, id, kind, change).await?;
        Ok(changed.map(|(job, event)| {
            announce(Ok(event));
            job
        }))
    }
    /// Every job that is `queued` or `running`, oldest first.
    async fn unfinished_jobs(&self) -> Result<Vec<Job>, RepoError>;
    /// The tenant's limits now.
    async fn tenant_limits(&self, tenant: &str) -> Result<TenantLimits, RepoError>;
    /// Folder where a job's produced files live (see `WorkRequest::artifacts`).
    fn artifact_dir(&self, tenant: &str, job_id: &str) -> PathBuf;
    /// The audio of a tenant's file, if it still exists.
    async fn audio_file(&self, tenant: &str, file_id: &str)
        -> Result<Option<AudioFile>, RepoError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_meets_the_shorter_of_its_tier_limits() {
        let limits = TenantLimits {
            concurrent_jobs: 1,
            priority: 0,
            queue_weight: 1,
            tier: "basic".into(),
            max_audio_seconds: Some(10_800),
            translation_max_seconds: Some(600),
        };
        let base = JobParams::defaults("base");
        let transcribe = limits.audio_limit(&base).unwrap();
        assert_eq!(transcribe.max_s, 10_800.0);
        assert!(transcribe.rule.contains("basic tier's maximum"));
        let translate = JobParams::merged(&base, &json!({"task": "translate"})).unwrap();
        let limit = limits.audio_limit(&translate).unwrap();
        assert_eq!(limit.max_s, 600.0);
        assert!(limit.rule.contains("translation limit"));
        let unlimited = TenantLimits {
            max_audio_seconds: None,
            translation_max_seconds: None,
            ..limits
        };
        assert_eq!(unlimited.audio_limit(&translate), None);
    }
}
