//! Sealing what older builds wrote in clear: uploads and stems written
//! before encryption at rest are sealed in place, in the background after
//! start (`server::serve`), so a data directory upgraded from such a build
//! stops holding tenants' audio in clear. Rows need no sweep: they are
//! sealed at their next write.
//!
//! Each file is written sealed beside itself (a dot-file ending `.part`,
//! which the start-up sweep removes if a crash leaves one) and renamed over
//! the original: a reader holding the old file keeps reading it, later
//! ones open the sealed one, and a crash leaves one whole version.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;

use murmur_actors::sealed::{artifact_context, upload_context};
use murmur_seal::{starts_sealed, SealWriter};

use super::{FileRecord, Store, StoreError, TenantId};

impl Store {
    /// Seals every upload and stem still in clear; answers how many were
    /// sealed. Stops early (answering what it did) once `stop` says so.
    pub fn seal_clear_files(&self, stop: &dyn Fn() -> bool) -> Result<usize, StoreError> {
        let mut sealed = 0;
        for item in self.files.tree().iter() {
            if stop() {
                return Ok(sealed);
            }
            let (key, bytes) = item?;
            let file: FileRecord = self.keyring.rows_for_key(&key)?.decode(&key, &bytes)?;
            let tenant = TenantId::trusted(file.tenant_id.clone());
            let path = self.blob_path(&file);
            let part_name = format!(".{}.part", file.id);
            if self.seal_in_place(&tenant, &path, &part_name, &upload_context(&file.id))? {
                sealed += 1;
            }
        }
        let artifacts = self.data_dir.join("artifacts");
        for tenant_dir in read_dirs(&artifacts) {
            let tenant = TenantId::trusted(tenant_dir.file_name().to_string_lossy().into_owned());
            for job_dir in read_dirs(&tenant_dir.path()) {
                let job_id = job_dir.file_name().to_string_lossy().into_owned();
                for entry in read_dirs(&job_dir.path()) {
                    if stop() {
                        return Ok(sealed);
                    }
                    let file_name = entry.file_name().to_string_lossy().into_owned();
                    let Some(stem) = file_name.strip_suffix(".wav") else {
                        continue;
                    };
                    if stem.starts_with('.') {
                        continue;
                    }
                    let context = artifact_context(&job_id, stem);
                    let part_name = format!(".{stem}.part");
                    if self.seal_in_place(&tenant, &entry.path(), &part_name, &context)? {
                        sealed += 1;
                    }
                }
            }
        }
        Ok(sealed)
    }

    /// Seals the file at `path` with `tenant`'s key and `context` unless it
    /// is sealed already (or gone); answers whether it sealed it.
    fn seal_in_place(
        &self,
        tenant: &TenantId,
        path: &Path,
        part_name: &str,
        context: &str,
    ) -> Result<bool, StoreError> {
        let mut clear = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if starts_sealed(&mut clear)? {
            return Ok(false);
        }
        let key = self.data_key(tenant)?;
        let part = path.with_file_name(part_name);
        let mut out = SealWriter::new(
            BufWriter::new(File::create(&part)?),
            &key,
            context.as_bytes(),
        );
        let written = io::copy(&mut clear, &mut out).and_then(|_| out.finish());
        let file = match written.and_then(|w| w.into_inner().map_err(|e| e.into_error())) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(e.into());
            }
        };
        file.sync_all()?;
        std::fs::rename(&part, path)?;
        tracing::info!(path = %path.display(), "sealed a file written in clear by an older build");
        Ok(true)
    }
}

fn read_dirs(dir: &Path) -> Vec<std::fs::DirEntry> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().collect())
        .unwrap_or_default()
}
