//! Encryption at rest: each tenant's data key, wrapped by the server's
//! master key, and the sealing of tenant rows with it (docs/ARCHITECTURE.md,
//! "Encryption at rest").
//!
//! - The master key comes from `MURMUR_MASTER_KEY` (64 hex digits), else
//!   from the file `store.master_key_file`, else from `<data_dir>/master_key`
//!   (0600). A missing file is created only while no tenant key exists: a
//!   mistyped path must not silently start a second key.
//! - A tenant's data key is made with the tenant (or on first use, for a
//!   tenant older than encryption), stored in tree `tenant_keys` sealed by
//!   the master key and bound to the tenant id, and cached unwrapped in
//!   memory. Deleting the tenant deletes its key, so copies of its sealed
//!   files and rows (a backup) can no longer be opened.
//! - Rows of `files`, `workflows`, `jobs` (results and checkpoints) and
//!   `job_events` are sealed with the tenant's key, bound to their sled key.
//!   Rows written before encryption are still read, and sealed when next
//!   written.
//! - Rotation (`murmur admin rotate-master-key`) rewraps every tenant key
//!   under a new master key; the data itself is not rewritten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use murmur_seal::{is_sealed_value, open_value, seal_value, DataKey};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{StoreError, TenantId};

/// The environment variable that holds the master key, when set.
pub const MASTER_KEY_ENV: &str = "MURMUR_MASTER_KEY";

/// Where the master key is read from, for messages.
#[derive(Debug, Clone)]
pub enum MasterKeySource {
    Env,
    File(PathBuf),
}

impl std::fmt::Display for MasterKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MasterKeySource::Env => write!(f, "${MASTER_KEY_ENV}"),
            MasterKeySource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Where the master key comes from: the environment, the configured file
/// (`configured`, empty for none) or `<data_dir>/master_key`.
pub fn master_key_source(configured: Option<&Path>, data_dir: &Path) -> MasterKeySource {
    if std::env::var(MASTER_KEY_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        return MasterKeySource::Env;
    }
    match configured {
        Some(p) if !p.as_os_str().is_empty() => MasterKeySource::File(p.to_path_buf()),
        _ => MasterKeySource::File(data_dir.join("master_key")),
    }
}

fn key_error(reason: String) -> StoreError {
    StoreError::MasterKey(reason)
}

/// Reads the master key; `None` when its file does not exist.
pub fn read_master_key(source: &MasterKeySource) -> Result<Option<DataKey>, StoreError> {
    let text = match source {
        MasterKeySource::Env => std::env::var(MASTER_KEY_ENV).unwrap_or_default(),
        MasterKeySource::File(path) => match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(key_error(format!("reading {}: {e}", path.display()))),
        },
    };
    DataKey::from_hex(&text)
        .map(Some)
        .map_err(|e| key_error(format!("the master key in {source}: {e}")))
}

/// Writes a new key file readable by its owner only, atomically.
pub fn write_key_file(path: &Path, key: &DataKey) -> Result<(), StoreError> {
    let io = |e: std::io::Error| key_error(format!("writing {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(io)?;
        writeln!(file, "{}", key.to_hex()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// How a sealed server secret's text starts.
const SECRET_PREFIX: &str = "sealed:";

/// A tenant's data key as stored: sealed by the master key named `master`.
#[derive(Serialize, Deserialize)]
struct WrappedKey {
    master: String,
    wrapped: String,
}

fn wrap_context(tenant: &str) -> Vec<u8> {
    format!("tenant-key:{tenant}").into_bytes()
}

/// The tenant data keys: stored wrapped, cached unwrapped.
pub(super) struct Keyring {
    master: RwLock<DataKey>,
    /// The new master key while a rotation runs (see `open`).
    rotating_to: Option<DataKey>,
    tree: sled::Tree,
    cache: RwLock<HashMap<String, Arc<DataKey>>>,
}

impl Keyring {
    /// Opens the keyring with `master`, after checking that every stored
    /// tenant key was wrapped by it (or by `rotating_to`, the new key of a
    /// rotation that was interrupted and is run again): a wrong master key
    /// fails here, at start, not at a tenant's first read.
    pub(super) fn open(
        tree: sled::Tree,
        master: DataKey,
        rotating_to: Option<&DataKey>,
    ) -> Result<Keyring, StoreError> {
        let id = master.id();
        let new_id = rotating_to.map(DataKey::id);
        for item in tree.iter() {
            let (tenant, bytes) = item?;
            let record = parse(&tenant, &bytes)?;
            if record.master != id && Some(&record.master) != new_id.as_ref() {
                return Err(key_error(format!(
                    "tenant keys are wrapped by master key {}, and this server was given \
                     master key {id}: start it with the key it was using (or finish a \
                     rotation with `murmur admin rotate-master-key`)",
                    record.master
                )));
            }
        }
        Ok(Keyring {
            master: RwLock::new(master),
            rotating_to: rotating_to.cloned(),
            tree,
            cache: RwLock::default(),
        })
    }

    pub(super) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub(super) fn master_id(&self) -> String {
        self.master.read().expect("master key lock").id()
    }

    /// A new data key for `tenant` and its stored form, to write in the
    /// tenant's creating transaction.
    pub(super) fn new_tenant_key(&self, tenant: &str) -> (DataKey, Vec<u8>) {
        let key = DataKey::generate();
        let record = self.wrap(tenant, &key);
        (key, record)
    }

    fn wrap(&self, tenant: &str, key: &DataKey) -> Vec<u8> {
        let master = self.master.read().expect("master key lock");
        let record = WrappedKey {
            master: master.id(),
            wrapped: hex::encode(master.wrap(key, &wrap_context(tenant))),
        };
        serde_json::to_vec(&record).expect("a key record serialises")
    }

    pub(super) fn remember(&self, tenant: &str, key: DataKey) {
        self.cache
            .write()
            .expect("keyring lock")
            .insert(tenant.to_string(), Arc::new(key));
    }

    /// The tenant's data key if it has one (reading never makes one: rows
    /// of a tenant without a key are all from before encryption).
    pub(super) fn existing_key(&self, tenant: &str) -> Result<Option<Arc<DataKey>>, StoreError> {
        if let Some(k) = self.cache.read().expect("keyring lock").get(tenant) {
            return Ok(Some(k.clone()));
        }
        let Some(bytes) = self.tree.get(tenant)? else {
            return Ok(None);
        };
        let key = Arc::new(self.unwrap(tenant, &bytes)?);
        self.cache
            .write()
            .expect("keyring lock")
            .insert(tenant.to_string(), key.clone());
        Ok(Some(key))
    }

    /// The tenant's data key, made and stored (durably) on first use.
    pub(super) fn key(&self, tenant: &str) -> Result<Arc<DataKey>, StoreError> {
        if let Some(k) = self.existing_key(tenant)? {
            return Ok(k);
        }
        let (key, record) = self.new_tenant_key(tenant);
        let key = match self
            .tree
            .compare_and_swap(tenant, None::<&[u8]>, Some(record))?
        {
            Ok(()) => {
                // Durable before anything is sealed with it.
                self.tree.flush()?;
                key
            }
            // Another thread made it first: use theirs.
            Err(lost) => self.unwrap(tenant, lost.current.as_deref().unwrap_or(&[]))?,
        };
        let key = Arc::new(key);
        self.cache
            .write()
            .expect("keyring lock")
            .insert(tenant.to_string(), key.clone());
        Ok(key)
    }

    fn unwrap(&self, tenant: &str, bytes: &[u8]) -> Result<DataKey, StoreError> {
        let record = parse(tenant.as_bytes(), bytes)?;
        let wrapped = hex::decode(&record.wrapped).map_err(|e| StoreError::Corrupt {
            key: format!("tenant_keys/{tenant}"),
            reason: e.to_string(),
        })?;
        self.master
            .read()
            .expect("master key lock")
            .unwrap(&wrapped, &wrap_context(tenant))
            .map_err(|e| StoreError::Corrupt {
                key: format!("tenant_keys/{tenant}"),
                reason: e.to_string(),
            })
    }

    /// Forgets a deleted tenant's key, in memory and on disk.
    pub(super) fn forget(&self, tenant: &str) -> Result<(), StoreError> {
        self.cache.write().expect("keyring lock").remove(tenant);
        self.tree.remove(tenant)?;
        Ok(())
    }

    /// Rewraps every tenant key under `new` and uses it from now on.
    /// Records already under `new` are left (a rotation interrupted and run
    /// again). Answers how many were rewrapped.
    pub(super) fn rotate(&self, new: DataKey) -> Result<usize, StoreError> {
        let new_id = new.id();
        let mut done = 0;
        for item in self.tree.iter() {
            let (tenant, bytes) = item?;
            let tenant = String::from_utf8_lossy(&tenant).into_owned();
            if parse(tenant.as_bytes(), &bytes)?.master == new_id {
                continue;
            }
            let key = self.unwrap(&tenant, &bytes)?;
            let record = WrappedKey {
                master: new_id.clone(),
                wrapped: hex::encode(new.wrap(&key, &wrap_context(&tenant))),
            };
            self.tree.insert(
                tenant.as_bytes(),
                serde_json::to_vec(&record).expect("a key record serialises"),
            )?;
            done += 1;
        }
        self.tree.flush()?;
        *self.master.write().expect("master key lock") = new;
        Ok(done)
    }

    /// A server secret (the token signing key) sealed by the master key,
    /// as text for its file: `sealed:<master key id>:<hex>`.
    pub(super) fn seal_secret(&self, context: &str, plain: &[u8]) -> String {
        let master = self.master.read().expect("master key lock");
        let sealed = seal_value(&master, context.as_bytes(), plain);
        format!("{SECRET_PREFIX}{}:{}", master.id(), hex::encode(sealed))
    }

    /// The secret [`seal_secret`](Self::seal_secret) wrote; `None` for
    /// text written before secrets were sealed (to be read as it is).
    pub(super) fn open_secret(
        &self,
        context: &str,
        text: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(rest) = text.trim().strip_prefix(SECRET_PREFIX) else {
            return Ok(None);
        };
        let malformed = |why: &str| key_error(format!("the sealed {context}: {why}"));
        let (id, sealed) = rest.split_once(':').ok_or_else(|| malformed("no key id"))?;
        let sealed = hex::decode(sealed).map_err(|_| malformed("not hex"))?;
        let master = self.master.read().expect("master key lock");
        let key = [Some(&*master), self.rotating_to.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id() == id)
            .ok_or_else(|| {
                key_error(format!(
                    "the {context} is sealed by master key {id}, and this server was given \
                     master key {}: start it with the key it was using (or finish a rotation \
                     with `murmur admin rotate-master-key`)",
                    master.id()
                ))
            })?;
        open_value(key, context.as_bytes(), &sealed)
            .map(Some)
            .map_err(|e| malformed(&e.to_string()))
    }

    /// How rows of `tenant` are sealed (making its key if need be).
    pub(super) fn rows(&self, tenant: &TenantId) -> Result<RowSeal, StoreError> {
        Ok(RowSeal(Some(self.key(tenant.as_str())?)))
    }

    /// How rows of `tenant` are opened: with its key, if it has one.
    pub(super) fn rows_to_read(&self, tenant: &TenantId) -> Result<RowSeal, StoreError> {
        Ok(RowSeal(self.existing_key(tenant.as_str())?))
    }

    /// How a row under `row_key` (`<tenant>/...`) is opened.
    pub(super) fn rows_for_key(&self, row_key: &[u8]) -> Result<RowSeal, StoreError> {
        let tenant = row_key
            .iter()
            .position(|b| *b == b'/')
            .map(|i| &row_key[..i])
            .ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(row_key).into_owned(),
                reason: "a tenant row key without a tenant".into(),
            })?;
        self.rows_to_read(&TenantId::trusted(String::from_utf8_lossy(tenant)))
    }
}

fn parse(tenant: &[u8], bytes: &[u8]) -> Result<WrappedKey, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: format!("tenant_keys/{}", String::from_utf8_lossy(tenant)),
        reason: e.to_string(),
    })
}

/// Seals and opens one tenant's rows; [`RowSeal::plain`] for trees that
/// are not sealed.
#[derive(Clone)]
pub(super) struct RowSeal(Option<Arc<DataKey>>);

impl RowSeal {
    pub(super) fn plain() -> RowSeal {
        RowSeal(None)
    }

    pub(super) fn encode<T: Serialize>(&self, row_key: &[u8], value: &T) -> Vec<u8> {
        let json = super::encode(value);
        match &self.0 {
            Some(key) => seal_value(key, row_key, &json),
            None => json,
        }
    }

    /// A sealed row, or one written before encryption.
    pub(super) fn decode<T: DeserializeOwned>(
        &self,
        row_key: &[u8],
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        if !is_sealed_value(bytes) {
            return super::decode(row_key, bytes);
        }
        let corrupt = |reason: String| StoreError::Corrupt {
            key: String::from_utf8_lossy(row_key).into_owned(),
            reason,
        };
        let key = self
            .0
            .as_ref()
            .ok_or_else(|| corrupt("a sealed row in a tree that is not sealed".into()))?;
        let json = open_value(key, row_key, bytes).map_err(|e| corrupt(e.to_string()))?;
        super::decode(row_key, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{scoped_key, Store};
    use super::*;
    use murmur_actors::job::{EventType, Job};
    use murmur_actors::params::JobParams;

    fn job(tenant: &TenantId, id: &str) -> Job {
        super::super::tests::job(tenant, id, JobParams::defaults("base"))
    }

    /// Rows written before encryption still read, and are sealed when next
    /// written; sealed rows are bound to their key.
    #[tokio::test]
    async fn rows_before_encryption_read_and_are_sealed_when_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = TenantId::trusted("t_old");
        let key = scoped_key(&t, "j1");
        // As an older build wrote it: plain JSON, and no tenant key yet.
        store
            .jobs
            .tree()
            .insert(&key, serde_json::to_vec(&job(&t, "j1")).unwrap())
            .unwrap();
        assert!(store.keyring.existing_key("t_old").unwrap().is_none());
        assert_eq!(store.job(&t, "j1").unwrap().unwrap().id, "j1");
        // Reading made no key; the next write makes one and seals the row.
        assert!(store.keyring.existing_key("t_old").unwrap().is_none());
        store
            .transition_job(&t, "j1", None, EventType::Cancelled, |j| {
                j.error = Some("stopped".into());
                true
            })
            .await
            .unwrap();
        let raw = store.jobs.tree().get(&key).unwrap().unwrap();
        assert!(is_sealed_value(&raw));
        assert!(!String::from_utf8_lossy(&raw).contains("stopped"));
        assert_eq!(
            store.job(&t, "j1").unwrap().unwrap().error.as_deref(),
            Some("stopped")
        );
        // The same sealed bytes under another job's key do not open.
        let other = scoped_key(&t, "j2");
        store.jobs.tree().insert(&other, raw).unwrap();
        assert!(matches!(
            store.job(&t, "j2"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// Two tenants' keys differ, deleting a tenant forgets its key, and a
    /// rotation keeps every key while changing what wraps it.
    #[tokio::test]
    async fn keys_are_per_tenant_forgotten_with_the_tenant_and_kept_by_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (TenantId::trusted("t_a"), TenantId::trusted("t_b"));
        let ka = store.data_key(&a).unwrap();
        let kb = store.data_key(&b).unwrap();
        assert_ne!(ka.to_hex(), kb.to_hex());
        assert_eq!(store.data_key(&a).unwrap().to_hex(), ka.to_hex());

        let new = DataKey::generate();
        assert_eq!(store.rotate_master_key(new.clone()).unwrap(), 2);
        assert_eq!(store.master_key_id(), new.id());
        store.flush().await.unwrap();
        drop(store);
        // Reopened with the new key, the tenant keys are the same ones.
        std::fs::write(dir.path().join("master_key"), new.to_hex()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.data_key(&a).unwrap().to_hex(), ka.to_hex());

        store.keyring.forget("t_a").unwrap();
        assert!(store.keyring.existing_key("t_a").unwrap().is_none());
        assert_eq!(store.data_key(&b).unwrap().to_hex(), kb.to_hex());
    }
}
