//! `model.safetensors` read tensor by tensor, instead of whole.
//!
//! Loading used to read the whole file into memory, hash it, and copy
//! every tensor out of it, including the decoder's linear weights that an
//! `int8` load then threw away for the cached quantized ones: for tiny.en
//! the kernel's zeroing and copying of those buffers was a quarter of a
//! short clip's CPU time. Here only the header is parsed up front; a tensor
//! is read (positioned reads, one reused buffer) when it is asked for, and
//! the file is hashed only when the int8 cache's record does not already
//! know it ([`WeightsFile::stamp`]).
//!
//! The header is checked as the safetensors crate checks it (offsets in
//! order, sizes matching shapes) and against the file's length, so a
//! truncated or padded file is refused before any tensor is read.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Metadata, TensorView};
use sha2::{Digest, Sha256};

use super::WhisperError;

/// Longest header read (the safetensors crate's own bound); Whisper's are
/// tens of KB.
const MAX_HEADER: u64 = 100_000_000;

/// An open safetensors file and its parsed header.
pub(super) struct WeightsFile {
    path: PathBuf,
    file: File,
    metadata: Metadata,
    /// Where the tensors' bytes begin (after the length and the header).
    data_start: u64,
    len: u64,
    stamp: Option<String>,
}

impl WeightsFile {
    pub(super) fn open(path: &Path) -> Result<Self, WhisperError> {
        let bad = |detail: String| WhisperError::BadModelFile {
            path: path.to_path_buf(),
            detail,
        };
        let mut file = File::open(path).map_err(|e| bad(e.to_string()))?;
        let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
        let len = meta.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|e| bad(format!("no safetensors header: {e}")))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER || n + 8 > len {
            return Err(bad(format!(
                "safetensors header of {n} bytes in a file of {len}"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| bad(e.to_string()))?;
        // Deserializing validates the offsets against the shapes.
        let metadata: Metadata = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("bad safetensors header: {e}")))?;
        let data_start = 8 + n;
        if data_start + metadata.data_len() as u64 != len {
            return Err(bad(format!(
                "the header describes {} bytes of tensors, the file holds {}",
                metadata.data_len(),
                len - data_start
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            metadata,
            data_start,
            len,
            stamp: stamp(&meta),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The file's identity as the file system records it (size, modified
    /// and changed times, device and inode). Rewriting the file in any way,
    /// even keeping its size and modification time, changes the change
    /// time, which no tool sets back; renaming another file into place
    /// changes the inode. `None` where the platform does not tell (then
    /// the file is hashed at every int8 load).
    pub(super) fn stamp(&self) -> Option<&str> {
        self.stamp.as_deref()
    }

    /// sha256 of the whole file, read in blocks.
    pub(super) fn sha256(&self) -> Result<String, WhisperError> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        while offset < self.len {
            let n = ((self.len - offset) as usize).min(buf.len());
            self.read_at(&mut buf[..n], offset)?;
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// The whole file's bytes (to quantize it).
    pub(super) fn bytes(&self) -> Result<Vec<u8>, WhisperError> {
        let mut buf = vec![0u8; self.len as usize];
        self.read_at(&mut buf, 0)?;
        Ok(buf)
    }

    /// Every tensor `keep` accepts, converted to `dtype`, on `device`.
    pub(super) fn tensors(
        &self,
        keep: impl Fn(&str) -> bool,
        dtype: DType,
        device: &Device,
    ) -> Result<std::collections::HashMap<String, Tensor>, WhisperError> {
        let bad = |detail: String| WhisperError::BadModelFile {
            path: self.path.clone(),
            detail,
        };
        let mut buf = Vec::new();
        let mut out = std::collections::HashMap::new();
        for name in self.metadata.offset_keys() {
            if !keep(&name) {
                continue;
            }
            let info = self
                .metadata
                .info(&name)
                .ok_or_else(|| bad(format!("tensor {name} vanished from the header")))?;
            let (start, end) = info.data_offsets;
            buf.resize(end - start, 0);
            self.read_at(&mut buf, self.data_start + start as u64)?;
            let view = TensorView::new(info.dtype, info.shape.clone(), &buf)
                .map_err(|e| bad(format!("tensor {name}: {e}")))?;
            let tensor = view
                .load(device)
                .and_then(|t| t.to_dtype(dtype))
                .map_err(|e| bad(format!("tensor {name}: {e}")))?;
            out.insert(name, tensor);
        }
        Ok(out)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), WhisperError> {
        read_exact_at(&self.file, buf, offset).map_err(|e| WhisperError::BadModelFile {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

#[cfg(unix)]
fn stamp(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    Some(format!(
        "size {} mtime {}.{:09} ctime {}.{:09} dev {} ino {}",
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
        meta.dev(),
        meta.ino()
    ))
}

#[cfg(not(unix))]
fn stamp(_: &std::fs::Metadata) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write(dir: &Path) -> (PathBuf, HashMap<String, Tensor>) {
        let dev = Device::Cpu;
        let tensors = HashMap::from([
            (
                "a.weight".to_string(),
                Tensor::randn(0f32, 1.0, (8, 4), &dev)
                    .unwrap()
                    .to_dtype(DType::F16)
                    .unwrap(),
            ),
            (
                "b.bias".to_string(),
                Tensor::randn(0f32, 1.0, 4, &dev).unwrap(),
            ),
        ]);
        let path = dir.join("m.safetensors");
        candle_core::safetensors::save(&tensors, &path).unwrap();
        (path, tensors)
    }

    #[test]
    fn reads_the_tensors_it_is_asked_for_as_the_whole_file_would() {
        let dir = tempfile::tempdir().unwrap();
        let (path, saved) = write(dir.path());
        let file = WeightsFile::open(&path).unwrap();
        let whole = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let got = file.tensors(|_| true, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(got.len(), saved.len());
        for (name, t) in &whole {
            let want: Vec<f32> = t
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let have: Vec<f32> = got[name].flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(want, have, "{name}");
            assert_eq!(got[name].dims(), t.dims());
        }
        let only_b = file
            .tensors(|n| n == "b.bias", DType::F32, &Device::Cpu)
            .unwrap();
        assert_eq!(only_b.keys().collect::<Vec<_>>(), ["b.bias"]);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(file.bytes().unwrap(), bytes);
        assert_eq!(file.sha256().unwrap(), hex::encode(Sha256::digest(&bytes)));
    }

    #[test]
    fn truncated_padded_or_garbled_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let cases: [(&str, Vec<u8>); 5] = [
            ("truncated", bytes[..bytes.len() - 3].to_vec()),
            ("padded", [bytes.clone(), vec![0; 5]].concat()),
            ("empty", Vec::new()),
            (
                "huge header length",
                [u64::MAX.to_le_bytes().to_vec(), bytes[8..].to_vec()].concat(),
            ),
            ("not json", {
                let mut b = bytes.clone();
                b[8] = b'!';
                b
            }),
        ];
        for (what, content) in cases {
            std::fs::write(&path, &content).unwrap();
            match WeightsFile::open(&path) {
                Err(WhisperError::BadModelFile { .. }) => {}
                Err(e) => panic!("{what}: unexpected error {e}"),
                Ok(_) => panic!("{what}: accepted"),
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_stamp_changes_when_the_file_is_rewritten_even_with_the_same_times() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write(dir.path());
        let before = WeightsFile::open(&path)
            .unwrap()
            .stamp()
            .unwrap()
            .to_string();
        assert_eq!(
            WeightsFile::open(&path).unwrap().stamp().unwrap(),
            before,
            "an untouched file keeps its stamp"
        );
        // Same size, same modification time, other bytes.
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, &bytes).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            modified
        );
        assert_ne!(WeightsFile::open(&path).unwrap().stamp().unwrap(), before);
    }
}
