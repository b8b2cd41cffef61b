//! What a decode reads: a plain file, or a file whose bytes another layer
//! opens (Murmur's stored uploads are encrypted, and the service hands the
//! decoder an [`Opener`] that decrypts as it reads). This crate never learns
//! how; it only asks for a readable, seekable stream and its length.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use symphonia::core::io::MediaSource;

/// A stream a decoder can read and seek.
pub trait ReadSeek: Read + Seek + Send + Sync {}
impl<T: Read + Seek + Send + Sync> ReadSeek for T {}

/// Opens an input's bytes: a fresh stream from the start each call, and the
/// stream's length in bytes.
pub trait Opener: Send + Sync {
    fn open(&self) -> io::Result<(Box<dyn ReadSeek>, u64)>;
}

/// An input to decode: `path` names it (in errors, and its extension hints
/// the format); `opener`, when set, reads its bytes instead of the file
/// system.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    path: &'a Path,
    opener: Option<&'a dyn Opener>,
}

impl<'a> Input<'a> {
    /// The plain file at `path`.
    pub fn file(path: &'a Path) -> Input<'a> {
        Input { path, opener: None }
    }

    /// The bytes `opener` gives, named `path`.
    pub fn opened_by(path: &'a Path, opener: &'a dyn Opener) -> Input<'a> {
        Input {
            path,
            opener: Some(opener),
        }
    }

    pub fn path(&self) -> &'a Path {
        self.path
    }

    /// A stream from the start, and its length.
    pub(super) fn open(&self) -> io::Result<(Box<dyn ReadSeek>, u64)> {
        match self.opener {
            Some(opener) => opener.open(),
            None => {
                let file = std::fs::File::open(self.path)?;
                let len = file.metadata()?.len();
                Ok((Box::new(file), len))
            }
        }
    }

    /// The stream as symphonia reads it.
    pub(super) fn media_source(&self) -> io::Result<Box<dyn MediaSource>> {
        let (inner, len) = self.open()?;
        Ok(Box::new(Source { inner, len }))
    }
}

impl<'a> From<&'a Path> for Input<'a> {
    fn from(path: &'a Path) -> Input<'a> {
        Input::file(path)
    }
}

impl<'a> From<&'a PathBuf> for Input<'a> {
    fn from(path: &'a PathBuf) -> Input<'a> {
        Input::file(path)
    }
}

struct Source {
    inner: Box<dyn ReadSeek>,
    len: u64,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Seek for Source {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

impl MediaSource for Source {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{decode_file, measure_duration, write_wav_16bit};
    use std::io::Cursor;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Serves a file's bytes from memory, counting how often it is opened.
    struct InMemory {
        bytes: Vec<u8>,
        opened: AtomicUsize,
    }

    impl Opener for InMemory {
        fn open(&self) -> io::Result<(Box<dyn ReadSeek>, u64)> {
            self.opened.fetch_add(1, Ordering::Relaxed);
            let len = self.bytes.len() as u64;
            Ok((Box::new(Cursor::new(self.bytes.clone())), len))
        }
    }

    #[test]
    fn an_opener_is_read_like_the_file_it_stands_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.wav");
        let tone: Vec<f32> = (0..8_000).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
        write_wav_16bit(&path, &tone, 16_000, 1).unwrap();
        let memory = InMemory {
            bytes: std::fs::read(&path).unwrap(),
            opened: AtomicUsize::new(0),
        };
        // The name does not exist on disk: only the opener is read.
        let name = dir.path().join("elsewhere.wav");
        let from_opener = decode_file(Input::opened_by(&name, &memory)).unwrap();
        let from_file = decode_file(&path).unwrap();
        assert_eq!(from_opener.samples, from_file.samples);
        assert!(memory.opened.load(Ordering::Relaxed) >= 1);
        let measured = measure_duration(Input::opened_by(&name, &memory), None, &|| false).unwrap();
        assert!((measured.duration_s - 0.5).abs() < 1e-9);
        // Errors name the input by its name.
        let garbage = InMemory {
            bytes: b"not audio at all, just text".repeat(10),
            opened: AtomicUsize::new(0),
        };
        let err = decode_file(Input::opened_by(&name, &garbage)).unwrap_err();
        assert!(err.to_string().contains("elsewhere.wav"), "{err}");
    }
}
