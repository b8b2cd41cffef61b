//! Arbitrary bytes as a TensorFlow checkpoint: the input is split into the
//! `.index` table and one data shard, written to a temp folder (the reader
//! opens paths), opened with [`TensorBundle::open`] and every tensor read.
//!
//! Fuzz builds (`cfg(fuzzing)`) skip the reader's CRC-32C comparisons, or
//! almost every input would stop at the first checksum; everything after it
//! is what a damaged file with a matching checksum reaches.
//!
//! Properties: no panic, no allocation past the shard's size, no hang.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use murmur_models::separate::tfbundle::TensorBundle;

struct Setup {
    _dir: tempfile::TempDir,
    prefix: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let prefix = dir.path().join("model");
        Setup { _dir: dir, prefix }
    })
}

fuzz_target!(|data: &[u8]| {
    // First four bytes: the index's length (little-endian, modulo the rest);
    // then the index; the remainder is shard 0 of 1.
    if data.len() < 4 {
        return;
    }
    let (len, rest) = data.split_at(4);
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize % (rest.len() + 1);
    let (index, shard) = rest.split_at(len);
    let setup = setup();
    let mut index_path = setup.prefix.clone().into_os_string();
    index_path.push(".index");
    let mut shard_path = setup.prefix.clone().into_os_string();
    shard_path.push(".data-00000-of-00001");
    std::fs::write(&index_path, index).expect("write index");
    std::fs::write(&shard_path, shard).expect("write shard");
    let Ok(bundle) = TensorBundle::open(&setup.prefix) else {
        return;
    };
    let names: Vec<String> = bundle.names().map(str::to_string).collect();
    for name in names {
        if let Some(entry) = bundle.entry(&name) {
            let _ = entry.num_elements();
        }
        let _ = bundle.read_f32(&name);
    }
});
