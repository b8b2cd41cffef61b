//! How data leaves: deleting one job, expiring old jobs and uploads by the
//! tier's retention period, exporting and deleting a whole tenant, and the
//! start-up sweep that finishes what a crash interrupted.
//!
//! A tenant's deletion is recorded in `tenant_deletions` before it starts
//! and the mark is removed when it ends, so a crash half-way is finished
//! at the next open instead of leaving rows and bytes nobody can reach.
//! The tenant row goes first: from then on every token of the tenant is
//! refused and nothing new is written for it.

use std::path::Path;

use chrono::{DateTime, Utc};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::{
    decode, event_key, scoped_key, tx_error, Event, FileRecord, Job, Store, StoreError, TenantId,
};

impl Store {
    /// Deletes a finished job: its row, its whole event log and its
    /// artifacts folder (stems). Usage it was counted in stays: it is the
    /// billing record. `Conflict` while the job is unfinished.
    pub async fn delete_job(&self, tenant: &TenantId, id: &str) -> Result<Option<Job>, StoreError> {
        let key = scoped_key(tenant, id);
        let seal = self.jobs.opener(tenant)?;
        let removed = (self.jobs.tree(), &self.event_seq, &self.events)
            .transaction(|(jobs, seqs, events)| {
                let Some(bytes) = jobs.get(&key)? else {
                    return Ok(None);
                };
                let job: Job = seal
                    .decode(&key, &bytes)
                    .map_err(ConflictableTransactionError::Abort)?;
                if !job.status.is_finished() {
                    return Err(ConflictableTransactionError::Abort(StoreError::Conflict(
                        format!(
                            "the job is still {}; cancel it and delete it once it has ended",
                            job.status.as_str()
                        ),
                    )));
                }
                let last = match seqs.get(&key)? {
                    Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
                    None => 0,
                };
                for seq in 1..=last {
                    events.remove(event_key(tenant, id, seq))?;
                }
                seqs.remove(key.as_slice())?;
                jobs.remove(key.as_slice())?;
                Ok(Some(job))
            })
            .map_err(tx_error)?;
        if removed.is_some() {
            // Its callback and the callback's delivery log go with it;
            // deliveries still owed keep their own copy of the target.
            self.job_callbacks.remove(&key)?;
            let log = format!("{}/{}/", tenant.as_str(), id);
            for k in self.delivery_log.scan_prefix(log.as_bytes()).keys() {
                self.delivery_log.remove(k?)?;
            }
            self.flush().await?;
            remove_dir(&self.artifact_dir(tenant, id))?;
        }
        Ok(removed)
    }

    /// Deletes the tenant's finished jobs that ended before `cutoff` and
    /// its uploads made before it that no unfinished job still reads.
    /// Answers how many jobs and files went.
    pub async fn expire(
        &self,
        tenant: &TenantId,
        cutoff: DateTime<Utc>,
    ) -> Result<(usize, usize), StoreError> {
        let mut old_jobs = Vec::new();
        let mut in_use = std::collections::HashSet::new();
        self.jobs.for_each(tenant, |j: Job| {
            if !j.status.is_finished() {
                in_use.insert(j.file_id.clone());
            } else if j.finished_at.unwrap_or(j.updated_at) < cutoff {
                old_jobs.push(j.id);
            }
        })?;
        let mut old_files = Vec::new();
        self.files.for_each(tenant, |f: FileRecord| {
            if f.created_at < cutoff && !in_use.contains(&f.id) {
                old_files.push(f.id);
            }
        })?;
        let mut jobs = 0;
        for id in old_jobs {
            match self.delete_job(tenant, &id).await {
                Ok(Some(_)) => jobs += 1,
                Ok(None) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut files = 0;
        for id in old_files {
            if self.delete_file(tenant, &id).await?.is_some() {
                files += 1;
            }
        }
        Ok((jobs, files))
    }

    /// Every tenant id, for sweeps.
    pub fn tenant_ids(&self) -> Result<Vec<TenantId>, StoreError> {
        let mut ids = Vec::new();
        for item in self.tenants.iter() {
            let (key, _) = item?;
            ids.push(TenantId::trusted(
                String::from_utf8_lossy(&key).into_owned(),
            ));
        }
        Ok(ids)
    }

    /// Everything the tenant has, row by row, for an export: the tenant,
    /// subscription, users, API keys, files, workflows, webhooks (never
    /// their secrets), jobs with their event logs, and usage by month. Calls `emit` per row; stops at its
    /// first error.
    pub fn export<E>(
        &self,
        tenant: &TenantId,
        mut emit: impl FnMut(serde_json::Value) -> Result<(), E>,
    ) -> Result<Result<(), E>, StoreError> {
        use serde_json::json;
        let mut rows: Vec<serde_json::Value> = Vec::new();
        macro_rules! send {
            ($v:expr) => {
                if let Err(e) = emit($v) {
                    return Ok(Err(e));
                }
            };
        }
        let t = self.tenant(tenant)?;
        send!(json!({"type": "tenant", "tenant": t}));
        if let Some(s) = self.subscription(tenant)? {
            send!(json!({"type": "subscription", "subscription": s}));
        }
        self.users.for_each(tenant, |u| {
            rows.push(
                json!({"type": "user", "user": {"id": u.id, "email": u.email,
                "role": u.role, "created_at": u.created_at,
                "tokens_valid_after": u.tokens_valid_after}}),
            )
        })?;
        self.api_keys.for_each(tenant, |k| {
            rows.push(
                json!({"type": "api_key", "api_key": {"id": k.id, "name": k.name,
                "scopes": k.scopes, "expires_at": k.expires_at, "user_id": k.user_id,
                "created_at": k.created_at}}),
            )
        })?;
        self.files.for_each(tenant, |f| {
            rows.push(json!({"type": "file", "file": {"id": f.id, "name": f.name,
                "size": f.size, "duration_s": f.duration_s, "content_type": f.content_type,
                "user_id": f.user_id, "created_at": f.created_at},
                "content_url": format!("/v1/files/{}/content", f.id)}))
        })?;
        self.workflows.for_each(tenant, |w| {
            rows.push(json!({"type": "workflow", "workflow": w}))
        })?;
        self.webhooks.for_each(tenant, |w: super::Webhook| {
            rows.push(
                json!({"type": "webhook", "webhook": {"id": w.id, "url": w.url,
                "events": w.events, "description": w.description,
                "created_at": w.created_at}}),
            )
        })?;
        for row in rows.drain(..) {
            send!(row);
        }
        // Jobs one at a time with their logs: a long history is never
        // held whole.
        let mut ids = Vec::new();
        self.jobs.for_each(tenant, |j: Job| ids.push(j.id))?;
        for id in ids {
            let Some(mut job) = self.job(tenant, &id)? else {
                continue;
            };
            job.checkpoint = None;
            let events: Vec<Event> = self.events_after(tenant, &id, 0, usize::MAX)?;
            send!(json!({"type": "job", "job": job, "events": events}));
        }
        for item in self.usage.scan_prefix(format!("{}/", tenant.as_str())) {
            let (key, bytes) = item?;
            let usage: super::Usage = decode(&key, &bytes)?;
            let key = String::from_utf8_lossy(&key);
            let period = key.split_once('/').map_or("", |(_, p)| p);
            send!(json!({"type": "usage", "period": period, "usage": usage}));
        }
        Ok(Ok(()))
    }

    /// Deletes the tenant and everything it owns, rows and bytes. Running
    /// jobs must have ended first (the caller cancels them). `false` if
    /// there is no such tenant.
    pub async fn delete_tenant(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        if !self.tenants.contains_key(tenant.as_str())? {
            return Ok(false);
        }
        self.tenant_deletions
            .insert(tenant.as_str(), Utc::now().to_rfc3339().as_bytes())?;
        self.tenants.remove(tenant.as_str())?;
        self.flush().await?;
        self.finish_tenant_deletion(tenant)?;
        self.flush().await?;
        Ok(true)
    }

    /// The part of [`Self::delete_tenant`] after the tenant row is gone;
    /// idempotent, so the start-up sweep can run it again after a crash.
    fn finish_tenant_deletion(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let prefix = format!("{}/", tenant.as_str());
        // Keys first: revoked, so copies of them are refused by id too.
        let now = Utc::now().to_rfc3339();
        self.api_keys.for_each(tenant, |k| {
            for rid in &k.revocation_ids {
                if let Ok(raw) = hex::decode(rid) {
                    let _ = self.revoked.insert(raw, now.as_bytes());
                }
            }
        })?;
        self.users.for_each(tenant, |u| {
            let email = u.email.to_lowercase();
            if let Ok(Some(owner)) = self.emails.get(email.as_bytes()) {
                if owner.as_ref() == scoped_key(tenant, &u.id).as_slice() {
                    let _ = self.emails.remove(email.as_bytes());
                }
            }
        })?;
        for tree in [
            self.users.tree(),
            self.api_keys.tree(),
            self.files.tree(),
            self.workflows.tree(),
            self.jobs.tree(),
            &self.event_seq,
            &self.events,
            &self.usage,
            self.webhooks.tree(),
            &self.job_callbacks,
            &self.outbox,
            &self.delivery_log,
        ] {
            let keys: Vec<sled::IVec> = tree
                .scan_prefix(prefix.as_bytes())
                .keys()
                .collect::<Result<_, _>>()?;
            for key in keys {
                tree.remove(key)?;
            }
        }
        self.subscriptions.remove(tenant.as_str())?;
        remove_dir(&self.blob_dir(tenant))?;
        remove_dir(&self.data_dir.join("artifacts").join(tenant.as_str()))?;
        // Last: without its key, any copy of the tenant's sealed bytes (a
        // backup) can no longer be opened.
        self.keyring.forget(tenant.as_str())?;
        self.tenant_deletions.remove(tenant.as_str())?;
        Ok(())
    }

    /// At open: finishes tenant deletions a crash interrupted, removes
    /// uploaded bytes that have no file row (a crash between writing the
    /// bytes and the row; they were never acknowledged nor counted), and
    /// artifacts folders of jobs that no longer exist (a crash between a
    /// job's deletion and its folder's).
    pub(super) fn sweep_orphans(&self) -> Result<(), StoreError> {
        for item in self.tenant_deletions.iter() {
            let (key, _) = item?;
            let tenant = TenantId::trusted(String::from_utf8_lossy(&key).into_owned());
            tracing::info!(tenant = %tenant, "finishing an interrupted tenant deletion");
            self.finish_tenant_deletion(&tenant)?;
        }
        // Artifacts: a folder whose job row is gone (deleted just before a
        // crash) belongs to nobody.
        self.sweep_unowned("artifacts", "artifacts of a deleted job", |t, job| {
            Ok(self.job(t, job)?.is_some())
        })?;
        // Uploads: bytes whose row was never written. In-progress uploads
        // (".<id>.part") have their own sweep.
        self.sweep_unowned("files", "upload bytes with no file row", |t, name| {
            Ok(name.starts_with('.') || self.files.get(t, name)?.is_some())
        })
    }

    /// Removes every `<data_dir>/<root>/<tenant>/<entry>` (file or folder)
    /// that `owned` does not claim. Runs at open only, before any request
    /// or job can write there.
    fn sweep_unowned(
        &self,
        root: &str,
        what: &str,
        owned: impl Fn(&TenantId, &str) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let Ok(dirs) = std::fs::read_dir(self.data_dir.join(root)) else {
            return Ok(());
        };
        for dir in dirs.flatten() {
            let tenant = TenantId::trusted(dir.file_name().to_string_lossy().into_owned());
            let Ok(entries) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if owned(&tenant, &name)? {
                    continue;
                }
                tracing::info!(path = %entry.path().display(), "removing {what}");
                let path = entry.path();
                if path.is_dir() {
                    remove_dir(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        Ok(())
    }
}

fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventType, JobStatus, Role, Tenant, User};
    use murmur_actors::params::JobParams;

    async fn tenant(store: &Store, id: &str) -> TenantId {
        let t = Tenant {
            id: id.into(),
            name: id.into(),
            subscription_tier: "basic".into(),
            subscription_id: None,
            tier_epoch: 0,
            created_at: Utc::now(),
        };
        let u = User {
            id: format!("u_{id}"),
            email: format!("{id}@example.com"),
            hashed_password: "x".into(),
            tenant_id: id.into(),
            role: Role::Owner,
            created_at: Utc::now(),
            tokens_valid_after: None,
        };
        store.create_tenant(&t, &u).await.unwrap();
        TenantId::trusted(id)
    }

    async fn finished_job(store: &Store, t: &TenantId, id: &str) {
        let job = Job::queued(
            id.into(),
            t.as_str().into(),
            "u".into(),
            "f_1".into(),
            None,
            JobParams::defaults("base"),
        );
        store
            .create_job(t, &job, EventType::Queued, None, None)
            .await
            .unwrap();
        store
            .transition_job(t, id, None, EventType::Completed, |j| {
                j.status = JobStatus::Completed;
                j.finished_at = Some(Utc::now());
                true
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_deleted_job_takes_its_log_and_artifacts_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = tenant(&store, "ta").await;
        let b = tenant(&store, "tb").await;
        finished_job(&store, &a, "j_1").await;
        finished_job(&store, &b, "j_1").await;
        std::fs::create_dir_all(store.artifact_dir(&a, "j_1")).unwrap();
        std::fs::write(store.artifact_dir(&a, "j_1").join("vocals.wav"), b"x").unwrap();
        assert!(store.delete_job(&a, "j_1").await.unwrap().is_some());
        assert!(store.job(&a, "j_1").unwrap().is_none());
        assert!(store.events_after(&a, "j_1", 0, 100).unwrap().is_empty());
        assert!(!store.artifact_dir(&a, "j_1").exists());
        // The other tenant's job of the same id is untouched.
        assert!(store.job(&b, "j_1").unwrap().is_some());
        assert_eq!(store.events_after(&b, "j_1", 0, 100).unwrap().len(), 2);
        assert!(store.delete_job(&a, "j_1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_unfinished_job_is_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = tenant(&store, "ta").await;
        let job = Job::queued(
            "j_q".into(),
            "ta".into(),
            "u".into(),
            "f".into(),
            None,
            JobParams::defaults("base"),
        );
        store
            .create_job(&a, &job, EventType::Queued, None, None)
            .await
            .unwrap();
        assert!(matches!(
            store.delete_job(&a, "j_q").await,
            Err(StoreError::Conflict(_))
        ));
        assert!(store.job(&a, "j_q").unwrap().is_some());
    }

    #[tokio::test]
    async fn an_interrupted_tenant_deletion_is_finished_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let a = tenant(&store, "ta").await;
            tenant(&store, "tb").await;
            std::fs::create_dir_all(store.blob_dir(&a)).unwrap();
            std::fs::write(store.blob_dir(&a).join("f_1"), b"audio").unwrap();
            // A crash right after the tenant row went.
            store.tenant_deletions.insert("ta", b"now").unwrap();
            store.tenants.remove("ta").unwrap();
            store.db.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let a = TenantId::trusted("ta");
        assert!(store.user(&a, "u_ta").unwrap().is_none());
        assert!(store.user_by_email("ta@example.com").unwrap().is_none());
        assert!(!store.blob_dir(&a).exists());
        assert!(store.tenant_deletions.is_empty());
        let b = TenantId::trusted("tb");
        assert!(store.user(&b, "u_tb").unwrap().is_some());
    }

    /// A deleted tenant's endpoints, callbacks, outbox rows and delivery
    /// log go with it; another tenant's stay.
    #[tokio::test]
    async fn a_deleted_tenant_takes_its_webhooks_and_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = tenant(&store, "ta").await;
        let b = tenant(&store, "tb").await;
        for t in [&a, &b] {
            let hook = crate::store::Webhook {
                id: "wh_1".into(),
                tenant_id: t.as_str().into(),
                user_id: "u".into(),
                url: "https://h.example/".into(),
                events: vec!["job.completed".into()],
                description: None,
                secret: "whsec_AAAA".into(),
                created_at: Utc::now(),
            };
            store.put_webhook(t, &hook).await.unwrap();
            finished_job(&store, t, "j_1").await;
        }
        assert_eq!(store.due_deliveries(Utc::now(), 10).unwrap().len(), 2);
        assert!(store.delete_tenant(&a).await.unwrap());
        assert!(store.webhook(&a, "wh_1").unwrap().is_none());
        let due = store.due_deliveries(Utc::now(), 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].tenant_id, "tb");
        assert!(store.webhook(&b, "wh_1").unwrap().is_some());
    }

    #[tokio::test]
    async fn upload_bytes_without_a_row_are_swept_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let a = tenant(&store, "ta").await;
            std::fs::create_dir_all(store.blob_dir(&a)).unwrap();
            std::fs::write(store.blob_dir(&a).join("f_orphan"), b"audio").unwrap();
            let kept = FileRecord {
                id: "f_kept".into(),
                name: "a.wav".into(),
                path: Store::blob_relative_path(&a, "f_kept"),
                size: 5,
                duration_s: None,
                content_type: None,
                user_id: "u_ta".into(),
                tenant_id: "ta".into(),
                created_at: Utc::now(),
            };
            std::fs::write(store.blob_path(&kept), b"audio").unwrap();
            store.put_file(&a, &kept).await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let a = TenantId::trusted("ta");
        assert!(!store.blob_dir(&a).join("f_orphan").exists());
        assert!(store.blob_dir(&a).join("f_kept").exists());
    }

    #[tokio::test]
    async fn artifacts_of_a_job_deleted_just_before_a_crash_are_swept_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let a = tenant(&store, "ta").await;
            finished_job(&store, &a, "j_gone").await;
            finished_job(&store, &a, "j_kept").await;
            for id in ["j_gone", "j_kept"] {
                std::fs::create_dir_all(store.artifact_dir(&a, id)).unwrap();
                std::fs::write(store.artifact_dir(&a, id).join("vocals.wav"), b"x").unwrap();
            }
            // `delete_job` up to its flush, then the crash: the rows are
            // gone, the folder is not.
            let key = scoped_key(&a, "j_gone");
            store.jobs.tree().remove(&key).unwrap();
            store.event_seq.remove(&key).unwrap();
            store.db.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let a = TenantId::trusted("ta");
        assert!(!store.artifact_dir(&a, "j_gone").exists());
        assert!(store.artifact_dir(&a, "j_kept").join("vocals.wav").exists());
    }

    #[tokio::test]
    async fn retention_expires_old_finished_work_and_keeps_what_a_job_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = tenant(&store, "ta").await;
        let b = tenant(&store, "tb").await;
        let file = |id: &str, t: &TenantId| FileRecord {
            id: id.into(),
            name: "a.wav".into(),
            path: Store::blob_relative_path(t, id),
            size: 5,
            duration_s: None,
            content_type: None,
            user_id: "u".into(),
            tenant_id: t.as_str().into(),
            created_at: Utc::now(),
        };
        for (t, id) in [(&a, "f_1"), (&a, "f_busy"), (&b, "f_1")] {
            std::fs::create_dir_all(store.blob_dir(t)).unwrap();
            let f = file(id, t);
            std::fs::write(store.blob_path(&f), b"audio").unwrap();
            store.put_file(t, &f).await.unwrap();
        }
        finished_job(&store, &a, "j_done").await;
        finished_job(&store, &b, "j_done").await;
        let running = Job::queued(
            "j_run".into(),
            "ta".into(),
            "u".into(),
            "f_busy".into(),
            None,
            JobParams::defaults("base"),
        );
        store
            .create_job(&a, &running, EventType::Queued, None, None)
            .await
            .unwrap();
        // Everything made before the cutoff is old enough.
        let cutoff = Utc::now() + chrono::Duration::seconds(1);
        assert_eq!(store.expire(&a, cutoff).await.unwrap(), (1, 1));
        assert!(store.job(&a, "j_done").unwrap().is_none());
        assert!(store.file(&a, "f_1").unwrap().is_none());
        // A queued job's input stays, and so does the job.
        assert!(store.file(&a, "f_busy").unwrap().is_some());
        assert!(store.job(&a, "j_run").unwrap().is_some());
        // The other tenant is untouched.
        assert!(store.job(&b, "j_done").unwrap().is_some());
        assert!(store.file(&b, "f_1").unwrap().is_some());
        // Nothing newer than the cutoff goes.
        let past = Utc::now() - chrono::Duration::days(1);
        assert_eq!(store.expire(&b, past).await.unwrap(), (0, 0));
    }
}
