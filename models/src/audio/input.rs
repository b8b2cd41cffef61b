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
