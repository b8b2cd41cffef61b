//! Stored files as the engine reads them: sealed with the tenant's data key
//! (encryption at rest, see docs/ARCHITECTURE.md), and the contexts that
//! bind each sealed file to its place, so the service and the engine agree
//! on them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use murmur_models::audio::{Input, Opener, ReadSeek};
use murmur_seal::{DataKey, SealWriter};

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

/// Where a job's artifact `name` (a stem: `vocals`, `accompaniment`) is
/// kept in its artifacts folder.
pub fn artifact_path(folder: &Path, name: &str) -> PathBuf {
    folder.join(format!("{name}.wav"))
}

/// Where an artifact is written until it is whole (then renamed to
/// [`artifact_path`]), so a crash never leaves half of one.
pub fn artifact_part_path(folder: &Path, name: &str) -> PathBuf {
    folder.join(format!(".{name}.part"))
}

/// Whether `name` can name an artifact: 1 to 64 lowercase letters, digits,
/// `_` and `-`, so never a path.
pub fn is_artifact_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The names of the whole artifacts in `folder` (none when it does not
/// exist), sorted.
pub fn artifact_names(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let name = file.strip_suffix(".wav")?;
            is_artifact_name(name).then(|| name.to_string())
        })
        .collect();
    names.sort();
    names
}

/// Writes a job's artifact front to back, sealed with the tenant's key when
/// there is one (plain otherwise: the CLI), into its `.part` file;
/// [`commit`](Self::commit) makes it whole under [`artifact_path`]. The
/// one place an artifact's bytes meet the disk: the engine writes stems
/// with it, and the control node what it fetches of a worker node's.
pub struct ArtifactWriter {
    folder: PathBuf,
    name: String,
    out: ArtifactOut,
}

enum ArtifactOut {
    Plain(BufWriter<File>),
    Sealed(SealWriter<BufWriter<File>>),
}

impl ArtifactWriter {
    /// Starts artifact `name` of job `job_id` in `folder` (which exists).
    pub fn create(
        folder: &Path,
        name: &str,
        key: Option<&DataKey>,
        job_id: &str,
    ) -> std::io::Result<ArtifactWriter> {
        let file =
            BufWriter::with_capacity(1 << 20, File::create(artifact_part_path(folder, name))?);
        let out = match key {
            Some(key) => ArtifactOut::Sealed(SealWriter::new(
                file,
                key,
                artifact_context(job_id, name).as_bytes(),
            )),
            None => ArtifactOut::Plain(file),
        };
        Ok(ArtifactWriter {
            folder: folder.to_path_buf(),
            name: name.to_string(),
            out,
        })
    }

    /// Seals the last chunk, flushes the file to disk and renames it to
    /// [`artifact_path`].
    pub fn commit(self) -> std::io::Result<()> {
        let file = match self.out {
            ArtifactOut::Plain(w) => w,
            ArtifactOut::Sealed(w) => w.finish()?,
        };
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(
            artifact_part_path(&self.folder, &self.name),
            artifact_path(&self.folder, &self.name),
        )
    }
}

impl Write for ArtifactWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.out {
            ArtifactOut::Plain(w) => w.write(buf),
            ArtifactOut::Sealed(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            ArtifactOut::Plain(w) => w.flush(),
            ArtifactOut::Sealed(w) => w.flush(),
        }
    }
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
