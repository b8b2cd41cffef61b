//! Durable state on sled: one narrow module so no sled type leaks into the
//! API or the actors (ARCHITECTURE.md, "Beyond one machine").
//!
//! Every tenant-owned key is `<tenant id>/<row id>`, and every call on
//! tenant-owned data takes a [`TenantId`], which only token verification,
//! signup and the store itself create. Writes the API acknowledges are
//! flushed to disk before the call returns: sled buffers writes otherwise.

mod records;
mod scoped;

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

pub use murmur_actors::job::{Event, EventType};
pub use records::*;
use scoped::Scoped;
pub use scoped::{Page, PageRequest};

/// Version of the on-disk layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored row {key} cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0}")]
    Conflict(String),
    #[error(
        "the data directory was written by a newer Murmur (schema {found}, this build reads \
         up to {supported}); upgrade Murmur or point --data-dir elsewhere"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("not found")]
    NotFound,
}

/// A tenant id that came from a verified token (or signup, or an operator):
/// the only key to tenant-owned rows. Request bodies and paths never make
/// one, which is what keeps tenants apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    /// An id typed by an operator (admin CLI, benchmarks); never from a
    /// request.
    pub fn for_operator(id: &str) -> TenantId {
        TenantId(id.to_string())
    }

    /// Only for ids the server itself vouches for: a verified token's
    /// authority block, a tenant being created, a row read back from the
    /// store, or an operator's command line.
    pub(crate) fn trusted(id: impl Into<String>) -> TenantId {
        TenantId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Handle to the store; cloning is shallow (sled trees are reference
/// counted), so every filter and actor keeps its own clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    data_dir: PathBuf,
    tenants: sled::Tree,
    /// email (lowercased) -> "<tenant>/<user>": login looks users up by
    /// email before any tenant is known.
    emails: sled::Tree,
    /// revocation id (bytes) -> RFC 3339 time of revocation.
    revoked: sled::Tree,
    users: Scoped<User>,
    api_keys: Scoped<ApiKey>,
    files: Scoped<FileRecord>,
    workflows: Scoped<Workflow>,
    jobs: Scoped<Job>,
    /// "<tenant>/<job>" -> the job's last event seq (u64 big-endian).
    event_seq: sled::Tree,
    /// "<tenant>/<job>/" + seq (u64 big-endian) -> event: the durable log.
    events: sled::Tree,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store rows always serialise")
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn scoped_key(tenant: &TenantId, id: &str) -> Vec<u8> {
    format!("{}/{}", tenant.as_str(), id).into_bytes()
}

fn event_key(tenant: &TenantId, job_id: &str, seq: u64) -> Vec<u8> {
    let mut key = format!("{}/{}/", tenant.as_str(), job_id).into_bytes();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

impl Store {
    /// Opens (or creates) the store under `data_dir`, checks the schema
    /// version and removes upload leftovers of a previous crash.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let db = sled::Config::new()
            .path(data_dir.join("db"))
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(v) => {
                let found =
                    u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        key: "meta/schema_version".into(),
                        reason: "not a 4-byte version".into(),
                    })?);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                // Older schemas are migrated here when there are any.
            }
        }
        let store = Store {
            data_dir: data_dir.to_path_buf(),
            tenants: db.open_tree("tenants")?,
            emails: db.open_tree("user_emails")?,
            revoked: db.open_tree("revoked")?,
            users: Scoped::open(&db, "users")?,
            api_keys: Scoped::open(&db, "api_keys")?,
            files: Scoped::open(&db, "files")?,
            workflows: Scoped::open(&db, "workflows")?,
            jobs: Scoped::open(&db, "jobs")?,
            event_seq: db.open_tree("job_event_seq")?,
            events: db.open_tree("job_events")?,
            db,
        };
        store.sweep_partial_uploads()?;
        Ok(store)
    }

    /// Makes every write so far durable. Called before a write is
    /// acknowledged to a client.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Bytes of sled's files on disk, for metrics.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    // ---- tenants and users ------------------------------------------------

    /// Creates a tenant with its first user in one transaction; fails with
    /// `Conflict` if the email is taken.
    pub async fn create_tenant(&self, tenant: &Tenant, owner: &User) -> Result<(), StoreError> {
        let email = owner.email.to_lowercase();
        let tid = TenantId::trusted(&tenant.id);
        (&self.tenants, &self.emails, self.users.tree())
            .transaction(|(tenants, emails, users)| {
                if emails.get(email.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(StoreError::Conflict(
                        "a user with this email already exists".into(),
                    )));
                }
                tenants.insert(tenant.id.as_bytes(), encode(tenant))?;
                let key = scoped_key(&tid, &owner.id);
                emails.insert(email.as_bytes(), key.clone())?;
                users.insert(key, encode(owner))?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.flush().await
    }

    pub fn tenant(&self, tenant: &TenantId) -> Result<Tenant, StoreError> {
        let bytes = self
            .tenants
            .get(tenant.as_str())?
            .ok_or(StoreError::NotFound)?;
        decode(tenant.as_str().as_bytes(), &bytes)
    }

    /// Looks a tenant up by an id an operator typed (admin CLI, benchmarks).
    pub fn tenant_for_operator(&self, id: &str) -> Result<(TenantId, Tenant), StoreError> {
        let tid = TenantId::trusted(id);
        let tenant = self.tenant(&tid)?;
        Ok((tid, tenant))
    }

    /// Moves a tenant to `tier`, bumping its tier epoch.
    pub async fn set_tier(&self, tenant: &TenantId, tier: &str) -> Result<Tenant, StoreError> {
        let mut result = None;
        self.tenants.update_and_fetch(tenant.as_str(), |old| {
            let old = old?;
            let mut t: Tenant = serde_json::from_slice(old).ok()?;
            t.subscription_tier = tier.to_string();
            t.tier_epoch += 1;
            result = Some(t.clone());
            Some(encode(&t))
        })?;
        let tenant = result.ok_or(StoreError::NotFound)?;
        self.flush().await?;
        Ok(tenant)
    }

    pub fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let Some(key) = self.emails.get(email.to_lowercase().as_bytes())? else {
            return Ok(None);
        };
        match self.users.tree().get(&key)? {
            Some(bytes) => decode(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    pub fn user(&self, tenant: &TenantId, id: &str) -> Result<Option<User>, StoreError> {
        self.users.get(tenant, id)
    }

    pub async fn create_user(&self, tenant: &TenantId, user: &User) -> Result<(), StoreError> {
        let email = user.email.to_lowercase();
        (&self.emails, self.users.tree())
            .transaction(|(emails, users)| {
                if emails.get(email.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(StoreError::Conflict(
                        "a user with this email already exists".into(),
                    )));
                }
                let key = scoped_key(tenant, &user.id);
                emails.insert(email.as_bytes(), key.clone())?;
                users.insert(key, encode(user))?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.flush().await
    }

    pub fn list_users(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> Result<Page<User>, StoreError> {
        self.users.list(tenant, page, |_| true)
    }

    // ---- API keys and revocation -----------------------------------------

    pub async fn put_api_key(&self, tenant: &TenantId, key: &ApiKey) -> Result<(), StoreError> {
        self.put_row(&self.api_keys, tenant, &key.id, key).await
    }

    pub fn list_api_keys(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> Result<Page<ApiKey>, StoreError> {
        self.api_keys.list(tenant, page, |_| true)
    }

    /// Deletes the key and records its revocation ids so the token is
    /// refused from now on. `false` if the tenant has no such key.
    pub async fn revoke_api_key(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let key = scoped_key(tenant, id);
        let now = chrono::Utc::now().to_rfc3339();
        let found = (self.api_keys.tree(), &self.revoked)
            .transaction(|(keys, revoked)| {
                let Some(bytes) = keys.remove(key.as_slice())? else {
                    return Ok(false);
                };
                let api_key: ApiKey =
                    decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                for rid in &api_key.revocation_ids {
                    let raw = hex::decode(rid).map_err(|e| {
                        ConflictableTransactionError::Abort(StoreError::Corrupt {
                            key: String::from_utf8_lossy(&key).into_owned(),
                            reason: e.to_string(),
                        })
                    })?;
                    revoked.insert(raw, now.as_bytes())?;
                }
                Ok(true)
            })
            .map_err(tx_error)?;
        if found {
            self.flush().await?;
        }
        Ok(found)
    }

    pub fn is_revoked(&self, revocation_ids: &[Vec<u8>]) -> Result<bool, StoreError> {
        for id in revocation_ids {
            if self.revoked.contains_key(id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    // ---- files -----------------------------------------------------------

    /// Folder holding one tenant's uploaded bytes.
    pub fn blob_dir(&self, tenant: &TenantId) -> PathBuf {
        self.data_dir.join("files").join(tenant.as_str())
    }

    /// Where a file's bytes are written while its upload is in progress.
    /// Anything left under such a name is removed at the next start.
    pub fn partial_blob_path(&self, tenant: &TenantId, file_id: &str) -> PathBuf {
        self.blob_dir(tenant).join(format!(".{file_id}.part"))
    }

    pub fn blob_path(&self, file: &FileRecord) -> PathBuf {
        self.data_dir.join(&file.path)
    }

    /// Path of a completed upload relative to the data dir, as stored.
    pub fn blob_relative_path(tenant: &TenantId, file_id: &str) -> String {
        format!("files/{}/{}", tenant.as_str(), file_id)
    }

    fn sweep_partial_uploads(&self) -> Result<(), StoreError> {
        let root = self.data_dir.join("files");
        let Ok(tenants) = std::fs::read_dir(&root) else {
            return Ok(());
        };
        for dir in tenants.flatten() {
            let Ok(entries) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".part") {
                    tracing::info!(path = %entry.path().display(), "removing partial upload");
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
        Ok(())
    }

    pub async fn put_file(&self, tenant: &TenantId, file: &FileRecord) -> Result<(), StoreError> {
        self.put_row(&self.files, tenant, &file.id, file).await
    }

    pub fn file(&self, tenant: &TenantId, id: &str) -> Result<Option<FileRecord>, StoreError> {
        self.files.get(tenant, id)
    }

    pub fn list_files(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> Result<Page<FileRecord>, StoreError> {
        self.files.list(tenant, page, |_| true)
    }

    /// Removes the row, then the bytes; the row goes first so a crash
    /// between the two leaves an orphan blob, never a row without bytes.
    pub async fn delete_file(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<FileRecord>, StoreError> {
        let Some(file) = self.files.remove(tenant, id)? else {
            return Ok(None);
        };
        self.flush().await?;
        match tokio::fs::remove_file(self.blob_path(&file)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Some(file))
    }

    /// Bytes of stored uploads a tenant holds (the storage quota's measure).
    pub fn storage_used(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        let mut total = 0;
        self.files.for_each(tenant, |f| total += f.size)?;
        Ok(total)
    }

    // ---- workflows -------------------------------------------------------

    pub async fn put_workflow(&self, tenant: &TenantId, wf: &Workflow) -> Result<(), StoreError> {
        self.put_row(&self.workflows, tenant, &wf.id, wf).await
    }

    pub fn workflow(&self, tenant: &TenantId, id: &str) -> Result<Option<Workflow>, StoreError> {
        self.workflows.get(tenant, id)
    }

    pub fn list_workflows(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> Result<Page<Workflow>, StoreError> {
        self.workflows.list(tenant, page, |_| true)
    }

    pub fn count_workflows(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        let mut n = 0;
        self.workflows.for_each(tenant, |_| n += 1)?;
        Ok(n)
    }

    pub async fn delete_workflow(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let found = self.workflows.remove(tenant, id)?.is_some();
        self.flush().await?;
        Ok(found)
    }

    // ---- jobs ------------------------------------------------------------

    pub fn job(&self, tenant: &TenantId, id: &str) -> Result<Option<Job>, StoreError> {
        self.jobs.get(tenant, id)
    }

    pub fn list_jobs(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
        status: Option<JobStatus>,
    ) -> Result<Page<Job>, StoreError> {
        self.jobs
            .list(tenant, page, |j| status.is_none_or(|s| j.status == s))
    }

    /// Creates a job together with the first entry of its event log.
    pub async fn create_job(
        &self,
        tenant: &TenantId,
        job: &Job,
        kind: EventType,
    ) -> Result<Event, StoreError> {
        let created = self
            .transition_job(tenant, &job.id, Some(job.clone()), kind, |_| true)
            .await?;
        created.map(|(_, event)| event).ok_or(StoreError::NotFound)
    }

    /// Changes a job and appends the event that announces the change, in
    /// one transaction, flushed before it returns: a state change is durable
    /// before anyone hears of it, and the log has no gaps. `change` answers
    /// `false` to leave the job alone (no event then). `insert` creates the
    /// row when it does not exist yet.
    pub async fn transition_job(
        &self,
        tenant: &TenantId,
        id: &str,
        insert: Option<Job>,
        kind: EventType,
        change: impl FnMut(&mut Job) -> bool,
    ) -> Result<Option<(Job, Event)>, StoreError> {
        let key = scoped_key(tenant, id);
        // sled retries transactions through an `Fn`: lend it the closure.
        let change = std::cell::RefCell::new(change);
        let outcome = (self.jobs.tree(), &self.event_seq, &self.events)
            .transaction(|(jobs, seqs, events)| {
                let mut job: Job = match jobs.get(&key)? {
                    Some(bytes) => {
                        decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?
                    }
                    None => match &insert {
                        Some(job) => job.clone(),
                        None => return Ok(None),
                    },
                };
                if !(change.borrow_mut())(&mut job) {
                    return Ok(None);
                }
                let seq = match seqs.get(&key)? {
                    Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])) + 1,
                    None => 1,
                };
                let mut event = Event::of(&job, kind);
                event.seq = seq;
                event.attempt = matches!(kind, EventType::Started | EventType::Retrying)
                    .then_some(job.attempts);
                jobs.insert(key.as_slice(), encode(&job))?;
                seqs.insert(key.as_slice(), &seq.to_be_bytes())?;
                events.insert(event_key(tenant, id, seq), encode(&event))?;
                Ok(Some((job, event)))
            })
            .map_err(tx_error)?;
        if outcome.is_some() {
            self.flush().await?;
        }
        Ok(outcome)
    }

    /// Events of a job with `seq > after`, oldest first, at most `limit`.
    pub fn events_after(
        &self,
        tenant: &TenantId,
        job_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let start = event_key(tenant, job_id, after.saturating_add(1));
        let end = event_key(tenant, job_id, u64::MAX);
        let mut out = Vec::new();
        for item in self.events.range(start..=end).take(limit) {
            let (key, bytes) = item?;
            let mut event: Event = decode(&key, &bytes)?;
            event.tenant_id = tenant.as_str().to_string();
            out.push(event);
        }
        Ok(out)
    }

    /// Every queued or running job of every tenant, oldest first (start-up
    /// recovery only).
    pub fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        for item in self.jobs.tree().iter() {
            let (key, bytes) = item?;
            let job: Job = decode(&key, &bytes)?;
            if !job.status.is_finished() {
                jobs.push(job);
            }
        }
        jobs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(jobs)
    }

    /// Applies `change` to a job atomically (compare-and-swap) and flushes.
    /// `change` may run more than once under contention and returns `false`
    /// to leave the job as it is. Answers the job as stored afterwards.
    pub async fn update_job(
        &self,
        tenant: &TenantId,
        id: &str,
        change: impl FnMut(&mut Job) -> bool,
    ) -> Result<Option<Job>, StoreError> {
        let job = self.jobs.update(tenant, id, change)?;
        self.flush().await?;
        Ok(job)
    }

    async fn put_row<T: Serialize + DeserializeOwned>(
        &self,
        tree: &Scoped<T>,
        tenant: &TenantId,
        id: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        tree.put(tenant, id, value)?;
        self.flush().await
    }
}
