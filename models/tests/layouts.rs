//! The layouts of the larger Whisper sizes, without their weights: large-v3
//! and large-v3-turbo read 128 mel bins, know 100 languages (`<|yue|>`
//! shifts every special token after the languages by one), and turbo has far
//! fewer decoder layers than encoder layers. The registries carry none of
//! those weights, so these tests generate small checkpoints of those shapes
//! with random weights (d_model 64), import them as an operator would, and
//! run the whole transcription path on them: mechanics only. What a random
//! model writes is noise, and nothing here is called accuracy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use murmur_models::fetch;
use murmur_models::import;
use murmur_models::testaudio;
use murmur_models::whisper::{DecodeOptions, Task, WhisperModel};
use serde_json::{json, Value};

/// First special token after the language tokens in the 99-language
/// vocabulary (`<|translate|>`); large-v3 puts `<|yue|>` here.
const FIRST_AFTER_LANGUAGES: u64 = 50_358;

/// The dimensions of the generated checkpoint.
struct Shape {
    encoder_layers: usize,
    decoder_layers: usize,
}

/// Deterministic small weights (xorshift), so a failure reproduces.
fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// The tensor names and shapes of a safetensors file, read from its header.
fn header(path: &Path) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (k.clone(), shape)
        })
        .collect()
}

/// The layer index of a `…layers.N.…` tensor of `stack` (encoder/decoder).
fn layer_of(name: &str, stack: &str) -> Option<usize> {
    let rest = name.strip_prefix(&format!("model.{stack}.layers."))?;
    rest.split('.').next()?.parse().ok()
}

/// Shifts a token id of the 99-language vocabulary to large-v3's.
fn v3_id(id: u64) -> u64 {
    if id >= FIRST_AFTER_LANGUAGES {
        id + 1
    } else {
        id
    }
}

/// A transformers Whisper directory with large-v3's vocabulary and mel
/// bins, `shape`'s layer counts and random weights, built from the names
/// and configuration of the real multilingual base model.
fn random_v3_checkpoint(into: &Path, shape: &Shape) -> PathBuf {
    let base = fetch::install_cached("base").expect("install base").path;
    let dir = into.join(format!(
        "whisper-{}x{}-128mel",
        shape.encoder_layers, shape.decoder_layers
    ));
    std::fs::create_dir_all(&dir).unwrap();

    // base: d_model 512, ffn 2048, 80 mel bins, 51,865 tokens.
    let resize = |d: usize| match d {
        512 => 64,
        2048 => 256,
        80 => 128,
        51_865 => 51_866,
        other => other,
    };
    let mut tensors = HashMap::new();
    let mut seed = 1u64;
    for (name, dims) in header(&base.join("model.safetensors")) {
        // Encoder layers are repeated from layer 0's names; decoder layers
        // past the wanted count are left out.
        let copies: Vec<String> = if let Some(l) = layer_of(&name, "encoder") {
            if l != 0 {
                continue;
            }
            (0..shape.encoder_layers)
                .map(|i| name.replacen("layers.0.", &format!("layers.{i}."), 1))
                .collect()
        } else if let Some(l) = layer_of(&name, "decoder") {
            if l >= shape.decoder_layers {
                continue;
            }
            vec![name.clone()]
        } else {
            vec![name.clone()]
        };
        let dims: Vec<usize> = dims.into_iter().map(resize).collect();
        for copy in copies {
            seed += 1;
            let n = dims.iter().product();
            let values = if copy.contains("layer_norm") && copy.ends_with(".weight") {
                vec![1.0; n]
            } else if copy.ends_with(".bias") {
                vec![0.0; n]
            } else {
                noise(n, seed, 0.05)
            };
            let t = Tensor::from_vec(values, dims.as_slice(), &Device::Cpu).unwrap();
            tensors.insert(copy, t);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();

    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    config["d_model"] = json!(64);
    config["encoder_ffn_dim"] = json!(256);
    config["decoder_ffn_dim"] = json!(256);
    config["encoder_attention_heads"] = json!(4);
    config["decoder_attention_heads"] = json!(4);
    config["encoder_layers"] = json!(shape.encoder_layers);
    config["decoder_layers"] = json!(shape.decoder_layers);
    config["num_mel_bins"] = json!(128);
    config["vocab_size"] = json!(51_866);
    config["lang_ids"] = json!((50_259..=FIRST_AFTER_LANGUAGES).collect::<Vec<u64>>());
    let suppress: Vec<u64> = config["suppress_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| v3_id(t.as_u64().unwrap()))
        .collect();
    config["suppress_tokens"] = json!(suppress);
    // Heads of the last decoder layer, as turbo's own list names.
    let last = shape.decoder_layers - 1;
    config["alignment_heads"] = json!([[last, 0], [last, 2]]);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    // large-v3's tokenizer: `<|yue|>` after the 99 languages, the rest of
    // the special tokens one id later.
    let mut tokenizer: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("tokenizer.json")).unwrap())
            .unwrap();
    let added = tokenizer["added_tokens"].as_array_mut().unwrap();
    let mut template = None;
    for token in added.iter_mut() {
        let id = token["id"].as_u64().unwrap();
        if id == FIRST_AFTER_LANGUAGES - 1 {
            template = Some(token.clone());
        }
        token["id"] = json!(v3_id(id));
    }
    let mut yue = template.expect("the last language token");
    yue["id"] = json!(FIRST_AFTER_LANGUAGES);
    yue["content"] = json!("<|yue|>");
    added.push(yue);
    added.sort_by_key(|t| t["id"].as_u64());
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    dir
}

fn jfk() -> Vec<f32> {
    murmur_models::audio::decode_file(&testaudio::jfk().unwrap())
        .unwrap()
        .samples
}

/// Runs the whole path on an imported random checkpoint: language
/// detection over 100 languages, decoding with temperature fallback, word
/// timing through the configured alignment heads, translation and a forced
/// `yue`; checks the shapes of what comes out, never its words.
fn exercise(shape: Shape, name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = random_v3_checkpoint(tmp.path(), &shape);
    let models = tmp.path().join("models");
    let installed = import::import(&dir, Some(name), &models).expect("import");
    assert_eq!(installed.name, name);

    let model = WhisperModel::load(&installed.path, &Device::Cpu).expect("load");
    assert_eq!(model.config().num_mel_bins, 128);
    assert_eq!(model.config().decoder_layers, shape.decoder_layers);
    assert_eq!(model.config().encoder_layers, shape.encoder_layers);
    assert!(model.is_multilingual());

    let audio = jfk();
    let duration = audio.len() as f64 / 16_000.0;
    let opts = DecodeOptions {
        word_timestamps: true,
        ..DecodeOptions::default()
    };
    let transcript = model
        .transcribe(&audio, &opts, &mut |_| true)
        .expect("transcribe");
    // Detection weighed the 100 languages; the candidates come best first.
    let language = transcript.language.as_ref().expect("a detected language");
    let candidates = transcript.language_candidates.as_deref().unwrap_or(&[]);
    assert!(!candidates.is_empty() && candidates.len() <= 5);
    assert_eq!(&candidates[0].language, language);
    for pair in candidates.windows(2) {
        assert!(pair[0].probability >= pair[1].probability);
    }
    // The generated weights are fixed, so this run decodes the same noise
    // every time: segments with timed words, so the path was exercised.
    assert!(
        transcript
            .segments
            .iter()
            .any(|s| !s.tokens.is_empty() && s.words.as_ref().is_some_and(|w| !w.is_empty())),
        "{transcript:?}"
    );
    for segment in &transcript.segments {
        assert!(segment.start >= 0.0 && segment.start <= segment.end);
        assert!(segment.end <= duration + 0.02, "{segment:?}");
        assert!(segment.tokens.iter().all(|&t| t < 51_866));
        let mut last = segment.start;
        for word in segment.words.as_deref().unwrap_or(&[]) {
            assert!(
                word.start <= word.end && word.start + 1e-6 >= last,
                "{word:?}"
            );
            assert!((0.0..=1.0).contains(&word.probability));
            last = word.start;
        }
    }

    // The 100th language only exists in this layout.
    let forced = DecodeOptions {
        language: Some("yue".into()),
        task: Task::Translate,
        temperatures: vec![0.0],
        ..DecodeOptions::default()
    };
    let translated = model
        .transcribe(&audio[..16_000 * 3], &forced, &mut |_| true)
        .expect("translate with a forced yue");
    assert_eq!(translated.language.as_deref(), Some("yue"));
}

#[test]
fn a_large_v3_shaped_checkpoint_runs_end_to_end() {
    exercise(
        Shape {
            encoder_layers: 4,
            decoder_layers: 4,
        },
        "random-v3",
    );
}

#[test]
fn a_turbo_shaped_checkpoint_with_a_short_decoder_runs_end_to_end() {
    exercise(
        Shape {
            encoder_layers: 6,
            decoder_layers: 2,
        },
        "random-v3-turbo",
    );
}
