//! The int8 weight cache: the weights of the decoder's linear layers and of
//! its token embedding (the output projection) in `model.safetensors`,
//! quantized to ggml's `Q8_0` (blocks of 32 int8 values with one float16
//! scale), kept beside the safetensors as `model.int8.gguf`. The encoder
//! stays float32 (see [`QUANTIZE_ENCODER`] for why).
//!
//! Quantizing costs a second or more and grows with the model, so it is
//! done once, the first time a model is loaded as `int8`, and the result is
//! written next to the weights; later loads read it. The cache is never
//! trusted blindly: `model.int8.json` records the sha256 of the safetensors
//! it was made from and the size and sha256 of the gguf file itself, and a
//! cache whose record is missing, from other weights, of another format or
//! whose file does not hash to the record (a truncated write, a disk error)
//! is rebuilt. The safetensors are hashed again only when their file's
//! identity (size, times, inode: [`WeightsFile::stamp`]) differs from the
//! one recorded: hashing them at every load cost more than reading the
//! cache. Files are written under temporary names and renamed into place,
//! so a reader never sees half a file and two processes quantizing at once
//! both end with a complete one (quantizing is deterministic).
//!
//! Limits: a model directory that cannot be written (a read-only mount)
//! still loads as int8, quantizing in memory at every load, with a warning.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::compute::{QuantizedWeights, PACKED_ROWS, PACKED_WIDTH};
use super::weights_file::WeightsFile;
use super::WhisperError;

/// The quantized weights' file, in the model directory.
pub const CACHE_FILE: &str = "model.int8.gguf";
/// What the cache was made from and what it must hash to.
pub const CACHE_RECORD: &str = "model.int8.json";
/// Bumped when what is quantized, or how, changes.
const FORMAT: u32 = 4;
const DTYPE: GgmlDType = GgmlDType::Q8_0;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct CacheRecord {
    format: u32,
    dtype: String,
    /// sha256 of the `model.safetensors` quantized.
    source_sha256: String,
    /// That file's identity when it was last hashed ([`WeightsFile::stamp`]);
    /// while it is the same the file is not hashed again. Absent in records
    /// written before it was kept, and where the platform has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_stamp: Option<String>,
    /// Size and sha256 of `model.int8.gguf`.
    size: u64,
    sha256: String,
}

/// The token embedding, quantized with padding: zero rows up to a multiple
/// of [`PACKED_ROWS`] (their logits are cut off again) and zero columns up to
/// a multiple of [`PACKED_WIDTH`]. The rows are what `gemm_q8.rs`'s panels
/// need (the vocabularies, 51,864 and 51,865, are not whole panels); the
/// columns were for candle's repacked kernels, which are no longer used
/// (`compute.rs` says why), and are kept so that caches already written
/// stay valid.
const EMBED_TOKENS: &str = "model.decoder.embed_tokens.weight";

/// Whether the encoder's linear layers are quantized too. Measured on a
/// 2-core AVX-512 VNNI CPU (docs/models.md, "Compute types"): the encoder
/// multiplies 1,500 rows at a time, where candle's float32 GEMM is as fast
/// as its int8 kernels (base) or much faster (tiny: widths of 384 miss the
/// repacked int8 kernels, which need multiples of 256), so int8 there costs
/// accuracy for no speed. The decoder multiplies one row per sequence and
/// step, where reading a quarter of the bytes wins (7-10x per product).
/// The encoder code takes int8 weights whenever the cache holds them.
const QUANTIZE_ENCODER: bool = false;

/// Whether `name` is a weight quantized for `int8`: every attention
/// projection and MLP layer of the decoder (and of the encoder if
/// [`QUANTIZE_ENCODER`]), and the decoder's token embedding, which is also
/// the output projection over the whole vocabulary.
pub(super) fn is_quantized(name: &str) -> bool {
    if name.starts_with("model.encoder.") && !QUANTIZE_ENCODER {
        return false;
    }
    is_linear_weight(name)
}

/// Whether `name` is a weight of a linear layer: every attention projection
/// and MLP layer of encoder and decoder, and the decoder's token embedding.
fn is_linear_weight(name: &str) -> bool {
    const LAYERS: [&str; 6] = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"];
    if name == EMBED_TOKENS {
        return true;
    }
    let Some(layer) = name
        .strip_suffix(".weight")
        .and_then(|n| n.rsplit('.').next())
    else {
        return false;
    };
    (name.starts_with("model.encoder.layers.") || name.starts_with("model.decoder.layers."))
        && LAYERS.contains(&layer)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The quantized linear weights of the model in `dir`, on `device`: read
/// from the cache when it is valid for `source` (the model's safetensors),
/// otherwise quantized from it and cached.
pub(super) fn load_or_build(
    dir: &Path,
    source: &WeightsFile,
    device: &Device,
) -> Result<QuantizedWeights, WhisperError> {
    let record = read_record(dir);
    let known = record
        .as_ref()
        .filter(|r| r.source_stamp.is_some() && r.source_stamp.as_deref() == source.stamp())
        .map(|r| r.source_sha256.clone());
    let stamp_known = known.is_some();
    let source_sha256 = match known {
        Some(sha) => sha,
        None => source.sha256()?,
    };
    if let Some(record) = record {
        if let Some(gguf) = read_valid_cache(dir, &record, &source_sha256) {
            if !stamp_known {
                remember_stamp(dir, record, source.stamp());
            }
            return read_gguf(&dir.join(CACHE_FILE), &gguf, device);
        }
    }
    let started = std::time::Instant::now();
    let safetensors = source.bytes()?;
    let gguf = quantize(&safetensors).map_err(|e| WhisperError::BadModelFile {
        path: source.path().to_path_buf(),
        detail: format!("cannot quantize to int8: {e}"),
    })?;
    drop(safetensors);
    tracing::info!(
        dir = %dir.display(),
        seconds = started.elapsed().as_secs_f64(),
        bytes = gguf.len(),
        "quantized the model's weights to int8"
    );
    if let Err(e) = write_cache(dir, &gguf, &source_sha256, source.stamp()) {
        tracing::warn!(
            dir = %dir.display(),
            error = %e,
            "cannot cache the int8 weights; they will be quantized again at the next load"
        );
    }
    read_gguf(&dir.join(CACHE_FILE), &gguf, device)
}

/// The cache's record, if there is one that parses.
fn read_record(dir: &Path) -> Option<CacheRecord> {
    serde_json::from_slice(&std::fs::read(dir.join(CACHE_RECORD)).ok()?).ok()
}

/// Writes `record` again with the safetensors' current `stamp`, so the
/// next load need not hash them (best effort: a read-only directory hashes
/// at every load).
fn remember_stamp(dir: &Path, mut record: CacheRecord, stamp: Option<&str>) {
    let Some(stamp) = stamp else { return };
    record.source_stamp = Some(stamp.to_string());
    if let Ok(json) = serde_json::to_vec_pretty(&record) {
        let _ = write_atomically(&dir.join(CACHE_RECORD), &json);
    }
}

/// The cache file's bytes if `record` says it was made, in this format,
/// from weights hashing to `source_sha256`, and the bytes hash to the record.
fn read_valid_cache(dir: &Path, record: &CacheRecord, source_sha256: &str) -> Option<Vec<u8>> {
    let path = dir.join(CACHE_FILE);
    let valid_record = record.format == FORMAT
        && record.dtype == format!("{DTYPE:?}")
        && record.source_sha256 == source_sha256;
    let size_matches = std::fs::metadata(&path).ok()?.len() == record.size;
    if !(valid_record && size_matches) {
        tracing::info!(path = %path.display(), "int8 cache is stale or incomplete; rebuilding it");
        return None;
    }
    let bytes = std::fs::read(&path).ok()?;
    if sha256_hex(&bytes) != record.sha256 {
        tracing::warn!(path = %path.display(), "int8 cache does not match its sha256; rebuilding it");
        return None;
    }
    Some(bytes)
}

/// Quantizes the linear weights of a safetensors file into a gguf file's
/// bytes (tensors in name order, so the same weights give the same bytes).
fn quantize(safetensors: &[u8]) -> candle_core::Result<Vec<u8>> {
    let tensors = candle_core::safetensors::load_buffer(safetensors, &Device::Cpu)?;
    let mut names: Vec<&String> = tensors.keys().filter(|n| is_quantized(n)).collect();
    names.sort();
    if names.is_empty() {
        candle_core::bail!("no linear layer weights found (not a Whisper model?)");
    }
    let quantized = names
        .iter()
        .map(|n| {
            let mut t = tensors[*n].to_dtype(DType::F32)?;
            if n.as_str() == EMBED_TOKENS {
                t = pad_rows(&t, PACKED_ROWS)?;
                t = pad_rows(&t.t()?, PACKED_WIDTH)?.t()?.contiguous()?;
            }
            QTensor::quantize(&t, DTYPE)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let entries: Vec<(&str, &QTensor)> = names
        .iter()
        .map(|n| n.as_str())
        .zip(quantized.iter())
        .collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &[], &entries)?;
    Ok(out.into_inner())
}

/// `t` (`[rows, d]`) with zero rows added up to a multiple of `multiple`.
fn pad_rows(t: &Tensor, multiple: usize) -> candle_core::Result<Tensor> {
    let (rows, d) = t.dims2()?;
    let padded = rows.div_ceil(multiple) * multiple;
    if padded == rows {
        return Ok(t.clone());
    }
    let zeros = Tensor::zeros((padded - rows, d), t.dtype(), t.device())?;
    Tensor::cat(&[t, &zeros], 0)
}

fn temp_path(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{nanos}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_cache(
    dir: &Path,
    gguf: &[u8],
    source_sha256: &str,
    source_stamp: Option<&str>,
) -> std::io::Result<()> {
    let record = CacheRecord {
        format: FORMAT,
        dtype: format!("{DTYPE:?}"),
        source_sha256: source_sha256.to_string(),
        source_stamp: source_stamp.map(str::to_string),
        size: gguf.len() as u64,
        sha256: sha256_hex(gguf),
    };
    write_atomically(&dir.join(CACHE_FILE), gguf)?;
    let json = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
    write_atomically(&dir.join(CACHE_RECORD), &json)
}

/// Every tensor of a gguf file's bytes, onto `device`.
fn read_gguf(path: &Path, gguf: &[u8], device: &Device) -> Result<QuantizedWeights, WhisperError> {
    let bad = |e: candle_core::Error| WhisperError::BadModelFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let mut reader = Cursor::new(gguf);
    let content = gguf_file::Content::read(&mut reader).map_err(bad)?;
    let mut out = HashMap::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        let t = content.tensor(&mut reader, name, device).map_err(bad)?;
        out.insert(name.clone(), Arc::new(t));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_weights_stay_float_unless_chosen() {
        let name = "model.encoder.layers.0.fc1.weight";
        assert!(is_linear_weight(name));
        assert_eq!(is_quantized(name), QUANTIZE_ENCODER);
        assert!(is_quantized("model.decoder.layers.0.fc1.weight"));
    }

    #[test]
    fn linear_weights_are_recognised() {
        for name in [
            "model.encoder.layers.0.self_attn.q_proj.weight",
            "model.encoder.layers.3.fc2.weight",
            "model.decoder.layers.1.encoder_attn.k_proj.weight",
            "model.decoder.layers.1.self_attn.out_proj.weight",
            "model.decoder.embed_tokens.weight",
        ] {
            assert!(is_linear_weight(name), "{name}");
        }
        for name in [
            "model.encoder.layers.0.self_attn.q_proj.bias",
            "model.encoder.layers.0.self_attn_layer_norm.weight",
            "model.encoder.conv1.weight",
            "model.decoder.embed_positions.weight",
            "model.encoder.layer_norm.weight",
        ] {
            assert!(!is_linear_weight(name), "{name}");
        }
    }

    /// A small safetensors file with one linear weight and one bias, as
    /// `model.safetensors` in `dir`.
    fn write_safetensors(dir: &Path) -> WeightsFile {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (64, 64), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 64, &dev).unwrap();
        let tensors = HashMap::from([
            ("model.decoder.layers.0.fc1.weight".to_string(), w),
            ("model.decoder.layers.0.fc1.bias".to_string(), b),
        ]);
        let path = dir.join("model.safetensors");
        // Renamed into place, as installs do.
        let tmp = dir.join("model.safetensors.tmp");
        candle_core::safetensors::save(&tensors, &tmp).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        WeightsFile::open(&path).unwrap()
    }

    /// The cache is written once, reused while valid, and rebuilt when the
    /// file is truncated or the weights change.
    #[test]
    fn cache_is_reused_only_while_valid() {
        let dir = tempfile::tempdir().unwrap();
        let st = write_safetensors(dir.path());
        let sha = st.sha256().unwrap();
        let q = load_or_build(dir.path(), &st, &Device::Cpu).unwrap();
        assert_eq!(q.len(), 1, "only the linear weight is quantized");
        assert_eq!(
            q["model.decoder.layers.0.fc1.weight"].dtype(),
            GgmlDType::Q8_0
        );
        let cache = dir.path().join(CACHE_FILE);
        let full = std::fs::read(&cache).unwrap();
        let record = read_record(dir.path()).unwrap();
        assert_eq!(record.source_sha256, sha);
        assert_eq!(record.source_stamp.as_deref(), st.stamp());
        assert!(read_valid_cache(dir.path(), &record, &sha).is_some());

        // Other weights: stale.
        assert!(read_valid_cache(dir.path(), &record, "0000").is_none());
        // Truncated: rebuilt by the next load.
        std::fs::write(&cache, &full[..full.len() / 2]).unwrap();
        assert!(read_valid_cache(dir.path(), &record, &sha).is_none());
        load_or_build(dir.path(), &st, &Device::Cpu).unwrap();
        assert_eq!(std::fs::read(&cache).unwrap(), full);
        // Same size, different bytes: caught by the hash.
        let mut flipped = full.clone();
        let last = flipped.len() - 40;
        flipped[last] ^= 0xff;
        std::fs::write(&cache, &flipped).unwrap();
        assert!(read_valid_cache(dir.path(), &record, &sha).is_none());
    }

    /// New weights renamed over the old ones are hashed and quantized
    /// again; a record from before stamps were kept is checked by hashing
    /// and then given the stamp.
    #[test]
    fn the_weights_are_hashed_again_only_when_their_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let st = write_safetensors(dir.path());
        let first = load_or_build(dir.path(), &st, &Device::Cpu).unwrap();
        let first_cache = std::fs::read(dir.path().join(CACHE_FILE)).unwrap();

        let other = write_safetensors(dir.path());
        assert_ne!(other.stamp(), st.stamp());
        let second = load_or_build(dir.path(), &other, &Device::Cpu).unwrap();
        let record = read_record(dir.path()).unwrap();
        assert_eq!(record.source_sha256, other.sha256().unwrap());
        assert_eq!(record.source_stamp.as_deref(), other.stamp());
        assert_ne!(
            std::fs::read(dir.path().join(CACHE_FILE)).unwrap(),
            first_cache
        );
        let name = "model.decoder.layers.0.fc1.weight";
        let values = |q: &QuantizedWeights| -> Vec<f32> {
            q[name]
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_ne!(values(&first), values(&second), "the new weights were used");

        // A record without a stamp (written by an older Murmur).
        let mut old = record;
        old.source_stamp = None;
        std::fs::write(
            dir.path().join(CACHE_RECORD),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        let cache_before = std::fs::read(dir.path().join(CACHE_FILE)).unwrap();
        load_or_build(dir.path(), &other, &Device::Cpu).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(CACHE_FILE)).unwrap(),
            cache_before,
            "the cache is valid and kept"
        );
        assert_eq!(
            read_record(dir.path()).unwrap().source_stamp.as_deref(),
            other.stamp(),
            "and its record now knows the file"
        );
    }
}
