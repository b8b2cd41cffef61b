//! A reader for TensorFlow checkpoints ("tensor bundles"), without TensorFlow.
//!
//! A bundle with prefix `model` is `model.index` plus data shards
//! `model.data-NNNNN-of-MMMMM`. The index is a LevelDB table (sorted string
//! table): data blocks of prefix-compressed key/value entries, an index block
//! pointing at them, and a fixed 48-byte footer ending in a magic number.
//! Every block is followed by a one-byte compression type and a masked
//! CRC-32C. The empty key maps to a `BundleHeaderProto` (shard count,
//! endianness); every other key is a tensor name mapping to a
//! `BundleEntryProto` (dtype, shape, shard, offset, size, CRC-32C of the
//! bytes), which we decode by hand from the protobuf wire format.
//!
//! Only what Spleeter's checkpoint needs is supported: uncompressed blocks,
//! little-endian, unsliced tensors; anything else is refused with a message
//! that says so. Every length and offset read from the file is checked, so a
//! truncated or damaged file gives a [`BundleError`], never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// LevelDB table magic, the footer's last 8 bytes (little-endian).
const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
/// Two block handles padded to 40 bytes, then the magic.
const FOOTER_LEN: usize = 48;
/// Compression type byte plus masked CRC-32C after every block.
const BLOCK_TRAILER_LEN: usize = 5;
/// LevelDB's CRC mask delta (CRCs of data that embeds CRCs are rotated).
const CRC_MASK_DELTA: u32 = 0xa282_ead8;
/// Fuzz builds (`fuzz/`) skip the checksum comparisons so that mutated
/// inputs reach the parsing behind them; every other build checks them.
const FUZZING: bool = cfg!(fuzzing);

/// Why a bundle cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is truncated ({detail}); the checkpoint was cut off, install the model again")]
    Truncated { path: PathBuf, detail: String },
    #[error("{path} is corrupt ({detail}); install the model again")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: {detail} is not supported by this reader")]
    Unsupported { path: PathBuf, detail: String },
    #[error("the checkpoint has no tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has dtype {dtype:?}, expected float32")]
    NotFloat32 { name: String, dtype: DataType },
}

/// TensorFlow's `DataType` enum (only the values worth naming here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Float32,
    Float64,
    Int32,
    Int64,
    String,
    Other(u64),
}

impl DataType {
    fn from_proto(v: u64) -> Self {
        match v {
            1 => DataType::Float32,
            2 => DataType::Float64,
            3 => DataType::Int32,
            7 => DataType::String,
            9 => DataType::Int64,
            n => DataType::Other(n),
        }
    }

    /// Bytes per element for fixed-size types.
    fn element_size(self) -> Option<u64> {
        match self {
            DataType::Float32 | DataType::Int32 => Some(4),
            DataType::Float64 | DataType::Int64 => Some(8),
            _ => None,
        }
    }
}

/// Where one tensor's bytes are (a decoded `BundleEntryProto`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEntry {
    pub dtype: DataType,
    pub shape: Vec<usize>,
    pub shard_id: u32,
    pub offset: u64,
    pub size: u64,
    /// CRC-32C of the tensor's bytes, as stored (masked).
    pub crc32c: u32,
}

impl BundleEntry {
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An opened checkpoint: the decoded index, and the shard paths to read
/// tensors from on demand. Cheap to keep; reads open the shard each time.
#[derive(Debug, Clone)]
pub struct TensorBundle {
    index_path: PathBuf,
    shards: Vec<PathBuf>,
    entries: BTreeMap<String, BundleEntry>,
}

impl TensorBundle {
    /// Opens the bundle `prefix` (e.g. `dir/model` for `dir/model.index`):
    /// reads and checks the whole index, and checks that every tensor lies
    /// inside its data shard.
    pub fn open(prefix: &Path) -> Result<Self, BundleError> {
        let index_path = with_suffix(prefix, ".index");
        let bytes = std::fs::read(&index_path).map_err(|source| BundleError::Io {
            path: index_path.clone(),
            source,
        })?;
        let table = read_table(&index_path, &bytes)?;
        let corrupt = |detail: String| BundleError::Corrupt {
            path: index_path.clone(),
            detail,
        };

        let mut num_shards = None;
        let mut entries = BTreeMap::new();
        for (key, value) in table {
            if key.is_empty() {
                num_shards = Some(parse_header(&index_path, &value)?);
                continue;
            }
            let name =
                String::from_utf8(key).map_err(|_| corrupt("a tensor name is not UTF-8".into()))?;
            let entry = parse_entry(&index_path, &name, &value)?;
            entries.insert(name, entry);
        }
        let num_shards =
            num_shards.ok_or_else(|| corrupt("the bundle header (empty key) is missing".into()))?;
        let shards: Vec<PathBuf> = (0..num_shards)
            .map(|i| with_suffix(prefix, &format!(".data-{i:05}-of-{num_shards:05}")))
            .collect();

        // Catch a truncated shard up front rather than on the first read.
        let mut shard_len = Vec::with_capacity(shards.len());
        for path in &shards {
            let meta = std::fs::metadata(path).map_err(|source| BundleError::Io {
                path: path.clone(),
                source,
            })?;
            shard_len.push(meta.len());
        }
        for (name, e) in &entries {
            let shard = e.shard_id as usize;
            let len = *shard_len.get(shard).ok_or_else(|| {
                corrupt(format!(
                    "tensor `{name}` is in shard {shard} of {num_shards}"
                ))
            })?;
            let end = e.offset.checked_add(e.size);
            if end.is_none_or(|end| end > len) {
                return Err(BundleError::Truncated {
                    path: shards[shard].clone(),
                    detail: format!(
                        "tensor `{name}` needs bytes {}..{} but the file has {len}",
                        e.offset,
                        e.offset.saturating_add(e.size)
                    ),
                });
            }
        }
        Ok(TensorBundle {
            index_path,
            shards,
            entries,
        })
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn entry(&self, name: &str) -> Option<&BundleEntry> {
        self.entries.get(name)
    }

    /// Reads a float32 tensor (row-major, in the shape of its entry) and
    /// checks its CRC-32C.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, BundleError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| BundleError::MissingTensor(name.to_string()))?;
        if entry.dtype != DataType::Float32 {
            return Err(BundleError::NotFloat32 {
                name: name.to_string(),
                dtype: entry.dtype,
            });
        }
        let bytes = self.read_bytes(name, entry)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn read_bytes(&self, name: &str, entry: &BundleEntry) -> Result<Vec<u8>, BundleError> {
        let path = &self.shards[entry.shard_id as usize];
        let io = |source| BundleError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        file.seek(SeekFrom::Start(entry.offset)).map_err(io)?;
        let len = usize::try_from(entry.size).map_err(|_| BundleError::Corrupt {
            path: self.index_path.clone(),
            detail: format!("tensor `{name}` is {} bytes", entry.size),
        })?;
        let mut bytes = vec![0u8; len];
        file.read_exact(&mut bytes).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                BundleError::Truncated {
                    path: path.clone(),
                    detail: format!("tensor `{name}` runs past the end of the file"),
                }
            } else {
                io(e)
            }
        })?;
        let actual = crc32c(&bytes);
        if mask_crc(actual) != entry.crc32c && !FUZZING {
            return Err(BundleError::Corrupt {
                path: path.clone(),
                detail: format!("checksum mismatch in tensor `{name}`"),
            });
        }
        Ok(bytes)
    }
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Reads every key/value pair of a LevelDB table, in key order.
fn read_table(path: &Path, file: &[u8]) -> Result<Vec<KeyValue>, BundleError> {
    let truncated = |detail: String| BundleError::Truncated {
        path: path.to_path_buf(),
        detail,
    };
    if file.len() < FOOTER_LEN {
        return Err(truncated(format!(
            "{} bytes, shorter than a table footer",
            file.len()
        )));
    }
    let footer = &file[file.len() - FOOTER_LEN..];
    let magic = u64::from_le_bytes(footer[40..48].try_into().expect("8 bytes"));
    if magic != TABLE_MAGIC {
        // A cut-off file ends in the middle of a block: call it truncated
        // when the tail does not look like a footer at all.
        return Err(BundleError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "no table magic at the end (found {magic:#018x}); not a TensorFlow \
                 checkpoint index, or cut off"
            ),
        });
    }
    let mut cursor = Cursor::new(path, &footer[..40]);
    let metaindex = cursor.block_handle()?;
    let index = cursor.block_handle()?;
    let body_len = (file.len() - FOOTER_LEN) as u64;
    // Bundles keep no meta blocks, but the (empty) metaindex block is
    // checked like the rest so that no damaged byte goes unnoticed.
    read_block(path, file, metaindex, body_len)?;

    let index_block = read_block(path, file, index, body_len)?;
    let mut out = Vec::new();
    for (_, handle_bytes) in block_entries(path, &index_block)? {
        let handle = Cursor::new(path, &handle_bytes).block_handle()?;
        let block = read_block(path, file, handle, body_len)?;
        out.extend(block_entries(path, &block)?);
    }
    if out.is_empty() {
        return Err(truncated("the index has no entries".into()));
    }
    Ok(out)
}

/// A table entry: key and value bytes.
type KeyValue = (Vec<u8>, Vec<u8>);

#[derive(Debug, Clone, Copy)]
struct BlockHandle {
    offset: u64,
    size: u64,
}

/// One block's contents, after checking its trailer.
fn read_block(
    path: &Path,
    file: &[u8],
    handle: BlockHandle,
    body_len: u64,
) -> Result<Vec<u8>, BundleError> {
    let end = handle
        .offset
        .checked_add(handle.size)
        .and_then(|e| e.checked_add(BLOCK_TRAILER_LEN as u64));
    if end.is_none_or(|end| end > body_len) {
        return Err(BundleError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "block at {} (+{} bytes) lies outside the table's {body_len} bytes",
                handle.offset, handle.size
            ),
        });
    }
    let start = handle.offset as usize;
    let data_end = start + handle.size as usize;
    let data = &file[start..data_end];
    let kind = file[data_end];
    let stored = u32::from_le_bytes(file[data_end + 1..data_end + 5].try_into().expect("4"));
    // The CRC covers the block contents and the type byte.
    let crc = crc32c_extend(crc32c(data), &[kind]);
    if mask_crc(crc) != stored && !FUZZING {
        return Err(BundleError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("checksum mismatch in the block at offset {}", handle.offset),
        });
    }
    if kind != 0 {
        return Err(BundleError::Unsupported {
            path: path.to_path_buf(),
            detail: format!("block compression type {kind}"),
        });
    }
    Ok(data.to_vec())
}

/// Decodes a block's prefix-compressed entries.
fn block_entries(path: &Path, block: &[u8]) -> Result<Vec<KeyValue>, BundleError> {
    let corrupt = |detail: &str| BundleError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    if block.len() < 4 {
        return Err(corrupt("a block is shorter than its restart count"));
    }
    let num_restarts = u32::from_le_bytes(block[block.len() - 4..].try_into().expect("4")) as usize;
    let restarts_len = num_restarts
        .checked_mul(4)
        .and_then(|n| n.checked_add(4))
        .filter(|n| *n <= block.len())
        .ok_or_else(|| corrupt("a block's restart array is larger than the block"))?;
    let entries = &block[..block.len() - restarts_len];
    let mut cursor = Cursor::new(path, entries);
    let mut key: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    while !cursor.is_empty() {
        let shared = cursor.varint()? as usize;
        let non_shared = cursor.varint()? as usize;
        let value_len = cursor.varint()? as usize;
        if shared > key.len() {
            return Err(corrupt("a key shares more bytes than the previous key has"));
        }
        key.truncate(shared);
        key.extend_from_slice(cursor.take(non_shared)?);
        let value = cursor.take(value_len)?.to_vec();
        out.push((key.clone(), value));
    }
    Ok(out)
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(path: &'a Path, bytes: &'a [u8]) -> Self {
        Cursor { path, bytes, at: 0 }
    }

    fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn corrupt(&self, detail: &str) -> BundleError {
        BundleError::Corrupt {
            path: self.path.to_path_buf(),
            detail: detail.to_string(),
        }
    }

    fn varint(&mut self) -> Result<u64, BundleError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .bytes
                .get(self.at)
                .ok_or_else(|| self.corrupt("a varint runs past the end of its record"))?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt("a varint is longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BundleError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| self.corrupt("a record runs past the end of its block"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn block_handle(&mut self) -> Result<BlockHandle, BundleError> {
        Ok(BlockHandle {
            offset: self.varint()?,
            size: self.varint()?,
        })
    }
}

/// One protobuf field: its number and value.
enum Field<'a> {
    Varint(u64),
    /// Skipped: no field we read is a 64-bit fixed value.
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Splits a protobuf message into its fields.
fn proto_fields<'a>(path: &'a Path, msg: &'a [u8]) -> Result<Vec<(u64, Field<'a>)>, BundleError> {
    let mut c = Cursor::new(path, msg);
    let mut out = Vec::new();
    while !c.is_empty() {
        let tag = c.varint()?;
        let field = match tag & 7 {
            0 => Field::Varint(c.varint()?),
            1 => {
                c.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = c.varint()? as usize;
                Field::Bytes(c.take(n)?)
            }
            5 => Field::Fixed32(u32::from_le_bytes(c.take(4)?.try_into().expect("4"))),
            w => return Err(c.corrupt(&format!("protobuf wire type {w}"))),
        };
        out.push((tag >> 3, field));
    }
    Ok(out)
}

/// `BundleHeaderProto`: returns the shard count.
fn parse_header(path: &Path, msg: &[u8]) -> Result<u32, BundleError> {
    let mut num_shards = 0u64;
    for (number, field) in proto_fields(path, msg)? {
        match (number, field) {
            (1, Field::Varint(v)) => num_shards = v,
            (2, Field::Varint(e)) if e != 0 => {
                return Err(BundleError::Unsupported {
                    path: path.to_path_buf(),
                    detail: "a big-endian checkpoint".into(),
                })
            }
            _ => {}
        }
    }
    if num_shards == 0 || num_shards > 1 << 16 {
        return Err(BundleError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("the header names {num_shards} data shards"),
        });
    }
    Ok(num_shards as u32)
}

/// `BundleEntryProto` for tensor `name`.
fn parse_entry(path: &Path, name: &str, msg: &[u8]) -> Result<BundleEntry, BundleError> {
    let mut entry = BundleEntry {
        dtype: DataType::Other(0),
        shape: Vec::new(),
        shard_id: 0,
        offset: 0,
        size: 0,
        crc32c: 0,
    };
    let corrupt = |detail: String| BundleError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("tensor `{name}`: {detail}"),
    };
    for (number, field) in proto_fields(path, msg)? {
        match (number, field) {
            (1, Field::Varint(v)) => entry.dtype = DataType::from_proto(v),
            (2, Field::Bytes(shape)) => entry.shape = parse_shape(path, name, shape)?,
            (3, Field::Varint(v)) => {
                entry.shard_id = u32::try_from(v).map_err(|_| corrupt(format!("shard {v}")))?
            }
            (4, Field::Varint(v)) => entry.offset = v,
            (5, Field::Varint(v)) => entry.size = v,
            (6, Field::Fixed32(v)) => entry.crc32c = v,
            (7, _) => {
                return Err(BundleError::Unsupported {
                    path: path.to_path_buf(),
                    detail: format!("sliced tensor `{name}`"),
                })
            }
            _ => {}
        }
    }
    if let Some(elem) = entry.dtype.element_size() {
        let expected = entry
            .shape
            .iter()
            .try_fold(elem, |acc, &d| acc.checked_mul(d as u64));
        if expected != Some(entry.size) {
            return Err(corrupt(format!(
                "{} bytes for shape {:?} of {:?}",
                entry.size, entry.shape, entry.dtype
            )));
        }
    }
    Ok(entry)
}

/// `TensorShapeProto`: repeated `Dim { int64 size = 1; string name = 2; }`
/// in field 2.
fn parse_shape(path: &Path, name: &str, msg: &[u8]) -> Result<Vec<usize>, BundleError> {
    let mut dims = Vec::new();
    for (number, field) in proto_fields(path, msg)? {
        match (number, field) {
            (2, Field::Bytes(dim)) => {
                let mut size = 0u64;
                for (n, f) in proto_fields(path, dim)? {
                    if let (1, Field::Varint(v)) = (n, f) {
                        size = v;
                    }
                }
                // Sizes are int64; -1 (unknown) encodes as a huge varint.
                let size = usize::try_from(size)
                    .ok()
                    .filter(|s| *s < 1 << 40)
                    .ok_or_else(|| BundleError::Corrupt {
                        path: path.to_path_buf(),
                        detail: format!("tensor `{name}` has a dimension of {}", size as i64),
                    })?;
                dims.push(size);
            }
            (3, Field::Varint(1)) => {
                return Err(BundleError::Unsupported {
                    path: path.to_path_buf(),
                    detail: format!("tensor `{name}` of unknown rank"),
                })
            }
            _ => {}
        }
    }
    Ok(dims)
}

/// CRC-32C (Castagnoli), reflected, as LevelDB and TensorFlow use it.
fn crc32c(data: &[u8]) -> u32 {
    crc32c_extend(0, data)
}

fn crc32c_extend(crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut c = !crc;
    for &b in data {
        c = table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(CRC_MASK_DELTA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // RFC 3720 B.4 and the usual "123456789" check value.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        assert_eq!(crc32c_extend(crc32c(b"1234"), b"56789"), 0xe306_9283);
    }

    #[test]
    fn varints_and_truncated_varints() {
        let p = Path::new("x");
        assert_eq!(Cursor::new(p, &[0x96, 0x01]).varint().unwrap(), 150);
        assert!(Cursor::new(p, &[0x96]).varint().is_err());
    }
}
