//! The bridge between the actor system and the store: the store answers the
//! actors' [`JobStore`] questions, with tier limits from the tier table.

use std::sync::Arc;

use async_trait::async_trait;
use murmur_actors::job::{Event, EventType, Job};
use murmur_actors::repo::{Announce, AudioFile, JobChange, JobStore, RepoError, TenantLimits};
use murmur_actors::sealed::{upload_context, Sealing};

use crate::billing::{revenuecat, TierTable, Translation};
use crate::store::{JobStatus, Store, StoreError, TenantId};

/// The store as the actors see it. Cloning is shallow.
#[derive(Clone)]
pub struct StoreJobs {
    pub store: Store,
    pub tiers: Arc<TierTable>,
}

fn repo(e: StoreError) -> RepoError {
    RepoError(e.to_string())
}

/// Tenant ids reaching the actors come from stored jobs: trusted.
fn tenant(id: &str) -> TenantId {
    TenantId::trusted(id)
}

impl StoreJobs {
    /// Prometheus counters of processed audio and jobs, labelled by tier
    /// (never by tenant: that is what `/v1/usage` is for). The exact,
    /// per-tenant figures were written with the completion itself.
    fn count_completion(&self, tenant: &TenantId, job: &Job) {
        let tier = self
            .store
            .tenant(tenant)
            .map(|t| self.tiers.get_or_default(&t.subscription_tier).name.clone())
            .unwrap_or_else(|_| "unknown".into());
        let seconds = job
            .result
            .as_ref()
            .and_then(|r| r.get("duration_s"))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0);
        metrics::counter!("murmur_usage_audio_milliseconds_total", "tier" => tier.clone())
            .increment((seconds * 1000.0).round() as u64);
        metrics::counter!("murmur_usage_jobs_completed_total", "tier" => tier, "kind" => job.job_type.clone())
            .increment(1);
    }
}

#[async_trait]
impl JobStore for StoreJobs {
    async fn job(&self, t: &str, id: &str) -> Result<Option<Job>, RepoError> {
        self.store.job(&tenant(t), id).map_err(repo)
    }

    async fn transition(
        &self,
        t: &str,
        id: &str,
        kind: Option<EventType>,
        mut change: JobChange,
    ) -> Result<Option<(Job, Option<Event>)>, RepoError> {
        let tid = tenant(t);
        match kind {
            Some(kind) => {
                let changed = self
                    .store
                    .transition_job(&tid, id, None, kind, |j| change(j))
                    .await
                    .map_err(repo)?;
                if let Some((job, _)) = changed.as_ref().filter(|(j, _)| {
                    kind == EventType::Completed && j.status == JobStatus::Completed
                }) {
                    self.count_completion(&tid, job);
                }
                Ok(changed.map(|(job, event)| (job, Some(event))))
            }
            None => Ok(self
                .store
                .update_job(&tid, id, |j| change(j))
                .await
                .map_err(repo)?
                .map(|job| (job, None))),
        }
    }

    async fn transition_announced(
        &self,
        t: &str,
        id: &str,
        kind: Option<EventType>,
        mut change: JobChange,
        announce: Announce,
    ) -> Result<Option<Job>, RepoError> {
        let Some(kind) = kind else {
            // A checkpoint: no event, so nothing to announce; written
            // durably as before.
            let changed = self.transition(t, id, None, change).await?;
            return Ok(changed.map(|(job, _)| job));
        };
        let tid = tenant(t);
        let changed = self
            .store
            .transition_job_then(
                &tid,
                id,
                kind,
                |j| change(j),
                Box::new(move |durable| announce(durable.map(Some).map_err(repo))),
            )
            .map_err(repo)?;
        if let Some(job) = changed
            .as_ref()
            .filter(|j| kind == EventType::Completed && j.status == JobStatus::Completed)
        {
            self.count_completion(&tid, job);
        }
        Ok(changed)
    }

    async fn unfinished_jobs(&self) -> Result<Vec<Job>, RepoError> {
        self.store.unfinished_jobs().map_err(repo)
    }

    async fn tenant_limits(&self, t: &str) -> Result<TenantLimits, RepoError> {
        let row = self.store.tenant(&tenant(t)).map_err(repo)?;
        // A paid tier whose expiry passed is over, event or not.
        let lapsed = revenuecat::has_lapsed(&self.store, &self.tiers, &row).map_err(repo)?;
        let tier = if lapsed {
            self.tiers.get_or_default(self.tiers.default_tier())
        } else {
            self.tiers.get_or_default(&row.subscription_tier)
        };
        Ok(TenantLimits {
            concurrent_jobs: tier.concurrent_jobs,
            priority: tier.rank,
            queue_weight: tier.queue_weight(),
            tier: tier.name.clone(),
            max_audio_seconds: Some(tier.max_audio_seconds),
            translation_max_seconds: (tier.translation == Translation::Limited)
                .then_some(tier.translation_max_file_seconds)
                .flatten(),
        })
    }

    fn artifact_dir(&self, t: &str, job_id: &str) -> std::path::PathBuf {
        self.store.artifact_dir(&tenant(t), job_id)
    }

    async fn audio_file(&self, t: &str, file_id: &str) -> Result<Option<AudioFile>, RepoError> {
        let tenant = tenant(t);
        let Some(file) = self.store.file(&tenant, file_id).map_err(repo)? else {
            return Ok(None);
        };
        let key = self.store.data_key(&tenant).map_err(repo)?;
        Ok(Some(AudioFile {
            path: self.store.blob_path(&file),
            duration_s: file.duration_s,
            sealing: Some(Sealing {
                key,
                audio_context: upload_context(&file.id),
            }),
        }))
    }
}
