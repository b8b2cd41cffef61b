//! Reader for CTranslate2's `model.bin` and its conversion into the
//! Hugging Face / candle Whisper layout.
//!
//! Every Whisper checkpoint on the package registries is a faster-whisper
//! (CTranslate2) export, which candle cannot read. The file is small to parse:
//!
//! ```text
//! u32 binary version (6)            string = u16 length (with NUL) + bytes + NUL
//! string spec name ("WhisperSpec")  u32 spec revision
//! u32 variable count, then per variable:
//!     string name, u8 rank, u32 x rank shape, u8 dtype, u32 byte count, bytes
//! u32 alias count, then per alias: string alias, string target
//! ```
//!
//! All integers are little-endian. The Whisper spec fuses the attention
//! projections (q,k,v for self-attention, k,v for cross-attention) along the
//! output dimension, and stores a zero bias for the key projection (Whisper's
//! key projection has none). [`WhisperConversion`] splits them back into the
//! names candle's `models::whisper` loads and writes a `model.safetensors`
//! plus a `config.json` in Hugging Face's shape.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The only binary version this reader understands (CTranslate2 >= 3).
pub const SUPPORTED_BINARY_VERSION: u32 = 6;

/// Something wrong with a CTranslate2 file or its conversion.
#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "CTranslate2 model file is truncated: it ends inside {what} at byte {offset}; \
         the download or the concatenation of its parts is incomplete, delete it and install the model again"
    )]
    Truncated { what: String, offset: u64 },
    #[error(
        "not a supported CTranslate2 model file: binary version {found}, expected {SUPPORTED_BINARY_VERSION} \
         (the file is corrupted, or was written by an unsupported CTranslate2 release)"
    )]
    UnsupportedVersion { found: u32 },
    #[error("CTranslate2 model file is corrupted: {0}; delete it and install the model again")]
    Corrupt(String),
    #[error(
        "variable `{name}` has data type {dtype:?}, which the Whisper converter does not support \
         (int8/int16 quantized exports cannot be converted; use a float16 or float32 export)"
    )]
    UnsupportedDtype { name: String, dtype: Ct2DType },
    #[error("this CTranslate2 model is a `{0}`, not a Whisper model (WhisperSpec)")]
    NotWhisper(String),
    #[error("the Whisper model is missing variable `{0}`; the file is incomplete or not a Whisper export")]
    Missing(String),
    #[error("variable `{name}` has shape {shape:?}, expected {expected}")]
    BadShape {
        name: String,
        shape: Vec<usize>,
        expected: String,
    },
    #[error("cannot write safetensors file {path}: {detail}")]
    Safetensors { path: PathBuf, detail: String },
}

/// Element types of CTranslate2 variables (the ids of `ctranslate2::DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl Ct2DType {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::BF16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::BF16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }

    fn safetensors(self) -> safetensors::Dtype {
        match self {
            Self::F32 => safetensors::Dtype::F32,
            Self::I8 => safetensors::Dtype::I8,
            Self::I16 => safetensors::Dtype::I16,
            Self::I32 => safetensors::Dtype::I32,
            Self::F16 => safetensors::Dtype::F16,
            Self::BF16 => safetensors::Dtype::BF16,
        }
    }
}

/// One named array of a CTranslate2 model, with its raw little-endian bytes.
#[derive(Debug, Clone)]
pub struct Ct2Variable {
    pub shape: Vec<usize>,
    pub dtype: Ct2DType,
    pub data: Vec<u8>,
}

impl Ct2Variable {
    /// The value of a scalar integer variable (flags and head counts).
    pub fn scalar_int(&self) -> Option<i64> {
        if !self.shape.is_empty() {
            return None;
        }
        let d = &self.data;
        Some(match self.dtype {
            Ct2DType::I8 => i8::from_le_bytes([*d.first()?]) as i64,
            Ct2DType::I16 => i16::from_le_bytes([*d.first()?, *d.get(1)?]) as i64,
            Ct2DType::I32 => i32::from_le_bytes(d.get(..4)?.try_into().ok()?) as i64,
            _ => return None,
        })
    }
}

/// A whole CTranslate2 model file held in memory.
#[derive(Debug, Clone)]
pub struct Ct2Model {
    /// e.g. "WhisperSpec".
    pub spec: String,
    pub revision: u32,
    pub variables: BTreeMap<String, Ct2Variable>,
    /// Alias name -> variable name (e.g. the tied output projection).
    pub aliases: BTreeMap<String, String>,
}

/// Counts bytes consumed so that errors can say where a file broke.
struct Cursor<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Cursor<R> {
    fn bytes(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<Vec<u8>, Ct2Error> {
        // `take` + `read_to_end` never allocates more than the file holds, so a
        // corrupted length cannot make us reserve gigabytes up front.
        let mut buf = Vec::new();
        let got = (&mut self.inner)
            .take(n as u64)
            .read_to_end(&mut buf)
            .map_err(|e| Ct2Error::Corrupt(format!("read error in {}: {e}", what())))?;
        if got < n {
            return Err(Ct2Error::Truncated {
                what: what(),
                offset: self.offset + got as u64,
            });
        }
        self.offset += n as u64;
        Ok(buf)
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, Ct2Error> {
        Ok(self.bytes(1, what)?[0])
    }

    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, Ct2Error> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, Ct2Error> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, Ct2Error> {
        let len = self.u16(what)? as usize;
        if len == 0 {
            return Err(Ct2Error::Corrupt(format!("empty string in {}", what())));
        }
        let mut bytes = self.bytes(len, what)?;
        if bytes.pop() != Some(0) {
            return Err(Ct2Error::Corrupt(format!(
                "string in {} is not NUL-terminated (byte {})",
                what(),
                self.offset
            )));
        }
        String::from_utf8(bytes)
            .map_err(|_| Ct2Error::Corrupt(format!("string in {} is not UTF-8", what())))
    }
}

impl Ct2Model {
    /// Reads a `model.bin`.
    pub fn read(path: &Path) -> Result<Self, Ct2Error> {
        Self::read_parts(&[path])
    }

    /// Reads a `model.bin` shipped in several pieces that are concatenated in
    /// order (the registry packages split files over 100 MB).
    pub fn read_parts<P: AsRef<Path>>(parts: &[P]) -> Result<Self, Ct2Error> {
        let mut reader: Box<dyn Read> = Box::new(io::empty());
        for part in parts {
            let path = part.as_ref();
            let file = File::open(path).map_err(|source| Ct2Error::Io {
                action: "open",
                path: path.to_path_buf(),
                source,
            })?;
            reader = Box::new(reader.chain(BufReader::with_capacity(1 << 20, file)));
        }
        Self::from_reader(reader)
    }

    /// Parses a model from any byte stream; the stream must end right after
    /// the alias table.
    pub fn from_reader(reader: impl Read) -> Result<Self, Ct2Error> {
        let mut cur = Cursor {
            inner: reader,
            offset: 0,
        };
        let version = cur.u32(&|| "the header".into())?;
        if version != SUPPORTED_BINARY_VERSION {
            return Err(Ct2Error::UnsupportedVersion { found: version });
        }
        let spec = cur.string(&|| "the header".into())?;
        let revision = cur.u32(&|| "the header".into())?;
        let count = cur.u32(&|| "the header".into())?;
        if count > 1_000_000 {
            return Err(Ct2Error::Corrupt(format!(
                "implausible variable count {count}"
            )));
        }
        let mut variables = BTreeMap::new();
        for index in 0..count {
            let what = || format!("the header of variable #{index}");
            let name = cur.string(&what)?;
            let what = || format!("variable `{name}`");
            let rank = cur.u8(&what)? as usize;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(cur.u32(&what)? as usize);
            }
            let dtype_id = cur.u8(&what)?;
            let dtype = Ct2DType::from_id(dtype_id).ok_or_else(|| {
                Ct2Error::Corrupt(format!("variable `{name}` has unknown dtype id {dtype_id}"))
            })?;
            let num_bytes = cur.u32(&what)? as usize;
            let expected = shape
                .iter()
                .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| Ct2Error::Corrupt(format!("variable `{name}` shape overflows")))?;
            if num_bytes != expected {
                return Err(Ct2Error::Corrupt(format!(
                    "variable `{name}` declares {num_bytes} bytes but shape {shape:?} of {dtype:?} needs {expected}"
                )));
            }
            let data = cur.bytes(num_bytes, &what)?;
            if variables
                .insert(name.clone(), Ct2Variable { shape, dtype, data })
                .is_some()
            {
                return Err(Ct2Error::Corrupt(format!(
                    "variable `{name}` appears twice"
                )));
            }
        }
        let alias_count = cur.u32(&|| "the alias table".into())?;
        if alias_count > 1_000_000 {
            return Err(Ct2Error::Corrupt(format!(
                "implausible alias count {alias_count}"
            )));
        }
        let mut aliases = BTreeMap::new();
        for _ in 0..alias_count {
            let alias = cur.string(&|| "the alias table".into())?;
            let target = cur.string(&|| "the alias table".into())?;
            aliases.insert(alias, target);
        }
        let mut rest = [0u8; 1];
        match cur.inner.read(&mut rest) {
            Ok(0) => {}
            Ok(_) => {
                return Err(Ct2Error::Corrupt(format!(
                    "unexpected bytes after the alias table at byte {}",
                    cur.offset
                )))
            }
            Err(e) => return Err(Ct2Error::Corrupt(format!("read error at the end: {e}"))),
        }
        Ok(Self {
            spec,
            revision,
            variables,
            aliases,
        })
    }

    fn var(&self, name: &str) -> Result<&Ct2Variable, Ct2Error> {
        let name = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.variables
            .get(name)
            .ok_or_else(|| Ct2Error::Missing(name.to_string()))
    }

    fn int(&self, name: &str) -> Result<i64, Ct2Error> {
        let v = self.var(name)?;
        v.scalar_int().ok_or_else(|| Ct2Error::BadShape {
            name: name.to_string(),
            shape: v.shape.clone(),
            expected: "an integer scalar".into(),
        })
    }
}

/// A tensor of the converted model: a slice of a CTranslate2 variable.
#[derive(Debug, Clone)]
pub struct ConvertedTensor<'a> {
    pub shape: Vec<usize>,
    pub dtype: Ct2DType,
    pub data: &'a [u8],
}

impl safetensors::View for &ConvertedTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Hyper-parameters read off the tensors (the CTranslate2 config.json does
/// not carry them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhisperDims {
    pub num_mel_bins: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub vocab_size: usize,
    pub max_source_positions: usize,
    pub max_target_positions: usize,
    pub ffn_dim: usize,
}

/// A Whisper model in Hugging Face names, borrowing the bytes of the
/// CTranslate2 model it came from.
#[derive(Debug)]
pub struct WhisperConversion<'a> {
    pub dims: WhisperDims,
    /// HF name -> tensor, sorted by name.
    pub tensors: BTreeMap<String, ConvertedTensor<'a>>,
}

impl<'a> WhisperConversion<'a> {
    /// Maps every Whisper variable of `model` to its HF name, splitting the
    /// fused attention projections. Fails on anything that is not a float
    /// Whisper export.
    pub fn new(model: &'a Ct2Model) -> Result<Self, Ct2Error> {
        if model.spec != "WhisperSpec" {
            return Err(Ct2Error::NotWhisper(model.spec.clone()));
        }
        let emb = model.var("decoder/embeddings/weight")?;
        let (vocab_size, d_model) = matrix(emb, "decoder/embeddings/weight")?;
        let conv1 = model.var("encoder/conv1/weight")?;
        if conv1.shape.len() != 3 || conv1.shape[0] != d_model || conv1.shape[2] != 3 {
            return Err(Ct2Error::BadShape {
                name: "encoder/conv1/weight".into(),
                shape: conv1.shape.clone(),
                expected: format!("[{d_model}, n_mels, 3]"),
            });
        }
        let count_layers = |prefix: &str| {
            (0..)
                .take_while(|i| {
                    model
                        .variables
                        .contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
                })
                .count()
        };
        let ffn = model.var("encoder/layer_0/ffn/linear_0/weight")?;
        let dims = WhisperDims {
            num_mel_bins: conv1.shape[1],
            d_model,
            encoder_layers: count_layers("encoder"),
            decoder_layers: count_layers("decoder"),
            encoder_attention_heads: positive(
                model.int("encoder/num_heads")?,
                "encoder/num_heads",
            )?,
            decoder_attention_heads: positive(
                model.int("decoder/num_heads")?,
                "decoder/num_heads",
            )?,
            vocab_size,
            max_source_positions: matrix(
                model.var("encoder/position_encodings/encodings")?,
                "encoder/position_encodings/encodings",
            )?
            .0,
            max_target_positions: matrix(
                model.var("decoder/position_encodings/encodings")?,
                "decoder/position_encodings/encodings",
            )?
            .0,
            ffn_dim: matrix(ffn, "encoder/layer_0/ffn/linear_0/weight")?.0,
        };
        if d_model % dims.encoder_attention_heads != 0
            || d_model % dims.decoder_attention_heads != 0
        {
            return Err(Ct2Error::Corrupt(format!(
                "model width {d_model} is not divisible by the head count"
            )));
        }

        let mut conv = Converter {
            model,
            d: d_model,
            out: BTreeMap::new(),
        };
        conv.copy(
            "encoder/conv1/weight",
            "model.encoder.conv1.weight",
            &[d_model, dims.num_mel_bins, 3],
        )?;
        conv.copy("encoder/conv1/bias", "model.encoder.conv1.bias", &[d_model])?;
        conv.copy(
            "encoder/conv2/weight",
            "model.encoder.conv2.weight",
            &[d_model, d_model, 3],
        )?;
        conv.copy("encoder/conv2/bias", "model.encoder.conv2.bias", &[d_model])?;
        conv.copy(
            "encoder/position_encodings/encodings",
            "model.encoder.embed_positions.weight",
            &[dims.max_source_positions, d_model],
        )?;
        for i in 0..dims.encoder_layers {
            let src = format!("encoder/layer_{i}");
            let dst = format!("model.encoder.layers.{i}");
            conv.self_attention(&src, &dst)?;
            conv.ffn(&src, &dst, dims.ffn_dim)?;
        }
        conv.layer_norm("encoder/layer_norm", "model.encoder.layer_norm")?;

        conv.copy(
            "decoder/embeddings/weight",
            "model.decoder.embed_tokens.weight",
            &[vocab_size, d_model],
        )?;
        conv.copy(
            "decoder/position_encodings/encodings",
            "model.decoder.embed_positions.weight",
            &[dims.max_target_positions, d_model],
        )?;
        for i in 0..dims.decoder_layers {
            let src = format!("decoder/layer_{i}");
            let dst = format!("model.decoder.layers.{i}");
            conv.self_attention(&src, &dst)?;
            conv.cross_attention(&src, &dst)?;
            conv.ffn(&src, &dst, dims.ffn_dim)?;
        }
        conv.layer_norm("decoder/layer_norm", "model.decoder.layer_norm")?;
        Ok(Self {
            dims,
            tensors: conv.out,
        })
    }

    /// Writes the tensors as a safetensors file (same dtypes as the source).
    pub fn write_safetensors(&self, path: &Path) -> Result<(), Ct2Error> {
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert(
            "converted_from".to_string(),
            "ctranslate2 WhisperSpec".to_string(),
        );
        safetensors::serialize_to_file(
            self.tensors.iter().map(|(k, v)| (k.as_str(), v)),
            Some(meta),
            path,
        )
        .map_err(|e| Ct2Error::Safetensors {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// A Hugging Face style `config.json` for these weights. `ct2_config` is
    /// the CTranslate2 `config.json` (suppressed tokens, language ids,
    /// alignment heads), merged in under HF names where one exists.
    pub fn hf_config(&self, ct2_config: Option<&Value>) -> Value {
        let d = &self.dims;
        let mut cfg = json!({
            "model_type": "whisper",
            "architectures": ["WhisperForConditionalGeneration"],
            "num_mel_bins": d.num_mel_bins,
            "d_model": d.d_model,
            "encoder_layers": d.encoder_layers,
            "decoder_layers": d.decoder_layers,
            "encoder_attention_heads": d.encoder_attention_heads,
            "decoder_attention_heads": d.decoder_attention_heads,
            "encoder_ffn_dim": d.ffn_dim,
            "decoder_ffn_dim": d.ffn_dim,
            "vocab_size": d.vocab_size,
            "max_source_positions": d.max_source_positions,
            "max_target_positions": d.max_target_positions,
            "activation_function": "gelu",
            "scale_embedding": false,
            "tie_word_embeddings": true,
        });
        if let (Some(src), Some(dst)) = (ct2_config, cfg.as_object_mut()) {
            for (from, to) in [
                ("suppress_ids", "suppress_tokens"),
                ("suppress_ids_begin", "begin_suppress_tokens"),
                ("lang_ids", "lang_ids"),
                ("alignment_heads", "alignment_heads"),
            ] {
                if let Some(v) = src.get(from) {
                    dst.insert(to.to_string(), v.clone());
                }
            }
        }
        cfg
    }
}

fn matrix(v: &Ct2Variable, name: &str) -> Result<(usize, usize), Ct2Error> {
    match v.shape[..] {
        [a, b] => Ok((a, b)),
        _ => Err(Ct2Error::BadShape {
            name: name.to_string(),
            shape: v.shape.clone(),
            expected: "a matrix".into(),
        }),
    }
}

fn positive(v: i64, name: &str) -> Result<usize, Ct2Error> {
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| Ct2Error::Corrupt(format!("`{name}` is {v}")))
}

struct Converter<'a> {
    model: &'a Ct2Model,
    d: usize,
    out: BTreeMap<String, ConvertedTensor<'a>>,
}

impl<'a> Converter<'a> {
    fn float_var(&self, name: &str, shape: &[usize]) -> Result<&'a Ct2Variable, Ct2Error> {
        let v = self.model.var(name)?;
        if !matches!(v.dtype, Ct2DType::F32 | Ct2DType::F16 | Ct2DType::BF16) {
            return Err(Ct2Error::UnsupportedDtype {
                name: name.to_string(),
                dtype: v.dtype,
            });
        }
        if v.shape != shape {
            return Err(Ct2Error::BadShape {
                name: name.to_string(),
                shape: v.shape.clone(),
                expected: format!("{shape:?}"),
            });
        }
        Ok(v)
    }

    fn copy(&mut self, src: &str, dst: &str, shape: &[usize]) -> Result<(), Ct2Error> {
        let v = self.float_var(src, shape)?;
        self.out.insert(
            dst.to_string(),
            ConvertedTensor {
                shape: v.shape.clone(),
                dtype: v.dtype,
                data: &v.data,
            },
        );
        Ok(())
    }

    /// Splits a variable fused along dim 0 into `parts.len()` equal pieces;
    /// a `None` destination drops its piece.
    fn split(
        &mut self,
        src: &str,
        shape: &[usize],
        parts: &[Option<String>],
    ) -> Result<(), Ct2Error> {
        let v = self.float_var(src, shape)?;
        let piece = v.data.len() / parts.len();
        let mut piece_shape = v.shape.clone();
        piece_shape[0] /= parts.len();
        for (i, dst) in parts.iter().enumerate() {
            if let Some(dst) = dst {
                self.out.insert(
                    dst.clone(),
                    ConvertedTensor {
                        shape: piece_shape.clone(),
                        dtype: v.dtype,
                        data: &v.data[i * piece..(i + 1) * piece],
                    },
                );
            }
        }
        Ok(())
    }

    fn linear(
        &mut self,
        src: &str,
        dst: &str,
        out_dim: usize,
        in_dim: usize,
    ) -> Result<(), Ct2Error> {
        self.copy(
            &format!("{src}/weight"),
            &format!("{dst}.weight"),
            &[out_dim, in_dim],
        )?;
        self.copy(&format!("{src}/bias"), &format!("{dst}.bias"), &[out_dim])
    }

    fn layer_norm(&mut self, src: &str, dst: &str) -> Result<(), Ct2Error> {
        let d = self.d;
        self.copy(&format!("{src}/gamma"), &format!("{dst}.weight"), &[d])?;
        self.copy(&format!("{src}/beta"), &format!("{dst}.bias"), &[d])
    }

    fn self_attention(&mut self, src: &str, dst: &str) -> Result<(), Ct2Error> {
        let d = self.d;
        let s = format!("{src}/self_attention");
        let a = format!("{dst}.self_attn");
        self.layer_norm(
            &format!("{s}/layer_norm"),
            &format!("{dst}.self_attn_layer_norm"),
        )?;
        let names = |suffix: &str| {
            ["q_proj", "k_proj", "v_proj"].map(|p| Some(format!("{a}.{p}.{suffix}")))
        };
        self.split(
            &format!("{s}/linear_0/weight"),
            &[3 * d, d],
            &names("weight"),
        )?;
        let [q, _k, v] = names("bias");
        self.check_zero_key_bias(&format!("{s}/linear_0/bias"), 3, 1)?;
        self.split(&format!("{s}/linear_0/bias"), &[3 * d], &[q, None, v])?;
        self.linear(&format!("{s}/linear_1"), &format!("{a}.out_proj"), d, d)
    }

    fn cross_attention(&mut self, src: &str, dst: &str) -> Result<(), Ct2Error> {
        let d = self.d;
        let s = format!("{src}/attention");
        let a = format!("{dst}.encoder_attn");
        self.layer_norm(
            &format!("{s}/layer_norm"),
            &format!("{dst}.encoder_attn_layer_norm"),
        )?;
        self.linear(&format!("{s}/linear_0"), &format!("{a}.q_proj"), d, d)?;
        let names = |suffix: &str| ["k_proj", "v_proj"].map(|p| Some(format!("{a}.{p}.{suffix}")));
        self.split(
            &format!("{s}/linear_1/weight"),
            &[2 * d, d],
            &names("weight"),
        )?;
        let [_k, v] = names("bias");
        self.check_zero_key_bias(&format!("{s}/linear_1/bias"), 2, 0)?;
        self.split(&format!("{s}/linear_1/bias"), &[2 * d], &[None, v])?;
        self.linear(&format!("{s}/linear_2"), &format!("{a}.out_proj"), d, d)
    }

    /// Whisper's key projection has no bias and CTranslate2 stores zeros in
    /// its slot. A non-zero key bias would not change attention either (it
    /// adds the same amount to every score of a query, which softmax
    /// cancels), but non-zero bytes here mean the file is not what we think.
    fn check_zero_key_bias(&self, name: &str, parts: usize, index: usize) -> Result<(), Ct2Error> {
        let v = self.model.var(name)?;
        let piece = v.data.len() / parts;
        let key = &v.data[index * piece..(index + 1) * piece];
        // +0.0 and -0.0 in any float format.
        let size = v.dtype.size();
        let nonzero = key.chunks(size).any(|c| {
            let mut c = c.to_vec();
            if let Some(last) = c.last_mut() {
                *last &= 0x7f;
            }
            c.iter().any(|&b| b != 0)
        });
        if nonzero {
            return Err(Ct2Error::Corrupt(format!(
                "`{name}` has a non-zero key-projection bias, which Whisper does not have"
            )));
        }
        Ok(())
    }

    fn ffn(&mut self, src: &str, dst: &str, ffn_dim: usize) -> Result<(), Ct2Error> {
        let d = self.d;
        self.layer_norm(
            &format!("{src}/ffn/layer_norm"),
            &format!("{dst}.final_layer_norm"),
        )?;
        self.linear(
            &format!("{src}/ffn/linear_0"),
            &format!("{dst}.fc1"),
            ffn_dim,
            d,
        )?;
        self.linear(
            &format!("{src}/ffn/linear_1"),
            &format!("{dst}.fc2"),
            d,
            ffn_dim,
        )
    }
}

/// Converts a CTranslate2 Whisper export into `out_dir`: writes
/// `model.safetensors` and an HF-style `config.json` (merging `ct2_config`,
/// the export's own config.json, when given). Returns the dimensions found.
pub fn convert_whisper<P: AsRef<Path>>(
    model_parts: &[P],
    ct2_config: Option<&Path>,
    out_dir: &Path,
) -> Result<WhisperDims, Ct2Error> {
    let model = Ct2Model::read_parts(model_parts)?;
    let conversion = WhisperConversion::new(&model)?;
    let ct2_config = match ct2_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Ct2Error::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            })?;
            Some(serde_json::from_str::<Value>(&text).map_err(|e| {
                Ct2Error::Corrupt(format!("{} is not valid JSON: {e}", path.display()))
            })?)
        }
        None => None,
    };
    std::fs::create_dir_all(out_dir).map_err(|source| Ct2Error::Io {
        action: "create",
        path: out_dir.to_path_buf(),
        source,
    })?;
    conversion.write_safetensors(&out_dir.join("model.safetensors"))?;
    let cfg = conversion.hf_config(ct2_config.as_ref());
    let cfg_path = out_dir.join("config.json");
    let text = serde_json::to_string_pretty(&cfg).unwrap_or_else(|_| cfg.to_string());
    std::fs::write(&cfg_path, text).map_err(|source| Ct2Error::Io {
        action: "write",
        path: cfg_path,
        source,
    })?;
    Ok(conversion.dims)
}
