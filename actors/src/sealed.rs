//! Stored files as the engine reads them: sealed with the tenant's data key
//! (encryption at rest, see docs/ARCHITECTURE.md), and the contexts that
//! bind each sealed file to its place, so the service and the engine agree
//! on them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use murmur_models::audio::{Input, Opener, ReadSeek};
use murmur_seal::DataKey;

/// How a job's stored files are sealed: the tenant's data key and the
/// context its upload was sealed with.
#[derive(Clone, Debug)]
pub struct Sealing {
    pub key: Arc<DataKey>,
    pub audio_context: String,
}

/// The context an upload is sealed with.
pub fn upload_context(file_id: &str) -> String {
    format!("file/{file_id}")
}

/// The context a job's artifact (a stem) is sealed with.
pub fn artifact_context(job_id: &str, name: &str) -> String {
    format!("artifact/{job_id}/{name}")
}

/// A stored file that may be sealed: opened through the seal when it is,
/// as it is otherwise (files written before encryption at rest). Cloning
/// is cheap (the key is shared).
#[derive(Clone)]
pub struct StoredFile {
    path: PathBuf,
    key: Option<Arc<DataKey>>,
    context: String,
}

impl StoredFile {
    pub fn new(path: &Path, key: Option<Arc<DataKey>>, context: String) -> StoredFile {
        StoredFile {
            path: path.to_path_buf(),
            key,
            context,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What a decoder on another thread reads the file through: `None`
    /// for a plain file (read from the file system).
    pub fn opener(&self) -> Option<Arc<dyn Opener>> {
        self.key
            .as_ref()
            .map(|_| Arc::new(self.clone()) as Arc<dyn Opener>)
    }

    /// The file's plain bytes as a reader, with their length: through the
    /// seal when it is sealed (a remote worker receives these).
    pub fn open(&self) -> std::io::Result<(Box<dyn ReadSeek>, u64)> {
        match self.key {
            Some(_) => Opener::open(self),
            None => {
                let file = std::fs::File::open(&self.path)?;
                let len = file.metadata()?.len();
                Ok((Box::new(file), len))
            }
        }
    }

    /// The file as the decoder reads it.
    pub fn input(&self) -> Input<'_> {
        match self.key {
            Some(_) => Input::opened_by(&self.path, self),
            None => Input::file(&self.path),
        }
    }
}

impl Opener for StoredFile {
    fn open(&self) -> std::io::Result<(Box<dyn ReadSeek>, u64)> {
        let key = self
            .key
            .as_deref()
            .expect("`input` opens through the seal only with a key");
        let file = murmur_seal::open_file(&self.path, key, self.context.as_bytes())?;
        let len = file.len();
        Ok((Box::new(file), len))
    }
}
