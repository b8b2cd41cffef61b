//! Sealed files: a header, then the plaintext in [`CHUNK`]-byte chunks,
//! each sealed on its own so a reader can seek.
//!
//! ```text
//! header  "MURMSEAL" | version (1) | salt (32 random bytes)
//! chunk i ChaCha20-Poly1305(file key, nonce = i (8 bytes BE) | 0 0 0 | last)
//! ```
//!
//! The file key is HKDF-SHA256 of the data key with the header's salt and
//! the caller's context (for example `file/f_123`): a fresh key per file,
//! so counter nonces never repeat, and a file copied over another one's
//! place does not open. Each chunk's nonce carries its index and whether
//! it is the last, so chunks cannot be reordered, dropped or cut off at
//! the end unnoticed. A file of `n` plaintext bytes has
//! `max(1, ceil(n / CHUNK))` chunks and takes
//! `HEADER_LEN + n + 16 × chunks` bytes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{DataKey, SealError};

pub const MAGIC: &[u8; 8] = b"MURMSEAL";
const VERSION: u8 = 1;
const SALT_LEN: usize = 32;
pub const HEADER_LEN: usize = MAGIC.len() + 1 + SALT_LEN;
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG_LEN: usize = 16;
/// Bytes a full chunk takes on disk.
pub const SEALED_CHUNK: usize = CHUNK + TAG_LEN;

/// Whether a file starting with `head` is sealed.
pub fn is_sealed_file(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

fn chunks_for(plain_len: u64) -> u64 {
    plain_len.div_ceil(CHUNK as u64).max(1)
}

/// The plaintext length of a sealed file of `sealed_len` bytes, or `None`
/// when no sealed file has that length (it was cut short).
pub fn plaintext_len(sealed_len: u64) -> Option<u64> {
    let body = sealed_len.checked_sub(HEADER_LEN as u64)?;
    let chunks = body.div_ceil(SEALED_CHUNK as u64).max(1);
    let plain = body.checked_sub(chunks * TAG_LEN as u64)?;
    (chunks_for(plain) == chunks).then_some(plain)
}

fn file_cipher(key: &DataKey, salt: &[u8], context: &[u8]) -> ChaCha20Poly1305 {
    let mut okm = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(salt), key.bytes())
        .expand_multi_info(&[b"murmur-seal file v1\0", context], okm.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    ChaCha20Poly1305::new(&Key::from(*okm))
}

fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::from(n)
}

/// Seals one file as its bytes arrive: [`push`](Self::push) plaintext,
/// then [`finish`](Self::finish); each call appends sealed bytes to `out`.
/// Holds at most one chunk of plaintext.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    header: Option<[u8; HEADER_LEN]>,
    pending: Vec<u8>,
    index: u64,
}

impl Sealer {
    pub fn new(key: &DataKey, context: &[u8]) -> Sealer {
        let salt: [u8; SALT_LEN] = rand::random();
        let mut header = [0u8; HEADER_LEN];
        header[..MAGIC.len()].copy_from_slice(MAGIC);
        header[MAGIC.len()] = VERSION;
        header[MAGIC.len() + 1..].copy_from_slice(&salt);
        Sealer {
            cipher: file_cipher(key, &salt, context),
            header: Some(header),
            pending: Vec::with_capacity(CHUNK + TAG_LEN),
            index: 0,
        }
    }

    fn emit_header(&mut self, out: &mut Vec<u8>) {
        if let Some(header) = self.header.take() {
            out.extend_from_slice(&header);
        }
    }

    /// Seals the pending chunk into `out`.
    fn seal_pending(&mut self, last: bool, out: &mut Vec<u8>) {
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(self.index, last), b"", &mut self.pending)
            .expect("a 64 KiB chunk always seals");
        out.extend_from_slice(&self.pending);
        out.extend_from_slice(&tag);
        self.pending.clear();
        self.index += 1;
    }

    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        self.emit_header(out);
        while !data.is_empty() {
            // A full chunk is sealed only once more data follows it: until
            // then it may be the last.
            if self.pending.len() == CHUNK {
                self.seal_pending(false, out);
            }
            let take = (CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
    }

    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.emit_header(out);
        self.seal_pending(true, out);
    }
}

/// A [`Write`] that seals into another: call [`finish`](Self::finish) at
/// the end, or the file lacks its last chunk and will not open.
pub struct SealWriter<W: Write> {
    sealer: Sealer,
    inner: W,
    out: Vec<u8>,
}

impl<W: Write> SealWriter<W> {
    pub fn new(inner: W, key: &DataKey, context: &[u8]) -> SealWriter<W> {
        SealWriter {
            sealer: Sealer::new(key, context),
            inner,
            out: Vec::with_capacity(SEALED_CHUNK + HEADER_LEN),
        }
    }

    /// Seals the last chunk, flushes and answers the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.sealer.finish(&mut self.out);
        self.inner.write_all(&self.out)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sealer.push(buf, &mut self.out);
        self.inner.write_all(&self.out)?;
        self.out.clear();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Opens the chunks of one sealed file, given its header and length: what
/// a reader needs, whether it reads synchronously ([`SealReader`]) or
/// streams (a download reads chunk by chunk on the async runtime).
pub struct ChunkOpener {
    cipher: ChaCha20Poly1305,
    plain_len: u64,
    chunks: u64,
}

impl ChunkOpener {
    /// From the file's first [`HEADER_LEN`] bytes and its length on disk.
    pub fn new(
        header: &[u8],
        sealed_len: u64,
        key: &DataKey,
        context: &[u8],
    ) -> Result<ChunkOpener, SealError> {
        if header.len() < HEADER_LEN || !is_sealed_file(header) {
            return Err(SealError::Malformed("not a sealed file".into()));
        }
        if header[MAGIC.len()] != VERSION {
            return Err(SealError::Malformed(format!(
                "sealed file version {} (this build reads {VERSION})",
                header[MAGIC.len()]
            )));
        }
        let plain_len = plaintext_len(sealed_len).ok_or(SealError::Integrity("file length"))?;
        Ok(ChunkOpener {
            cipher: file_cipher(key, &header[MAGIC.len() + 1..HEADER_LEN], context),
            plain_len,
            chunks: chunks_for(plain_len),
        })
    }

    /// The plaintext length.
    pub fn len(&self) -> u64 {
        self.plain_len
    }

    pub fn is_empty(&self) -> bool {
        self.plain_len == 0
    }

    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Where chunk `index` starts in the sealed file, and how many bytes it
    /// takes there.
    pub fn chunk_span(&self, index: u64) -> (u64, usize) {
        let start = HEADER_LEN as u64 + index * SEALED_CHUNK as u64;
        let plain = (self.plain_len - (index * CHUNK as u64).min(self.plain_len)).min(CHUNK as u64);
        (start, plain as usize + TAG_LEN)
    }

    /// Opens chunk `index` in place: `sealed` (exactly its span) becomes
    /// its plaintext.
    pub fn open_chunk(&self, index: u64, sealed: &mut Vec<u8>) -> Result<(), SealError> {
        if index >= self.chunks || sealed.len() != self.chunk_span(index).1 {
            return Err(SealError::Integrity("chunk length"));
        }
        let split = sealed.len() - TAG_LEN;
        let tag: [u8; TAG_LEN] = sealed[split..].try_into().expect("checked length");
        let tag = Tag::from(tag);
        sealed.truncate(split);
        self.cipher
            .decrypt_in_place_detached(&nonce(index, index + 1 == self.chunks), b"", sealed, &tag)
            .map_err(|_| SealError::Integrity("chunk"))
    }
}

/// Reads a sealed file as its plaintext, with seeking; holds one chunk.
pub struct SealReader<R: Read + Seek> {
    inner: R,
    opener: ChunkOpener,
    pos: u64,
    /// The chunk in `buf`, if any.
    loaded: Option<u64>,
    buf: Vec<u8>,
}

impl<R: Read + Seek> SealReader<R> {
    pub fn new(mut inner: R, key: &DataKey, context: &[u8]) -> io::Result<SealReader<R>> {
        let sealed_len = inner.seek(SeekFrom::End(0))?;
        inner.seek(SeekFrom::Start(0))?;
        let mut header = [0u8; HEADER_LEN];
        inner.read_exact(&mut header).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                SealError::Malformed("not a sealed file".into()).into()
            } else {
                e
            }
        })?;
        let opener = ChunkOpener::new(&header, sealed_len, key, context)?;
        Ok(SealReader {
            inner,
            opener,
            pos: 0,
            loaded: None,
            buf: Vec::with_capacity(SEALED_CHUNK),
        })
    }

    /// The plaintext length.
    pub fn len(&self) -> u64 {
        self.opener.len()
    }

    pub fn is_empty(&self) -> bool {
        self.opener.is_empty()
    }

    fn load(&mut self, index: u64) -> io::Result<()> {
        if self.loaded == Some(index) {
            return Ok(());
        }
        self.loaded = None;
        let (start, span) = self.opener.chunk_span(index);
        self.inner.seek(SeekFrom::Start(start))?;
        self.buf.resize(span, 0);
        self.inner.read_exact(&mut self.buf)?;
        self.opener.open_chunk(index, &mut self.buf)?;
        self.loaded = Some(index);
        Ok(())
    }
}

impl<R: Read + Seek> Read for SealReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len() || out.is_empty() {
            return Ok(0);
        }
        let index = self.pos / CHUNK as u64;
        self.load(index)?;
        let at = (self.pos - index * CHUNK as u64) as usize;
        let n = (self.buf.len() - at).min(out.len());
        out[..n].copy_from_slice(&self.buf[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for SealReader<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// A stored file opened for reading: sealed, or plain (written before the
/// server sealed files).
pub enum OpenedFile {
    Plain { file: File, len: u64 },
    Sealed(SealReader<File>),
}

impl OpenedFile {
    /// The plaintext length.
    pub fn len(&self) -> u64 {
        match self {
            OpenedFile::Plain { len, .. } => *len,
            OpenedFile::Sealed(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self, OpenedFile::Sealed(_))
    }
}

/// Opens `path` for reading its plaintext: a sealed file with `key` and
/// `context`, any other file as it is.
pub fn open_file(path: &Path, key: &DataKey, context: &[u8]) -> io::Result<OpenedFile> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if starts_sealed(&mut file)? {
        Ok(OpenedFile::Sealed(SealReader::new(file, key, context)?))
    } else {
        Ok(OpenedFile::Plain { file, len })
    }
}

/// Whether the stream from its start is a sealed file; leaves it at its
/// start again.
pub fn starts_sealed(file: &mut (impl Read + Seek)) -> io::Result<bool> {
    file.seek(SeekFrom::Start(0))?;
    let mut head = [0u8; MAGIC.len()];
    let n = read_up_to(file, &mut head)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(is_sealed_file(&head[..n]))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl Read for OpenedFile {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            OpenedFile::Plain { file, .. } => file.read(out),
            OpenedFile::Sealed(r) => r.read(out),
        }
    }
}

impl Seek for OpenedFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match self {
            OpenedFile::Plain { file, .. } => file.seek(to),
            OpenedFile::Sealed(r) => r.seek(to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn seal(key: &DataKey, context: &[u8], plain: &[u8], pieces: usize) -> Vec<u8> {
        let mut w = SealWriter::new(Vec::new(), key, context);
        for part in plain.chunks(pieces.max(1)) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn every_length_round_trips_and_has_the_stated_size() {
        let key = DataKey::generate();
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
            let plain = sample(n);
            let sealed = seal(&key, b"file/f_1", &plain, 7_000);
            let chunks = n.div_ceil(CHUNK).max(1);
            assert_eq!(sealed.len(), HEADER_LEN + n + 16 * chunks, "length {n}");
            assert_eq!(plaintext_len(sealed.len() as u64), Some(n as u64));
            let mut r = SealReader::new(Cursor::new(&sealed), &key, b"file/f_1").unwrap();
            assert_eq!(r.len(), n as u64);
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            assert_eq!(back, plain, "length {n}");
        }
    }

    #[test]
    fn seeking_reads_the_right_bytes() {
        let key = DataKey::generate();
        let plain = sample(5 * CHUNK + 123);
        let sealed = seal(&key, b"c", &plain, CHUNK);
        let mut r = SealReader::new(Cursor::new(&sealed), &key, b"c").unwrap();
        for at in [
            CHUNK as u64 * 4 + 5,
            3,
            CHUNK as u64 - 2,
            plain.len() as u64 - 4,
        ] {
            r.seek(SeekFrom::Start(at)).unwrap();
            let mut buf = [0u8; 9];
            let n = read_up_to(&mut r, &mut buf).unwrap();
            let want = &plain[at as usize..(at as usize + 9).min(plain.len())];
            assert_eq!(&buf[..n], want, "at {at}");
        }
        assert_eq!(r.seek(SeekFrom::End(-1)).unwrap(), plain.len() as u64 - 1);
        assert!(r
            .seek(SeekFrom::Current(-(plain.len() as i64) - 5))
            .is_err());
    }

    #[test]
    fn tampering_is_found_not_decoded() {
        let key = DataKey::generate();
        let plain = sample(3 * CHUNK + 10);
        let sealed = seal(&key, b"file/f_1", &plain, 1_000);
        let read_all = |bytes: &[u8], key: &DataKey, context: &[u8]| -> io::Result<Vec<u8>> {
            let mut r = SealReader::new(Cursor::new(bytes), key, context)?;
            let mut out = Vec::new();
            r.read_to_end(&mut out)?;
            Ok(out)
        };
        assert!(read_all(&sealed, &key, b"file/f_1").is_ok());
        // Another file's place, another key.
        assert!(read_all(&sealed, &key, b"file/f_2").is_err());
        assert!(read_all(&sealed, &DataKey::generate(), b"file/f_1").is_err());
        // A flipped bit in the second chunk.
        let mut flipped = sealed.clone();
        flipped[HEADER_LEN + SEALED_CHUNK + 100] ^= 0x40;
        assert!(read_all(&flipped, &key, b"file/f_1").is_err());
        // Cut after a whole chunk: the new last chunk was not sealed last.
        let cut = &sealed[..HEADER_LEN + 2 * SEALED_CHUNK];
        assert!(read_all(cut, &key, b"file/f_1").is_err());
        // Cut mid-chunk, or inside the header.
        assert!(read_all(&sealed[..sealed.len() - 3], &key, b"file/f_1").is_err());
        assert!(read_all(&sealed[..20], &key, b"file/f_1").is_err());
        // Two chunks swapped.
        let mut swapped = sealed.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + SEALED_CHUNK);
        let first = sealed[a..b].to_vec();
        swapped[a..b].copy_from_slice(&sealed[b..b + SEALED_CHUNK]);
        swapped[b..b + SEALED_CHUNK].copy_from_slice(&first);
        assert!(read_all(&swapped, &key, b"file/f_1").is_err());
        // The plaintext does not show through.
        let marker = b"a distinctive phrase in the audio";
        let sealed = seal(&key, b"x", marker, 5);
        assert!(!sealed.windows(marker.len()).any(|w| w == marker));
    }

    #[test]
    fn open_file_reads_sealed_and_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::generate();
        let plain = sample(CHUNK + 9);
        std::fs::write(dir.path().join("s"), seal(&key, b"ctx", &plain, 333)).unwrap();
        std::fs::write(dir.path().join("p"), &plain).unwrap();
        for (name, sealed) in [("s", true), ("p", false)] {
            let mut f = open_file(&dir.path().join(name), &key, b"ctx").unwrap();
            assert_eq!(f.is_sealed(), sealed);
            assert_eq!(f.len(), plain.len() as u64);
            let mut back = Vec::new();
            f.read_to_end(&mut back).unwrap();
            assert_eq!(back, plain);
        }
    }
}
