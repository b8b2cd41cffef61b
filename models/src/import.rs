//! `murmur models import DIR [--name NAME]`: installs a Whisper model from a
//! directory the operator already has, for the sizes the registries carry
//! no weights for (small, medium, large-v3, large-v3-turbo, distil...).
//!
//! Two layouts are read:
//! - **CTranslate2** (a faster-whisper model directory): `model.bin`,
//!   `config.json`, `tokenizer.json`. The weights are converted by
//!   [`crate::ct2`], as fetched models are.
//! - **Hugging Face transformers**: `model.safetensors`, `config.json`
//!   (`model_type` `whisper`), `tokenizer.json`, and `generation_config.json`
//!   when present (its alignment heads and suppressed tokens join the
//!   config). The tensors are checked against the config, then copied.
//!
//! Either way the result is the installed layout of [`crate::fetch`]
//! (`model.safetensors`, `config.json`, `tokenizer.json`, staged and renamed
//! into place) with a marker recording the layout, the directory it came
//! from and the sha256 of its weights. The name is the `--name` given, or
//! the size the dimensions say (tiny, base, small, medium, large-v3,
//! large-v3-turbo; `.en` for English-only vocabularies).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::ct2;
use crate::fetch::{self, FetchError, InstalledModel, ModelKind, SourceRecord};
use crate::registry;

/// Where an imported model came from, as its marker's source `package`.
pub const IMPORT_PREFIX: &str = "import:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Ctranslate2,
    Transformers,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Ctranslate2 => "ctranslate2",
            Layout::Transformers => "transformers",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "{0} is not a Whisper model directory: expected model.bin (faster-whisper / \
         CTranslate2) or model.safetensors (Hugging Face transformers) beside config.json \
         and tokenizer.json"
    )]
    UnknownLayout(PathBuf),
    #[error("{path} is missing {file}")]
    Missing { path: PathBuf, file: &'static str },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "cannot tell which Whisper size this is ({0}); give --name (tiny, base, small, medium, \
         large-v3, large-v3-turbo, with .en for English-only models)"
    )]
    UnknownSize(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// Which layout `dir` holds.
pub fn detect(dir: &Path) -> Result<Layout, ImportError> {
    let layout = if dir.join("model.bin").is_file() {
        Layout::Ctranslate2
    } else if dir.join("model.safetensors").is_file() {
        Layout::Transformers
    } else {
        return Err(ImportError::UnknownLayout(dir.to_path_buf()));
    };
    for file in ["config.json", "tokenizer.json"] {
        if !dir.join(file).is_file() {
            return Err(ImportError::Missing {
                path: dir.to_path_buf(),
                file,
            });
        }
    }
    Ok(layout)
}

/// The Whisper size a model's dimensions say, when they are one of the
/// published ones.
pub fn size_name(
    d_model: usize,
    decoder_layers: usize,
    mels: usize,
    vocab: usize,
) -> Option<String> {
    let english = vocab == 51_864;
    let size = match (d_model, decoder_layers, mels) {
        (384, 4, 80) => "tiny",
        (512, 6, 80) => "base",
        (768, 12, 80) => "small",
        (1024, 24, 80) => "medium",
        (1280, 32, 128) => "large-v3",
        (1280, 4, 128) => "large-v3-turbo",
        _ => return None,
    };
    Some(if english && !size.starts_with("large") {
        format!("{size}.en")
    } else {
        size.to_string()
    })
}

fn read_json(path: &Path) -> Result<Value, ImportError> {
    let text = fs::read_to_string(path).map_err(fetch::io_err("read", path))?;
    serde_json::from_str(&text)
        .map_err(|e| ImportError::Invalid(format!("{} is not valid JSON: {e}", path.display())))
}

fn dim(config: &Value, key: &str) -> Result<usize, ImportError> {
    config[key]
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| ImportError::Invalid(format!("config.json has no `{key}`")))
}

/// The tensors a transformers checkpoint must hold, with the shapes its
/// config implies; any mismatch is refused before anything is copied.
fn check_transformers(
    dir: &Path,
    config: &Value,
) -> Result<(usize, usize, usize, usize), ImportError> {
    if config["model_type"].as_str() != Some("whisper") {
        return Err(ImportError::Invalid(format!(
            "{}/config.json says model_type {}, not whisper",
            dir.display(),
            config["model_type"]
        )));
    }
    let d = dim(config, "d_model")?;
    let mels = dim(config, "num_mel_bins")?;
    let vocab = dim(config, "vocab_size")?;
    let enc = dim(config, "encoder_layers")?;
    let dec = dim(config, "decoder_layers")?;
    let path = dir.join("model.safetensors");
    let file = fs::File::open(&path).map_err(fetch::io_err("open", &path))?;
    let mut reader = std::io::BufReader::new(file);
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut reader, &mut len).map_err(fetch::io_err("read", &path))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(ImportError::Invalid(format!(
            "{} has a {n}-byte header; not a safetensors file",
            path.display()
        )));
    }
    let mut header = vec![0u8; n as usize];
    std::io::Read::read_exact(&mut reader, &mut header).map_err(fetch::io_err("read", &path))?;
    let header: Value = serde_json::from_slice(&header)
        .map_err(|e| ImportError::Invalid(format!("{}: bad header: {e}", path.display())))?;
    let shape = |name: &str| -> Option<Vec<u64>> {
        header
            .get(name)?
            .get("shape")?
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect()
    };
    let expect: Vec<(String, Vec<u64>)> = vec![
        (
            "model.encoder.conv1.weight".into(),
            vec![d as u64, mels as u64, 3],
        ),
        (
            "model.decoder.embed_tokens.weight".into(),
            vec![vocab as u64, d as u64],
        ),
        (
            format!("model.encoder.layers.{}.fc1.weight", enc - 1),
            vec![dim(config, "encoder_ffn_dim")? as u64, d as u64],
        ),
        (
            format!(
                "model.decoder.layers.{}.encoder_attn.q_proj.weight",
                dec - 1
            ),
            vec![d as u64, d as u64],
        ),
    ];
    for (name, want) in expect {
        match shape(&name) {
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ImportError::Invalid(format!(
                    "{name} has shape {got:?} but config.json implies {want:?}"
                )))
            }
            None => {
                return Err(ImportError::Invalid(format!(
                    "model.safetensors has no {name}: not a transformers Whisper checkpoint"
                )))
            }
        }
    }
    if shape(&format!("model.decoder.layers.{dec}.fc1.weight")).is_some() {
        return Err(ImportError::Invalid(format!(
            "model.safetensors has more decoder layers than config.json's {dec}"
        )));
    }
    Ok((d, dec, mels, vocab))
}

/// Imports the Whisper model in `dir` into `<models_dir>/<name>/`, replacing
/// an earlier install of that name. Answers the installed model.
pub fn import(
    dir: &Path,
    name: Option<&str>,
    models_dir: &Path,
) -> Result<InstalledModel, ImportError> {
    let layout = detect(dir)?;
    fs::create_dir_all(models_dir).map_err(fetch::io_err("create", models_dir))?;
    // Staged beside the final place under a temporary name; the name is
    // known once the dimensions are.
    let staging = registry::temp_sibling(&models_dir.join(".import"));
    let result = stage(dir, layout, &staging).and_then(|dims| {
        let derived = size_name(dims.0, dims.1, dims.2, dims.3);
        let name = match (name, derived) {
            (Some(n), _) => n.to_string(),
            (None, Some(n)) => n,
            (None, None) => {
                return Err(ImportError::UnknownSize(format!(
                    "d_model {}, {} decoder layers, {} mel bins, vocabulary {}",
                    dims.0, dims.1, dims.2, dims.3
                )))
            }
        };
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
            return Err(ImportError::Invalid(format!(
                "{name:?} is not a model name"
            )));
        }
        let weights = match layout {
            Layout::Ctranslate2 => dir.join("model.bin"),
            Layout::Transformers => dir.join("model.safetensors"),
        };
        let marker = InstalledModel {
            name: name.clone(),
            kind: ModelKind::Whisper,
            format: fetch::FORMAT,
            sources: vec![SourceRecord {
                package: format!("{IMPORT_PREFIX}{}", layout.as_str()),
                version: dir.display().to_string(),
                sha256: registry::file_sha256(&weights).map_err(FetchError::from)?,
            }],
            path: PathBuf::new(),
        };
        let text = serde_json::to_string_pretty(&marker)
            .map_err(|e| ImportError::Invalid(e.to_string()))?;
        registry::write_atomic(&staging.join(fetch::MARKER), text.as_bytes())
            .map_err(FetchError::from)?;
        Ok(name)
    });
    let name = match result {
        Ok(name) => name,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let dest = fetch::model_dir(models_dir, &name);
    if dest.exists() {
        fs::remove_dir_all(&dest).map_err(fetch::io_err("remove the old install", &dest))?;
    }
    fs::rename(&staging, &dest).map_err(|e| {
        let _ = fs::remove_dir_all(&staging);
        fetch::io_err("move into place", &dest)(e)
    })?;
    fetch::installed(models_dir, &name).ok_or_else(|| {
        ImportError::Invalid(format!(
            "{} holds no complete install after the import",
            dest.display()
        ))
    })
}

/// Writes the installed layout into `staging`; answers (d_model, decoder
/// layers, mel bins, vocabulary).
fn stage(
    dir: &Path,
    layout: Layout,
    staging: &Path,
) -> Result<(usize, usize, usize, usize), ImportError> {
    fs::create_dir_all(staging).map_err(fetch::io_err("create", staging))?;
    let copy = |file: &str| -> Result<(), ImportError> {
        let (from, to) = (dir.join(file), staging.join(file));
        fs::copy(&from, &to).map_err(fetch::io_err("copy", &from))?;
        Ok(())
    };
    match layout {
        Layout::Ctranslate2 => {
            let dims = ct2::convert_whisper(
                &[dir.join("model.bin")],
                Some(&dir.join("config.json")),
                staging,
            )
            .map_err(|source| {
                ImportError::Fetch(FetchError::Convert {
                    name: dir.display().to_string(),
                    source,
                })
            })?;
            copy("tokenizer.json")?;
            Ok((
                dims.d_model,
                dims.decoder_layers,
                dims.num_mel_bins,
                dims.vocab_size,
            ))
        }
        Layout::Transformers => {
            let mut config = read_json(&dir.join("config.json"))?;
            let dims = check_transformers(dir, &config)?;
            // transformers keeps decoding settings in generation_config.json.
            let generation = dir.join("generation_config.json");
            if generation.is_file() {
                let g = read_json(&generation)?;
                for key in [
                    "alignment_heads",
                    "suppress_tokens",
                    "begin_suppress_tokens",
                    "lang_to_id",
                    "is_multilingual",
                ] {
                    if config.get(key).is_none() {
                        if let Some(v) = g.get(key) {
                            config[key] = v.clone();
                        }
                    }
                }
            }
            let text = serde_json::to_string_pretty(&config)
                .map_err(|e| ImportError::Invalid(e.to_string()))?;
            fs::write(staging.join("config.json"), text)
                .map_err(fetch::io_err("write", staging))?;
            copy("model.safetensors")?;
            copy("tokenizer.json")?;
            Ok(dims)
        }
    }
}

/// How to install `name` when it is not installed, in words for an operator.
pub fn install_hint(name: &str) -> String {
    if fetch::find(name).is_some() {
        format!("murmur models fetch {name}")
    } else {
        format!(
            "murmur models import DIR --name {name} (DIR: a faster-whisper / CTranslate2 or Hugging \
             Face transformers Whisper model directory; the registries carry no {name} weights)"
        )
    }
}
