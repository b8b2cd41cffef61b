//! Installing models from the registries into a fresh model directory
//! (downloads are reused from the shared cache).

use murmur_models::fetch::{self, FetchError, InstallEvent, ModelKind};
use murmur_models::registry;

#[test]
fn installs_tiny_en_and_silero_idempotently() {
    let cache = registry::cache_dir();
    let models = tempfile::tempdir().expect("tempdir");

    let mut events = Vec::new();
    let tiny = fetch::install("tiny.en", models.path(), &cache, &mut |e| events.push(e))
        .expect("install tiny.en");
    assert_eq!(tiny.kind, ModelKind::Whisper);
    assert_eq!(tiny.path, models.path().join("tiny.en"));
    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        fetch::MARKER,
    ] {
        assert!(tiny.path.join(file).is_file(), "missing {file}");
    }
    assert!(!tiny.path.join("ct2").exists(), "sources are cleaned up");
    assert!(matches!(
        events.first(),
        Some(InstallEvent::Fetching {
            step: 1,
            steps: 1,
            ..
        })
    ));
    assert!(matches!(
        events.last(),
        Some(InstallEvent::Installed { .. })
    ));

    // The converted config is what candle's Whisper config reads.
    let cfg: candle_transformers::models::whisper::Config = serde_json::from_str(
        &std::fs::read_to_string(tiny.path.join("config.json")).expect("config"),
    )
    .expect("parse config");
    assert_eq!(
        (cfg.d_model, cfg.encoder_layers, cfg.vocab_size),
        (384, 4, 51864)
    );
    assert!(cfg.suppress_tokens.contains(&50257));

    // A second install is a no-op.
    let mut events = Vec::new();
    let again = fetch::install("tiny.en", models.path(), &cache, &mut |e| events.push(e))
        .expect("reinstall");
    assert_eq!(again, tiny);
    assert!(matches!(events.as_slice(), [InstallEvent::UpToDate { .. }]));

    let vad = fetch::install("silero-vad", models.path(), &cache, &mut |_| {}).expect("vad");
    assert_eq!(vad.kind, ModelKind::SileroVad);
    let weights = candle_core::safetensors::load(
        vad.path.join("silero_vad_16k.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("load vad weights");
    assert_eq!(weights.len(), 15);
    assert_eq!(weights["stft_conv.weight"].dims(), &[258, 1, 256]);

    let listed: Vec<String> = fetch::list_installed(models.path())
        .expect("list")
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(listed, ["silero-vad", "tiny.en"]);

    // A damaged install (marker gone) is rebuilt, not trusted.
    std::fs::remove_file(tiny.path.join(fetch::MARKER)).expect("rm marker");
    assert!(fetch::installed(models.path(), "tiny.en").is_none());
    fetch::install("tiny.en", models.path(), &cache, &mut |_| {}).expect("repair");
    assert!(fetch::installed(models.path(), "tiny.en").is_some());
}

#[test]
fn unknown_model_names_the_known_ones() {
    let models = tempfile::tempdir().expect("tempdir");
    let err =
        fetch::install("huge", models.path(), models.path(), &mut |_| {}).expect_err("unknown");
    assert!(matches!(err, FetchError::UnknownModel { .. }));
    let msg = err.to_string();
    assert!(msg.contains("tiny.en") && msg.contains("base"), "{msg}");
    assert!(fetch::list_installed(&models.path().join("nope"))
        .expect("list")
        .is_empty());
}

#[test]
fn catalogue_pins_every_archive() {
    for entry in fetch::catalogue() {
        assert!(!entry.packages.is_empty());
        for p in entry.packages {
            assert_eq!(p.sha256.len(), 64, "{}", p.name);
            assert!(p.sha256.chars().all(|c| c.is_ascii_hexdigit()));
        }
        if entry.kind == ModelKind::Whisper {
            assert!(entry.config.is_some() && entry.tokenizer.is_some());
        }
    }
    assert!(fetch::find("base").is_some() && fetch::find("small").is_none());
}
