//! How fast files seal and open on this machine, beside a plain copy of
//! the same bytes through the same writer and reader shapes (so the ratio
//! is the cost of encryption at rest). Not a test: it prints figures.
//!
//! cargo run --release -p murmur-seal --example throughput [MiB]

use std::io::{Cursor, Read, Write};
use std::time::Instant;

use murmur_seal::{DataKey, SealReader, SealWriter};

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let plain: Vec<u8> = (0..mib << 20).map(|i| (i * 7 % 251) as u8).collect();
    let key = DataKey::generate();
    let piece = 64 * 1024;
    let rounds = 3;
    let mut rows = Vec::new();
    for _ in 0..rounds {
        // Plain: the bytes copied through a Vec writer and a Cursor reader.
        let t = Instant::now();
        let mut copy = Vec::with_capacity(plain.len());
        for part in plain.chunks(piece) {
            copy.write_all(part).unwrap();
        }
        let mut back = Vec::with_capacity(plain.len());
        Cursor::new(&copy).read_to_end(&mut back).unwrap();
        let plain_s = t.elapsed().as_secs_f64();
        assert_eq!(back.len(), plain.len());

        let t = Instant::now();
        let mut w = SealWriter::new(
            Vec::with_capacity(plain.len() + plain.len() / 1000),
            &key,
            b"file/f_bench",
        );
        for part in plain.chunks(piece) {
            w.write_all(part).unwrap();
        }
        let sealed = w.finish().unwrap();
        let seal_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut back = Vec::with_capacity(plain.len());
        SealReader::new(Cursor::new(&sealed), &key, b"file/f_bench")
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        let open_s = t.elapsed().as_secs_f64();
        assert!(back == plain);
        rows.push((plain_s, seal_s, open_s));
    }
    rows.sort_by(|a, b| (a.1 + a.2).total_cmp(&(b.1 + b.2)));
    let (plain_s, seal_s, open_s) = rows[rounds / 2];
    let gbs = |s: f64| (mib as f64 / 1024.0) / s;
    println!("{mib} MiB, median of {rounds}, one core");
    println!("plain copy (write + read): {:.3} s", plain_s);
    println!(
        "seal: {:.3} s ({:.2} GiB/s); open: {:.3} s ({:.2} GiB/s)",
        seal_s,
        gbs(seal_s),
        open_s,
        gbs(open_s)
    );
    println!(
        "seal + open against a plain write + read: {:.1}x",
        (seal_s + open_s) / plain_s
    );
    let hour_of_wav = 3600.0 * 16_000.0 * 2.0 / f64::from(1 << 20);
    println!(
        "an hour of 16 kHz 16-bit mono WAV ({hour_of_wav:.0} MiB) seals in {:.2} s and opens in {:.2} s",
        seal_s * hour_of_wav / mib as f64,
        open_s * hour_of_wav / mib as f64
    );
}
