//! A streamed ZIP of stored files: entries are written as their bytes
//! arrive (method "stored", no compression: WAV barely deflates), each
//! followed by a data descriptor with its CRC-32, which is only known at
//! its end; then the central directory. Nothing is buffered beyond one
//! chunk, so stems of any length cost the server no memory or disk.
//!
//! Limits: no ZIP64, so the archive must stay under 4 GiB ([`layout`]
//! refuses larger ones); sizes are known up front (the stored files'
//! plaintext lengths), so they are written in the local headers as well as
//! the descriptors, which lets streaming readers find each entry's end.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

const LOCAL_HEADER: u32 = 0x0403_4b50;
const DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL: u32 = 0x0605_4b50;
/// 2.0: the version that knows data descriptors.
const VERSION: u16 = 20;
/// General purpose bit 3: CRC-32 in a data descriptor after the data.
const FLAGS: u16 = 1 << 3;

/// One entry: its name in the archive and its length in bytes.
pub struct Entry {
    pub name: String,
    pub len: u64,
}

/// The archive's total length, or None when it would need ZIP64.
pub fn layout(entries: &[Entry]) -> Option<u64> {
    let mut total: u64 = 22;
    for e in entries {
        let name = e.name.len() as u64;
        total += 30 + name + e.len + 16 + 46 + name;
    }
    let fits = entries.iter().all(|e| e.len <= u32::MAX as u64) && total <= u32::MAX as u64;
    fits.then_some(total)
}

/// MS-DOS time and date of `at` (what ZIP headers carry).
pub fn dos_time(at: chrono::DateTime<chrono::Utc>) -> (u16, u16) {
    use chrono::{Datelike, Timelike};
    let time = ((at.hour() << 11) | (at.minute() << 5) | (at.second() / 2)) as u16;
    let year = at.year().clamp(1980, 2107) as u32 - 1980;
    let date = ((year << 9) | (at.month() << 5) | at.day()) as u16;
    (time, date)
}

/// Writes a ZIP of `entries` to `out`, each entry's bytes read from its
/// stream in turn. Stops at the first error (of a stream, or `out` gone):
/// the client then sees a truncated body, never a wrong one.
pub async fn write<S, E>(
    entries: Vec<(Entry, S)>,
    modified: (u16, u16),
    out: &tokio::sync::mpsc::Sender<Bytes>,
) -> Result<(), String>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let send = |b: Bytes| async move {
        out.send(b)
            .await
            .map_err(|_| "the client went away".to_string())
    };
    let (time, date) = modified;
    let mut offset: u32 = 0;
    let mut central = BytesMut::new();
    let count = entries.len() as u16;
    for (entry, mut body) in entries {
        let name = entry.name.as_bytes();
        let len = u32::try_from(entry.len).map_err(|_| "entry too large for ZIP".to_string())?;
        let mut head = BytesMut::with_capacity(30 + name.len());
        head.put_u32_le(LOCAL_HEADER);
        head.put_u16_le(VERSION);
        head.put_u16_le(FLAGS);
        head.put_u16_le(0); // stored
        head.put_u16_le(time);
        head.put_u16_le(date);
        head.put_u32_le(0); // CRC-32: in the descriptor
        head.put_u32_le(len);
        head.put_u32_le(len);
        head.put_u16_le(name.len() as u16);
        head.put_u16_le(0);
        head.put_slice(name);
        let header_len = head.len() as u32;
        send(head.freeze()).await?;

        let mut crc = crc32fast::Hasher::new();
        let mut written: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            crc.update(&chunk);
            written += chunk.len() as u64;
            send(chunk).await?;
        }
        if written != entry.len {
            return Err(format!(
                "{} held {written} bytes, not the {} expected",
                entry.name, entry.len
            ));
        }
        let crc = crc.finalize();
        let mut tail = BytesMut::with_capacity(16);
        tail.put_u32_le(DESCRIPTOR);
        tail.put_u32_le(crc);
        tail.put_u32_le(len);
        tail.put_u32_le(len);
        send(tail.freeze()).await?;

        central.put_u32_le(CENTRAL_HEADER);
        central.put_u16_le(VERSION);
        central.put_u16_le(VERSION);
        central.put_u16_le(FLAGS);
        central.put_u16_le(0);
        central.put_u16_le(time);
        central.put_u16_le(date);
        central.put_u32_le(crc);
        central.put_u32_le(len);
        central.put_u32_le(len);
        central.put_u16_le(name.len() as u16);
        central.put_u16_le(0); // extra
        central.put_u16_le(0); // comment
        central.put_u16_le(0); // disk
        central.put_u16_le(0); // internal attributes
        central.put_u32_le(0); // external attributes
        central.put_u32_le(offset);
        central.put_slice(name);
        offset = offset
            .checked_add(header_len + len + 16)
            .ok_or_else(|| "archive too large for ZIP".to_string())?;
    }
    let central_len = central.len() as u32;
    central.put_u32_le(END_OF_CENTRAL);
    central.put_u16_le(0);
    central.put_u16_le(0);
    central.put_u16_le(count);
    central.put_u16_le(count);
    central.put_u32_le(central_len);
    central.put_u32_le(offset);
    central.put_u16_le(0);
    send(central.freeze()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_written_archive_has_the_announced_length_and_reads_back() {
        let files: Vec<(&str, Vec<u8>)> =
            vec![("a.wav", b"RIFF0000WAVE".repeat(1000)), ("b.wav", vec![])];
        let entries: Vec<Entry> = files
            .iter()
            .map(|(n, d)| Entry {
                name: n.to_string(),
                len: d.len() as u64,
            })
            .collect();
        let total = layout(&entries).unwrap();
        let streams = files
            .iter()
            .zip(entries)
            .map(|((_, d), e)| {
                let chunks: Vec<Result<Bytes, String>> = d
                    .chunks(777)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                (e, futures_util::stream::iter(chunks))
            })
            .collect();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let writer = tokio::spawn(async move { write(streams, (0, 0x21), &tx).await });
        let mut zip = Vec::new();
        while let Some(b) = rx.recv().await {
            zip.extend_from_slice(&b);
        }
        writer.await.unwrap().unwrap();
        assert_eq!(zip.len() as u64, total);
        // The end record points at a central directory of two entries.
        let end = &zip[zip.len() - 22..];
        assert_eq!(&end[..4], &END_OF_CENTRAL.to_le_bytes());
        assert_eq!(u16::from_le_bytes([end[10], end[11]]), 2);
        let at = u32::from_le_bytes([end[16], end[17], end[18], end[19]]) as usize;
        assert_eq!(&zip[at..at + 4], &CENTRAL_HEADER.to_le_bytes());
        let crc = u32::from_le_bytes([zip[at + 16], zip[at + 17], zip[at + 18], zip[at + 19]]);
        assert_eq!(crc, crc32fast::hash(&files[0].1));
    }

    #[test]
    fn archives_over_four_gib_are_refused() {
        let big = |name: &str| Entry {
            name: name.into(),
            len: 3 << 30,
        };
        assert!(layout(&[big("a"), big("b")]).is_none());
    }
}
