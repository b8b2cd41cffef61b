//! Uploaded files (their rows, blobs and the storage quota) and saved
//! workflows.

use super::*;

impl Store {
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

    pub(super) fn sweep_partial_uploads(&self) -> Result<(), StoreError> {
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
}
