//! A sled tree of one kind of tenant-owned row, keyed `<tenant>/<id>`.
//! Row ids are ULIDs, so key order is creation order and lists page by id.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::keyring::{Keyring, RowSeal};
use super::{scoped_key, StoreError, TenantId};

/// Largest page a list answers, whatever `limit` asks for.
pub const MAX_PAGE: usize = 200;

/// `limit` and `cursor` of a list request (docs/API.md, "Conventions").
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageRequest {
    pub limit: Option<usize>,
    /// The id of the last item of the previous page.
    pub cursor: Option<String>,
}

/// One page of a list, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

pub(super) struct Scoped<T> {
    tree: sled::Tree,
    /// Rows are sealed with their tenant's key when set.
    keyring: Option<Arc<Keyring>>,
    _row: PhantomData<fn() -> T>,
}

impl<T> Clone for Scoped<T> {
    fn clone(&self) -> Self {
        Scoped {
            tree: self.tree.clone(),
            keyring: self.keyring.clone(),
            _row: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Scoped<T> {
    pub(super) fn open(db: &sled::Db, name: &str) -> Result<Self, StoreError> {
        Ok(Scoped {
            tree: db.open_tree(name)?,
            keyring: None,
            _row: PhantomData,
        })
    }

    /// A tree whose rows are sealed with their tenant's data key.
    pub(super) fn open_sealed(
        db: &sled::Db,
        name: &str,
        keyring: Arc<Keyring>,
    ) -> Result<Self, StoreError> {
        Ok(Scoped {
            tree: db.open_tree(name)?,
            keyring: Some(keyring),
            _row: PhantomData,
        })
    }

    /// How this tree's rows of `tenant` are sealed.
    pub(super) fn seal(&self, tenant: &TenantId) -> Result<RowSeal, StoreError> {
        match &self.keyring {
            Some(k) => k.rows(tenant),
            None => Ok(RowSeal::plain()),
        }
    }

    /// How this tree's rows of `tenant` are opened.
    pub(super) fn opener(&self, tenant: &TenantId) -> Result<RowSeal, StoreError> {
        match &self.keyring {
            Some(k) => k.rows_to_read(tenant),
            None => Ok(RowSeal::plain()),
        }
    }

    pub(super) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub(super) fn get(&self, tenant: &TenantId, id: &str) -> Result<Option<T>, StoreError> {
        let key = scoped_key(tenant, id);
        match self.tree.get(&key)? {
            Some(bytes) => self.opener(tenant)?.decode(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn put(&self, tenant: &TenantId, id: &str, value: &T) -> Result<(), StoreError> {
        let key = scoped_key(tenant, id);
        let bytes = self.seal(tenant)?.encode(&key, value);
        self.tree.insert(key, bytes)?;
        Ok(())
    }

    pub(super) fn remove(&self, tenant: &TenantId, id: &str) -> Result<Option<T>, StoreError> {
        let key = scoped_key(tenant, id);
        match self.tree.remove(&key)? {
            Some(bytes) => self.opener(tenant)?.decode(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn update(
        &self,
        tenant: &TenantId,
        id: &str,
        mut change: impl FnMut(&mut T) -> bool,
    ) -> Result<Option<T>, StoreError> {
        let key = scoped_key(tenant, id);
        let seal = self.seal(tenant)?;
        loop {
            let Some(old) = self.tree.get(&key)? else {
                return Ok(None);
            };
            let mut value: T = seal.decode(&key, &old)?;
            if !change(&mut value) {
                return Ok(Some(value));
            }
            let new = seal.encode(&key, &value);
            if self
                .tree
                .compare_and_swap(&key, Some(&old), Some(new))?
                .is_ok()
            {
                return Ok(Some(value));
            }
        }
    }

    pub(super) fn for_each(
        &self,
        tenant: &TenantId,
        mut f: impl FnMut(T),
    ) -> Result<(), StoreError> {
        let seal = self.opener(tenant)?;
        for item in self.tree.scan_prefix(format!("{}/", tenant.as_str())) {
            let (key, bytes) = item?;
            f(seal.decode(&key, &bytes)?);
        }
        Ok(())
    }

    /// Newest first, starting after `page.cursor`, keeping rows `keep` accepts.
    pub(super) fn list(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Page<T>, StoreError> {
        let limit = page.limit.unwrap_or(50).clamp(1, MAX_PAGE);
        let prefix = format!("{}/", tenant.as_str());
        let upper = match &page.cursor {
            Some(cursor) => format!("{prefix}{cursor}"),
            // '/' + 1 = '0': just past every key with this prefix.
            None => format!("{}0", tenant.as_str()),
        };
        let seal = self.opener(tenant)?;
        let mut items = Vec::with_capacity(limit);
        let mut more = false;
        for item in self.tree.range(prefix.as_bytes()..upper.as_bytes()).rev() {
            let (key, bytes) = item?;
            let value: T = seal.decode(&key, &bytes)?;
            if !keep(&value) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push((key, value));
        }
        // The cursor is the id of the last row answered.
        let next_cursor = if more {
            items.last().map(|(key, _)| last_id(key))
        } else {
            None
        };
        Ok(Page {
            items: items.into_iter().map(|(_, v)| v).collect(),
            next_cursor,
        })
    }
}

fn last_id(key: &[u8]) -> String {
    let key = String::from_utf8_lossy(key);
    key.split_once('/')
        .map(|(_, id)| id.to_string())
        .unwrap_or_default()
}
