//! Durable state on sled: one narrow module so no sled type leaks into the
//! API or the actors (docs/ARCHITECTURE.md, "Beyond one machine").
//!
//! Every tenant-owned key is `<tenant id>/<row id>`, and every call on
//! tenant-owned data takes a [`TenantId`], which only token verification,
//! signup and the store itself create. Writes the API acknowledges are
//! flushed to disk before the call returns: sled buffers writes otherwise.

mod accounts;
mod commit;
mod keyring;
mod lifecycle;
mod records;
mod reseal;
mod scoped;
mod storage;
mod webhooks;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

pub use accounts::UserChangeError;
pub use keyring::{
    master_key_source, read_master_key, write_key_file, MasterKeySource, MASTER_KEY_ENV,
};
pub use murmur_actors::job::{Event, EventType};
pub use murmur_seal::DataKey;
pub use records::*;
use scoped::Scoped;
pub use scoped::{Page, PageRequest};
pub use storage::{QuotaFull, Reservation, ReserveError};
pub use webhooks::{
    event_payload, webhook_event_name, Delivery, DeliveryAttempt, DeliveryTarget, JobCallback,
    Webhook, WEBHOOK_EVENTS,
};

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
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("not found")]
    NotFound,
    #[error("{open} of at most {limit} jobs are queued or running")]
    QueueFull { open: u64, limit: u64 },
    #[error("{used} of {limit} used in {period}")]
    LimitReached {
        used: u64,
        limit: u64,
        period: String,
    },
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
    /// revocation id of an API key's scope block -> "<tenant>/<key>": the
    /// record that the server minted that block (see `auth::tokens`).
    minted_keys: sled::Tree,
    /// tenant id -> RFC 3339 time: tenants whose deletion began and has
    /// not finished (see `lifecycle`).
    tenant_deletions: sled::Tree,
    users: Scoped<User>,
    api_keys: Scoped<ApiKey>,
    files: Scoped<FileRecord>,
    workflows: Scoped<Workflow>,
    jobs: Scoped<Job>,
    /// "<tenant>/<job>" -> the job's last event seq (u64 big-endian).
    event_seq: sled::Tree,
    /// "<tenant>/<job>/" + seq (u64 big-endian) -> event: the durable log.
    events: sled::Tree,
    /// "<tenant>/<YYYY-MM>" -> [`Usage`], changed with the jobs it counts.
    usage: sled::Tree,
    /// tenant id -> its queued or running jobs (u64 big-endian), changed
    /// with the jobs it counts and recounted at start; bounds a tenant's
    /// queue (the tier's `max_queued_jobs`).
    open_jobs: sled::Tree,
    /// tenant id -> [`Subscription`].
    subscriptions: sled::Tree,
    /// RevenueCat event id -> [`BillingEvent`]: the webhook's durable inbox
    /// and its idempotency record.
    billing_events: sled::Tree,
    /// Stored and reserved upload bytes per tenant (the storage quota);
    /// every file row write goes through it.
    ledger: std::sync::Arc<storage::Ledger>,
    /// Tenant data keys (tree `tenant_keys`), for encryption at rest.
    keyring: Arc<keyring::Keyring>,
    /// The tenants' webhook endpoints (sealed: they hold signing secrets).
    webhooks: Scoped<Webhook>,
    /// "<tenant>/<job>" -> sealed [`JobCallback`]: a job's `callback_url`.
    job_callbacks: sled::Tree,
    /// "<tenant>/<delivery>" -> sealed [`Delivery`]: the durable outbox,
    /// written with the events that owe deliveries (see `webhooks`).
    outbox: sled::Tree,
    /// due time (ms, big-endian) + outbox key -> (): the outbox by due time.
    outbox_due: sled::Tree,
    /// "<tenant>/<endpoint>/<attempt>" -> sealed [`DeliveryAttempt`]:
    /// recent attempts per endpoint, bounded.
    delivery_log: sled::Tree,
    /// Rung when deliveries are written, so the worker sends them at once.
    outbox_signal: Arc<tokio::sync::Notify>,
    /// Shares flushes among concurrent writers (see `commit`).
    commit: commit::GroupCommit,
}

/// The calendar month (UTC) usage of `at` is counted in: `YYYY-MM`.
pub fn usage_period(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m").to_string()
}

/// What a subscription change decided: the tier to move to (`None` keeps
/// the tenant's tier) and a word for the logs and the event's record.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionChange {
    pub tier: Option<String>,
    pub outcome: String,
}

/// A translation limit to hold a new job to: at most `limit` translation
/// jobs in the job's month.
#[derive(Debug, Clone, Copy)]
pub struct TranslationLimit {
    pub per_month: u64,
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

fn is_translation(job: &Job) -> bool {
    job.params.translates()
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Counts a job's change in its tenant's usage (see `transition_job`).
fn meter(
    tenant: &TenantId,
    before: Option<&Job>,
    after: &Job,
    limit: Option<TranslationLimit>,
    usage: &sled::transaction::TransactionalTree,
    files: &sled::transaction::TransactionalTree,
    seal: &keyring::RowSeal,
) -> TxResult<()> {
    let was_open = before.is_none_or(|j| !j.status.is_finished());
    let update =
        |period: String, f: &dyn Fn(&mut Usage) -> Result<(), StoreError>| -> TxResult<()> {
            let key = scoped_key(tenant, &period);
            let mut u: Usage = match usage.get(&key)? {
                Some(b) => decode(&key, &b).map_err(ConflictableTransactionError::Abort)?,
                None => Usage::default(),
            };
            f(&mut u).map_err(ConflictableTransactionError::Abort)?;
            usage.insert(key, encode(&u))?;
            Ok(())
        };
    if before.is_none() && is_translation(after) {
        let period = usage_period(after.created_at);
        let p = period.clone();
        update(period, &|u| {
            if let Some(limit) = limit {
                if u.translation_jobs >= limit.per_month {
                    return Err(StoreError::LimitReached {
                        used: u.translation_jobs,
                        limit: limit.per_month,
                        period: p.clone(),
                    });
                }
            }
            u.translation_jobs += 1;
            Ok(())
        })?;
    }
    // Only a job's first arrival at `completed` counts.
    if !was_open || after.status != JobStatus::Completed {
        return Ok(());
    }
    // What the engine decoded for this job is what was processed; the
    // length measured at upload stands in for a result that does not say.
    let decoded = after
        .result
        .as_ref()
        .and_then(|r| r.get("duration_s")?.as_f64());
    let seconds = match decoded {
        Some(s) => s,
        None => {
            let file_key = scoped_key(tenant, &after.file_id);
            match files.get(&file_key)? {
                Some(b) => seal
                    .decode::<FileRecord>(&file_key, &b)
                    .ok()
                    .and_then(|f| f.duration_s),
                None => None,
            }
            .unwrap_or(0.0)
        }
    };
    let period = usage_period(after.finished_at.unwrap_or_else(chrono::Utc::now));
    let kind = after.job_type.clone();
    update(period, &|u| {
        u.audio_seconds += seconds;
        u.jobs += 1;
        *u.jobs_by_kind.entry(kind.clone()).or_default() += 1;
        Ok(())
    })
}

/// Keeps a tenant's count of queued or running jobs with a job's change
/// (see `transition`), refusing a new open job beyond `max_open`.
fn count_open(
    tenant: &TenantId,
    before: Option<&Job>,
    after: &Job,
    max_open: Option<u64>,
    open_jobs: &sled::transaction::TransactionalTree,
) -> TxResult<()> {
    let was_open = before.is_some_and(|j| !j.status.is_finished());
    let is_open = !after.status.is_finished();
    if was_open == is_open {
        return Ok(());
    }
    let key = tenant.as_str().as_bytes();
    let open = match open_jobs.get(key)? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
        None => 0,
    };
    let open = if is_open {
        if let Some(limit) = max_open.filter(|&l| before.is_none() && open >= l) {
            return Err(ConflictableTransactionError::Abort(StoreError::QueueFull {
                open,
                limit,
            }));
        }
        open + 1
    } else {
        open.saturating_sub(1)
    };
    open_jobs.insert(key, &open.to_be_bytes())?;
    Ok(())
}

impl Store {
    /// Opens (or creates) the store under `data_dir` with the master key
    /// from the environment or `<data_dir>/master_key` (see
    /// [`Store::open_with_master_key`]).
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_master_key(data_dir, None)
    }

    /// Opens (or creates) the store under `data_dir`, checks the schema
    /// version, loads the master key (`MURMUR_MASTER_KEY`, else
    /// `master_key_file`, else `<data_dir>/master_key`; created only for a
    /// store without tenant keys) and checks that it wrapped every tenant
    /// key, and removes upload leftovers of a previous crash.
    pub fn open_with_master_key(
        data_dir: &Path,
        master_key_file: Option<&Path>,
    ) -> Result<Store, StoreError> {
        Store::open_inner(data_dir, master_key_file, None)
    }

    /// Opens the store to rotate its master key to `new` (see
    /// [`Store::rotate_master_key`]): tenant keys already wrapped by `new`,
    /// by an interrupted rotation, are accepted.
    pub fn open_for_rotation(
        data_dir: &Path,
        master_key_file: Option<&Path>,
        new: &DataKey,
    ) -> Result<Store, StoreError> {
        Store::open_inner(data_dir, master_key_file, Some(new))
    }

    fn open_inner(
        data_dir: &Path,
        master_key_file: Option<&Path>,
        rotating_to: Option<&DataKey>,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        // Private whoever made it: it holds password hashes and tenants' audio.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let db = open_sled(&data_dir.join("db"))?;
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
        let key_tree = db.open_tree("tenant_keys")?;
        let source = master_key_source(master_key_file, data_dir);
        let master = match (read_master_key(&source)?, &source) {
            (Some(key), _) => key,
            // A new master key file only while no tenant key exists.
            (None, MasterKeySource::File(path)) if key_tree.is_empty() => {
                let key = DataKey::generate();
                write_key_file(path, &key)?;
                tracing::info!(path = %path.display(), id = %key.id(), "created a master key");
                key
            }
            (None, _) => {
                return Err(StoreError::MasterKey(format!(
                    "{source} does not exist, and tenant keys were wrapped by another master \
                     key: give the server the key it was using"
                )))
            }
        };
        let keyring = Arc::new(keyring::Keyring::open(key_tree, master, rotating_to)?);
        let files = Scoped::open_sealed(&db, "files", keyring.clone())?;
        let store = Store {
            data_dir: data_dir.to_path_buf(),
            tenants: db.open_tree("tenants")?,
            emails: db.open_tree("user_emails")?,
            revoked: db.open_tree("revoked")?,
            minted_keys: db.open_tree("minted_keys")?,
            tenant_deletions: db.open_tree("tenant_deletions")?,
            users: Scoped::open(&db, "users")?,
            api_keys: Scoped::open(&db, "api_keys")?,
            ledger: storage::Ledger::new(files.clone()),
            files,
            workflows: Scoped::open_sealed(&db, "workflows", keyring.clone())?,
            jobs: Scoped::open_sealed(&db, "jobs", keyring.clone())?,
            webhooks: Scoped::open_sealed(&db, "webhooks", keyring.clone())?,
            keyring,
            event_seq: db.open_tree("job_event_seq")?,
            events: db.open_tree("job_events")?,
            usage: db.open_tree("usage")?,
            open_jobs: db.open_tree("open_jobs")?,
            subscriptions: db.open_tree("subscriptions")?,
            billing_events: db.open_tree("billing_events")?,
            job_callbacks: db.open_tree("job_callbacks")?,
            outbox: db.open_tree("webhook_outbox")?,
            outbox_due: db.open_tree("webhook_outbox_due")?,
            delivery_log: db.open_tree("webhook_delivery_log")?,
            outbox_signal: Arc::new(tokio::sync::Notify::new()),
            commit: commit::GroupCommit::new(db.clone()),
            db,
        };
        store.sweep_partial_uploads()?;
        store.record_minted_keys()?;
        store.sweep_orphans()?;
        store.recount_open_jobs()?;
        Ok(store)
    }

    /// Makes every write so far durable. Called before a write is
    /// acknowledged to a client.
    pub async fn flush(&self) -> Result<(), StoreError> {
        // Concurrent callers share one flush (group commit, see `commit`).
        // Not sled's `flush_async`: it runs the flush on sled's own small
        // thread pool, which also performs the log writes the flush waits
        // for, and under a few dozen concurrent flushes every pool thread
        // waits and nothing writes (a deadlock the orchestrator benchmark
        // hit at ~1000 jobs). The group's flush runs on tokio's blocking
        // pool and leaves sled's threads free.
        self.commit.flush().await
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
        // The tenant's data key is made with it.
        let (data_key, key_record) = self.keyring.new_tenant_key(&tenant.id);
        (
            &self.tenants,
            &self.emails,
            self.users.tree(),
            self.keyring.tree(),
        )
            .transaction(|(tenants, emails, users, keys)| {
                if emails.get(email.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(StoreError::Conflict(
                        "a user with this email already exists".into(),
                    )));
                }
                tenants.insert(tenant.id.as_bytes(), encode(tenant))?;
                let key = scoped_key(&tid, &owner.id);
                emails.insert(email.as_bytes(), key.clone())?;
                users.insert(key, encode(owner))?;
                keys.insert(tenant.id.as_bytes(), key_record.as_slice())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.keyring.remember(&tenant.id, data_key);
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

    /// Moves a tenant to `tier` by an operator's decision, bumping its tier
    /// epoch. The tier no longer ends on its own (no expiry); later
    /// RevenueCat events still apply.
    pub async fn set_tier(&self, tenant: &TenantId, tier: &str) -> Result<Tenant, StoreError> {
        let now = chrono::Utc::now();
        let (_, after, _) = self
            .change_subscription(tenant, None, |_, sub| {
                sub.source = Some("admin".into());
                sub.expires_at_ms = None;
                sub.billing_issue = false;
                sub.updated_at = Some(now);
                SubscriptionChange {
                    tier: Some(tier.to_string()),
                    outcome: "set by an operator".into(),
                }
            })
            .await?;
        Ok(after)
    }

    // ---- subscriptions and billing events --------------------------------

    pub fn subscription(&self, tenant: &TenantId) -> Result<Option<Subscription>, StoreError> {
        match self.subscriptions.get(tenant.as_str())? {
            Some(bytes) => decode(tenant.as_str().as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Applies `decide` to a tenant's subscription and, when it names a
    /// different tier, moves the tenant (bumping its tier epoch), in one
    /// transaction that also marks `event_id` applied; flushed before it
    /// returns. Answers the tenant before and after, and the outcome.
    pub async fn change_subscription(
        &self,
        tenant: &TenantId,
        event_id: Option<&str>,
        decide: impl Fn(&Tenant, &mut Subscription) -> SubscriptionChange,
    ) -> Result<(Tenant, Tenant, String), StoreError> {
        let key = tenant.as_str().as_bytes();
        let outcome = (&self.tenants, &self.subscriptions, &self.billing_events)
            .transaction(|(tenants, subs, events)| {
                let Some(bytes) = tenants.get(key)? else {
                    return Err(ConflictableTransactionError::Abort(StoreError::NotFound));
                };
                let before: Tenant =
                    decode(key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                let mut sub: Subscription = match subs.get(key)? {
                    Some(b) => decode(key, &b).map_err(ConflictableTransactionError::Abort)?,
                    None => Subscription::default(),
                };
                let change = decide(&before, &mut sub);
                let mut after = before.clone();
                if let Some(tier) = change
                    .tier
                    .as_ref()
                    .filter(|t| **t != before.subscription_tier)
                {
                    after.subscription_tier = tier.clone();
                    after.tier_epoch += 1;
                }
                after.subscription_id = sub.product_id.clone().or(after.subscription_id);
                if after != before {
                    tenants.insert(key, encode(&after))?;
                }
                subs.insert(key, encode(&sub))?;
                if let Some(id) = event_id {
                    if let Some(b) = events.get(id.as_bytes())? {
                        let mut ev: BillingEvent = decode(id.as_bytes(), &b)
                            .map_err(ConflictableTransactionError::Abort)?;
                        ev.processed = true;
                        ev.outcome = Some(change.outcome.clone());
                        events.insert(id.as_bytes(), encode(&ev))?;
                    }
                }
                Ok((before, after, change.outcome))
            })
            .map_err(tx_error)?;
        self.flush().await?;
        Ok(outcome)
    }

    /// Records a webhook event unless one with its id is already there,
    /// and flushes: once this answers `true` a crash cannot lose it.
    /// `false` means a replay.
    pub async fn record_billing_event(&self, event: &BillingEvent) -> Result<bool, StoreError> {
        let fresh = self
            .billing_events
            .compare_and_swap(event.id.as_bytes(), None::<&[u8]>, Some(encode(event)))?
            .is_ok();
        if fresh {
            self.flush().await?;
        }
        Ok(fresh)
    }

    pub fn billing_event(&self, id: &str) -> Result<Option<BillingEvent>, StoreError> {
        match self.billing_events.get(id.as_bytes())? {
            Some(b) => decode(id.as_bytes(), &b).map(Some),
            None => Ok(None),
        }
    }

    /// Marks an event that changed no tenant (a test, a sandbox event, an
    /// unknown user) as applied.
    pub async fn finish_billing_event(&self, id: &str, outcome: &str) -> Result<(), StoreError> {
        self.billing_events.update_and_fetch(id.as_bytes(), |old| {
            let mut ev: BillingEvent = serde_json::from_slice(old?).ok()?;
            ev.processed = true;
            ev.outcome = Some(outcome.to_string());
            Some(encode(&ev))
        })?;
        self.flush().await
    }

    /// Events received but not applied yet (a crash came between), oldest
    /// first by their own timestamp.
    pub fn unprocessed_billing_events(&self) -> Result<Vec<BillingEvent>, StoreError> {
        let mut out = Vec::new();
        for item in self.billing_events.iter() {
            let (key, bytes) = item?;
            let ev: BillingEvent = decode(&key, &bytes)?;
            if !ev.processed {
                out.push(ev);
            }
        }
        out.sort_by_key(|e| e.event["event_timestamp_ms"].as_i64().unwrap_or(0));
        Ok(out)
    }

    /// Tenants whose paid tier ended before `now_ms` by its expiry time.
    pub fn lapsed_subscriptions(&self, now_ms: i64) -> Result<Vec<TenantId>, StoreError> {
        let mut out = Vec::new();
        for item in self.subscriptions.iter() {
            let (key, bytes) = item?;
            let sub: Subscription = decode(&key, &bytes)?;
            if sub.expires_at_ms.is_some_and(|e| e <= now_ms) {
                out.push(TenantId::trusted(
                    String::from_utf8_lossy(&key).into_owned(),
                ));
            }
        }
        Ok(out)
    }

    // ---- usage -------------------------------------------------------------

    /// A tenant's usage in `period` (`YYYY-MM`); zero when nothing was used.
    pub fn usage(&self, tenant: &TenantId, period: &str) -> Result<Usage, StoreError> {
        let key = scoped_key(tenant, period);
        match self.usage.get(&key)? {
            Some(b) => decode(&key, &b),
            None => Ok(Usage::default()),
        }
    }

    // ---- files -----------------------------------------------------------

    /// The tenant's data key, which seals its uploads and artifacts (made
    /// on first use for a tenant older than encryption at rest).
    pub fn data_key(&self, tenant: &TenantId) -> Result<Arc<DataKey>, StoreError> {
        self.keyring.key(tenant.as_str())
    }

    /// A server secret (the token signing key) sealed by the master key,
    /// bound to `context`, as text for a file.
    pub fn seal_secret(&self, context: &str, plain: &[u8]) -> String {
        self.keyring.seal_secret(context, plain)
    }

    /// What [`Store::seal_secret`] sealed; `None` when `text` was written
    /// before secrets were sealed.
    pub fn open_secret(&self, context: &str, text: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.keyring.open_secret(context, text)
    }

    /// The id (a hash, not the key) of the master key in use.
    pub fn master_key_id(&self) -> String {
        self.keyring.master_id()
    }

    /// Rewraps every tenant key under `new` (see `murmur admin
    /// rotate-master-key`); answers how many were rewrapped.
    pub fn rotate_master_key(&self, new: DataKey) -> Result<usize, StoreError> {
        self.keyring.rotate(new)
    }

    /// Folder holding one tenant's uploaded bytes.
    pub fn blob_dir(&self, tenant: &TenantId) -> PathBuf {
        self.data_dir.join("files").join(tenant.as_str())
    }

    /// Where a file's bytes are written while its upload is in progress.
    /// Anything left under such a name is removed at the next start.
    pub fn partial_blob_path(&self, tenant: &TenantId, file_id: &str) -> PathBuf {
        self.blob_dir(tenant).join(format!(".{file_id}.part"))
    }

    /// Files a job produced beside its result (separated stems), one folder
    /// per job under the tenant's own folder.
    pub fn artifact_dir(&self, tenant: &TenantId, job_id: &str) -> PathBuf {
        self.data_dir
            .join("artifacts")
            .join(tenant.as_str())
            .join(job_id)
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

    /// Writes a file row outside any upload (its bytes count in the quota
    /// from now on, unchecked).
    pub async fn put_file(&self, tenant: &TenantId, file: &FileRecord) -> Result<(), StoreError> {
        {
            let mut ledger = self.ledger.lock();
            let replaced = ledger.files().get(tenant, &file.id)?.map(|f| f.size);
            ledger.files().put(tenant, &file.id, file)?;
            ledger.stored(tenant, file.size, replaced, 0)?;
        }
        self.flush().await
    }

    /// Room in `tenant`'s storage quota of `limit` bytes for one upload,
    /// claimed as its bytes arrive (see [`Reservation::grow`]).
    pub fn reserve_storage(&self, tenant: &TenantId, limit: u64) -> Reservation {
        Reservation::new(self.ledger.clone(), tenant.clone(), limit)
    }

    /// Records an uploaded file whose bytes `reservation` claimed: the claim
    /// becomes stored bytes in the same step as the row appears, so the
    /// quota never counts the upload twice or not at all.
    pub async fn put_file_reserved(
        &self,
        file: &FileRecord,
        mut reservation: Reservation,
    ) -> Result<(), StoreError> {
        {
            let tenant = reservation.tenant().clone();
            let mut ledger = self.ledger.lock();
            let replaced = ledger.files().get(&tenant, &file.id)?.map(|f| f.size);
            ledger.files().put(&tenant, &file.id, file)?;
            ledger.stored(&tenant, file.size, replaced, reservation.bytes())?;
            reservation.spent();
        }
        self.flush().await
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
        let removed = {
            let mut ledger = self.ledger.lock();
            let removed = ledger.files().remove(tenant, id)?;
            if let Some(file) = &removed {
                ledger.removed(tenant, file.size)?;
            }
            removed
        };
        let Some(file) = removed else {
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
        self.ledger.lock().used(tenant)
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

    /// Creates a job together with the first entry of its event log. A
    /// translation job is counted in its month's usage in the same
    /// transaction, and refused with `LimitReached` when `limit` is full;
    /// any job is refused with `QueueFull` when the tenant already has
    /// `max_open` jobs queued or running.
    pub async fn create_job(
        &self,
        tenant: &TenantId,
        job: &Job,
        kind: EventType,
        limit: Option<TranslationLimit>,
        max_open: Option<u64>,
    ) -> Result<Event, StoreError> {
        self.create_job_with_callback(tenant, job, kind, limit, max_open, None)
            .await
    }

    /// [`Store::create_job`] for a job with a `callback_url`: the callback
    /// is written in the same transaction, so the job's first event is
    /// already delivered to it.
    pub async fn create_job_with_callback(
        &self,
        tenant: &TenantId,
        job: &Job,
        kind: EventType,
        limit: Option<TranslationLimit>,
        max_open: Option<u64>,
        callback: Option<&JobCallback>,
    ) -> Result<Event, StoreError> {
        let created = self
            .transition(
                tenant,
                &job.id,
                Some(job.clone()),
                kind,
                (limit, max_open, callback),
                |_| true,
            )
            .await?;
        created.map(|(_, event)| event).ok_or(StoreError::NotFound)
    }

    /// Changes a job and appends the event that announces the change, in
    /// one transaction, flushed before it returns: a state change is durable
    /// before anyone hears of it, and the log has no gaps. `change` answers
    /// `false` to leave the job alone (no event then). `insert` creates the
    /// row when it does not exist yet.
    ///
    /// Usage is metered here, in the same transaction: a job that
    /// completes adds its audio seconds and counts as a job of its kind in
    /// the month it completes. (Translation jobs count when created, see
    /// `create_job`.)
    pub async fn transition_job(
        &self,
        tenant: &TenantId,
        id: &str,
        insert: Option<Job>,
        kind: EventType,
        change: impl FnMut(&mut Job) -> bool,
    ) -> Result<Option<(Job, Event)>, StoreError> {
        self.transition(tenant, id, insert, kind, (None, None, None), change)
            .await
    }

    /// [`Store::transition_job`] of an existing job without waiting for
    /// the flush: answers once the change is committed (readers see it; a
    /// crash may still lose it) and calls `then` with its event once a
    /// flush has made it durable, after the callbacks registered before it
    /// (see `commit`). The job actors announce events this way.
    pub fn transition_job_then(
        &self,
        tenant: &TenantId,
        id: &str,
        kind: EventType,
        change: impl FnMut(&mut Job) -> bool,
        then: Box<dyn FnOnce(Result<Event, StoreError>) + Send>,
    ) -> Result<Option<Job>, StoreError> {
        let (outcome, enqueued) =
            self.commit_transition(tenant, id, None, kind, (None, None, None), change)?;
        let Some((job, event)) = outcome else {
            return Ok(None);
        };
        let signal = (enqueued > 0).then(|| self.outbox_signal.clone());
        self.commit.then(Box::new(move |durable| match durable {
            Ok(()) => {
                if let Some(signal) = signal {
                    signal.notify_one();
                }
                then(Ok(event));
            }
            Err(why) => then(Err(StoreError::Io(std::io::Error::other(why.to_string())))),
        }));
        Ok(Some(job))
    }

    async fn transition(
        &self,
        tenant: &TenantId,
        id: &str,
        insert: Option<Job>,
        kind: EventType,
        rules: (Option<TranslationLimit>, Option<u64>, Option<&JobCallback>),
        change: impl FnMut(&mut Job) -> bool,
    ) -> Result<Option<(Job, Event)>, StoreError> {
        let (outcome, enqueued) =
            self.commit_transition(tenant, id, insert, kind, rules, change)?;
        if outcome.is_some() {
            self.flush().await?;
        }
        if outcome.is_some() && enqueued > 0 {
            self.outbox_signal.notify_one();
        }
        Ok(outcome)
    }

    /// The transaction of [`Store::transition`], not flushed; answers its
    /// outcome and how many webhook deliveries it wrote.
    fn commit_transition(
        &self,
        tenant: &TenantId,
        id: &str,
        insert: Option<Job>,
        kind: EventType,
        (limit, max_open, callback): (Option<TranslationLimit>, Option<u64>, Option<&JobCallback>),
        change: impl FnMut(&mut Job) -> bool,
    ) -> Result<(Option<(Job, Event)>, usize), StoreError> {
        let key = scoped_key(tenant, id);
        let seal = self.jobs.seal(tenant)?;
        // Deliveries the event owes go in its transaction (see `webhooks`).
        let subscribers = self.subscribers(tenant, kind)?;
        // sled retries transactions through an `Fn`: lend it the closure.
        let change = std::cell::RefCell::new(change);
        // How many deliveries the transaction (its last run) wrote.
        let enqueued = std::cell::Cell::new(0);
        // Nine trees: as many as sled's transactions take.
        let outcome = (
            self.jobs.tree(),
            &self.event_seq,
            &self.events,
            &self.usage,
            self.files.tree(),
            &self.open_jobs,
            &self.job_callbacks,
            &self.outbox,
            &self.outbox_due,
        )
            .transaction(|(jobs, seqs, events, usage, files, open, cbs, out, due)| {
                let before: Option<Job> = match jobs.get(&key)? {
                    Some(bytes) => Some(
                        seal.decode(&key, &bytes)
                            .map_err(ConflictableTransactionError::Abort)?,
                    ),
                    None => None,
                };
                let mut job: Job = match (&before, &insert) {
                    (Some(job), _) | (None, Some(job)) => job.clone(),
                    (None, None) => return Ok(None),
                };
                if !(change.borrow_mut())(&mut job) {
                    return Ok(None);
                }
                meter(tenant, before.as_ref(), &job, limit, usage, files, &seal)?;
                count_open(tenant, before.as_ref(), &job, max_open, open)?;
                let seq = match seqs.get(&key)? {
                    Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])) + 1,
                    None => 1,
                };
                let mut event = Event::of(&job, kind);
                event.seq = seq;
                event.attempt = matches!(kind, EventType::Started | EventType::Retrying)
                    .then_some(job.attempts);
                jobs.insert(key.as_slice(), seal.encode(&key, &job))?;
                seqs.insert(key.as_slice(), &seq.to_be_bytes())?;
                let event_key = event_key(tenant, id, seq);
                events.insert(event_key.as_slice(), seal.encode(&event_key, &event))?;
                if let Some(cb) = callback.filter(|_| before.is_none()) {
                    cbs.insert(key.as_slice(), seal.encode(&key, cb))?;
                }
                enqueued.set(0);
                if let Some(subscribers) = &subscribers {
                    enqueued.set(webhooks::enqueue(
                        tenant,
                        &job,
                        &event,
                        subscribers,
                        cbs,
                        out,
                        due,
                        &seal,
                    )?);
                }
                Ok(Some((job, event)))
            })
            .map_err(tx_error)?;
        Ok((outcome, enqueued.get()))
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
        let seal = self.jobs.opener(tenant)?;
        let mut out = Vec::new();
        for item in self.events.range(start..=end).take(limit) {
            let (key, bytes) = item?;
            let mut event: Event = seal.decode(&key, &bytes)?;
            event.tenant_id = tenant.as_str().to_string();
            out.push(event);
        }
        Ok(out)
    }

    /// Counts every tenant's queued or running jobs afresh (at open), so
    /// the counts kept by `transition` start right whatever came before.
    fn recount_open_jobs(&self) -> Result<(), StoreError> {
        let mut counts: std::collections::HashMap<String, u64> = Default::default();
        for job in self.unfinished_jobs()? {
            *counts.entry(job.tenant_id).or_default() += 1;
        }
        self.open_jobs.clear()?;
        for (tenant, n) in counts {
            self.open_jobs.insert(tenant.as_bytes(), &n.to_be_bytes())?;
        }
        Ok(())
    }

    /// Queued or running jobs of a tenant, as counted for its queue bound.
    pub fn open_jobs(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        Ok(match self.open_jobs.get(tenant.as_str())? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
            None => 0,
        })
    }

    /// Every queued or running job of every tenant, oldest first (start-up
    /// recovery only).
    pub fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        for item in self.jobs.tree().iter() {
            let (key, bytes) = item?;
            let job: Job = self.keyring.rows_for_key(&key)?.decode(&key, &bytes)?;
            if !job.status.is_finished() {
                jobs.push(job);
            }
        }
        jobs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(jobs)
    }

    /// Ids of one tenant's queued and running jobs, in one scan.
    pub fn unfinished_job_ids(&self, tenant: &TenantId) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        self.jobs.for_each(tenant, |j| {
            if !j.status.is_finished() {
                ids.push(j.id);
            }
        })?;
        Ok(ids)
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

/// Opens the sled database at `path`. sled lets one process hold it, and
/// lets go a moment after the last handle is dropped (its I/O threads
/// finish first), so a store reopened at once (a restart within one
/// process, a process taking over from one that is exiting) waits up to
/// 3 s for the lock instead of failing.
pub(crate) fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use murmur_actors::params::JobParams;

    /// A queued job of `tenant` (the store's tests, and its modules').
    pub(super) fn job(tenant: &TenantId, id: &str, params: JobParams) -> Job {
        Job::queued(
            id.into(),
            tenant.as_str().into(),
            "u1".into(),
            "f1".into(),
            None,
            params,
        )
    }

    /// A file recorded with a header's 1 s whose job decoded 700 s counts
    /// 700 s: usage follows what the engine decoded.
    #[tokio::test]
    async fn usage_is_metered_from_the_decoded_length() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = TenantId::trusted("t1");
        let file = FileRecord {
            id: "f1".into(),
            name: "old.flac".into(),
            path: "files/t1/f1".into(),
            size: 10,
            duration_s: Some(1.0),
            content_type: None,
            user_id: "u1".into(),
            tenant_id: "t1".into(),
            created_at: Utc::now(),
        };
        store.put_file(&t, &file).await.unwrap();
        let vad = JobParams::merged(
            &JobParams::defaults("base"),
            &serde_json::json!({"job_type": "vad"}),
        )
        .unwrap();
        store
            .create_job(&t, &job(&t, "j1", vad), EventType::Queued, None, None)
            .await
            .unwrap();
        store
            .transition_job(&t, "j1", None, EventType::Completed, |j| {
                j.status = JobStatus::Completed;
                j.finished_at = Some(Utc::now());
                j.result = Some(serde_json::json!({"duration_s": 700.0, "speech": []}));
                true
            })
            .await
            .unwrap();
        let u = store.usage(&t, &usage_period(Utc::now())).unwrap();
        assert_eq!(u.audio_seconds, 700.0);
    }

    #[tokio::test]
    async fn usage_is_metered_with_the_jobs_it_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = TenantId::trusted("t1");
        let file = FileRecord {
            id: "f1".into(),
            name: "a.wav".into(),
            path: "files/t1/f1".into(),
            size: 10,
            duration_s: Some(2.5),
            content_type: None,
            user_id: "u1".into(),
            tenant_id: "t1".into(),
            created_at: Utc::now(),
        };
        store.put_file(&t, &file).await.unwrap();
        let base = JobParams::defaults("base");
        let translate =
            JobParams::merged(&base, &serde_json::json!({"task": "translate"})).unwrap();
        let limit = Some(TranslationLimit { per_month: 1 });
        store
            .create_job(
                &t,
                &job(&t, "j1", translate.clone()),
                EventType::Queued,
                limit,
                None,
            )
            .await
            .unwrap();
        let refused = store
            .create_job(
                &t,
                &job(&t, "j2", translate),
                EventType::Queued,
                limit,
                None,
            )
            .await;
        assert!(matches!(
            refused,
            Err(StoreError::LimitReached {
                used: 1,
                limit: 1,
                ..
            })
        ));
        assert!(store.job(&t, "j2").unwrap().is_none(), "nothing written");
        // Completing counts once, however often it is reported.
        for _ in 0..2 {
            store
                .transition_job(&t, "j1", None, EventType::Completed, |j| {
                    j.status = JobStatus::Completed;
                    j.finished_at = Some(Utc::now());
                    true
                })
                .await
                .unwrap();
        }
        let u = store.usage(&t, &usage_period(Utc::now())).unwrap();
        assert_eq!(u.translation_jobs, 1);
        assert_eq!(u.jobs, 1);
        assert_eq!(u.jobs_by_kind.get("transcription"), Some(&1));
        assert!((u.audio_seconds - 2.5).abs() < 1e-9);
        let other = store
            .usage(&TenantId::trusted("t2"), &usage_period(Utc::now()))
            .unwrap();
        assert_eq!(other, Usage::default());
    }

    #[tokio::test]
    async fn open_jobs_are_bounded_per_tenant_and_recounted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (TenantId::trusted("ta"), TenantId::trusted("tb"));
        let params = JobParams::defaults("base");
        for i in 0..2 {
            store
                .create_job(
                    &a,
                    &job(&a, &format!("j{i}"), params.clone()),
                    EventType::Queued,
                    None,
                    Some(2),
                )
                .await
                .unwrap();
        }
        let refused = store
            .create_job(
                &a,
                &job(&a, "j2", params.clone()),
                EventType::Queued,
                None,
                Some(2),
            )
            .await;
        assert!(matches!(
            refused,
            Err(StoreError::QueueFull { open: 2, limit: 2 })
        ));
        assert!(store.job(&a, "j2").unwrap().is_none(), "nothing written");
        // Another tenant's queue is its own.
        store
            .create_job(
                &b,
                &job(&b, "j0", params.clone()),
                EventType::Queued,
                None,
                Some(2),
            )
            .await
            .unwrap();
        // A job that ends makes room.
        store
            .transition_job(&a, "j0", None, EventType::Cancelled, |j| {
                j.status = JobStatus::Cancelled;
                true
            })
            .await
            .unwrap();
        assert_eq!(store.open_jobs(&a).unwrap(), 1);
        store
            .create_job(&a, &job(&a, "j2", params), EventType::Queued, None, Some(2))
            .await
            .unwrap();
        assert_eq!(store.open_jobs(&a).unwrap(), 2);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.open_jobs(&a).unwrap(), 2);
        assert_eq!(store.open_jobs(&b).unwrap(), 1);
    }
}
