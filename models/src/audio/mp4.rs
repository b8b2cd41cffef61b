//! Just enough of the ISO base media format (MP4/M4A) to read the audio
//! track's edit list, which symphonia 0.5 does not apply.

use std::io::{Read, Seek, SeekFrom};

use super::{Input, ReadSeek};

/// Frames of the first audio track to drop at the start and to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edit {
    pub skip_frames: u64,
    pub keep_frames: Option<u64>,
}

/// A `moov` box larger than this is not worth reading for an edit list.
const MAX_MOOV: u64 = 64 << 20;

/// The edit of the first sound track of an MP4 file, in frames at
/// `sample_rate`; `None` for other files or without an edit list.
pub fn audio_edit(input: Input<'_>, sample_rate: u32) -> Option<Edit> {
    let (mut file, len) = input.open().ok()?;
    let mut head = [0u8; 8];
    file.read_exact(&mut head).ok()?;
    file.seek(SeekFrom::Start(4)).ok()?;
    let mut kind = [0u8; 4];
    file.read_exact(&mut kind).ok()?;
    if &kind != b"ftyp" {
        return None;
    }
    let mut pos = 0u64;
    while pos + 8 <= len {
        file.seek(SeekFrom::Start(pos)).ok()?;
        file.read_exact(&mut head).ok()?;
        let mut size = u64::from(u32::from_be_bytes(head[..4].try_into().ok()?));
        let mut header = 8;
        if size == 1 {
            let mut large = [0u8; 8];
            file.read_exact(&mut large).ok()?;
            size = u64::from_be_bytes(large);
            header = 16;
        } else if size == 0 {
            size = len - pos;
        }
        if size < header {
            return None;
        }
        if &head[4..8] == b"moov" {
            if size > MAX_MOOV {
                return None;
            }
            let mut moov = vec![0u8; (size - header) as usize];
            file.read_exact(&mut moov).ok()?;
            return edit_in_moov(&moov, sample_rate);
        }
        // A box size near 2^64 must end the walk, not wrap it around.
        pos = pos.checked_add(size)?;
    }
    None
}

/// How far into a file symphonia's probe looks for the `ftyp` marker
/// (its search limit is 1 MiB per metadata block it skips).
const FTYP_SEARCH: u64 = 4 << 20;
/// `ftyp` markers checked; more is not a real MP4.
const MAX_FTYP_MARKERS: usize = 16;
/// Box nesting followed; the sample tables sit at depth 5.
const MAX_DEPTH: usize = 8;

/// Describes the first sample table (`stts`, `stsc`, `stsz`, `stco`,
/// `co64`) whose entry count needs more bytes than the file holds for
/// it, in any MP4 box tree that starts at an `ftyp` marker in the first
/// [`FTYP_SEARCH`] bytes (symphonia starts wherever its probe finds that
/// marker); `None` when there is none. Reads box headers and counts
/// only, never a table.
pub(super) fn oversized_sample_table(input: Input<'_>) -> Option<String> {
    let (mut file, len) = input.open().ok()?;
    let mut head = Vec::new();
    (&mut file).take(FTYP_SEARCH).read_to_end(&mut head).ok()?;
    let starts = head
        .windows(4)
        .enumerate()
        .filter(|(i, w)| *i >= 4 && *w == b"ftyp")
        .map(|(i, _)| (i - 4) as u64)
        .take(MAX_FTYP_MARKERS);
    for start in starts {
        if let Some(found) = check_boxes(file.as_mut(), len, start, len, 0) {
            return Some(found);
        }
    }
    None
}

/// Walks the boxes in `[pos, end)` of `file`.
fn check_boxes(
    file: &mut dyn ReadSeek,
    file_len: u64,
    mut pos: u64,
    end: u64,
    depth: usize,
) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    while pos.checked_add(8)? <= end {
        let mut head = [0u8; 8];
        file.seek(SeekFrom::Start(pos)).ok()?;
        file.read_exact(&mut head).ok()?;
        let mut size = u64::from(u32::from_be_bytes(head[..4].try_into().ok()?));
        let mut header = 8u64;
        if size == 1 {
            let mut large = [0u8; 8];
            file.read_exact(&mut large).ok()?;
            size = u64::from_be_bytes(large);
            header = 16;
        } else if size == 0 {
            size = end - pos;
        }
        if size < header {
            return None;
        }
        let kind: [u8; 4] = head[4..8].try_into().ok()?;
        let body_start = pos + header;
        // What a reader can actually get of the body: the file may end
        // before the box says it does.
        let body_end = pos.saturating_add(size).min(end).min(file_len);
        let available = body_end.saturating_sub(body_start);
        match &kind {
            b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"edts" | b"moof" | b"traf"
            | b"mvex" => {
                if let Some(found) = check_boxes(file, file_len, body_start, body_end, depth + 1) {
                    return Some(found);
                }
            }
            b"stts" | b"stsc" | b"stsz" | b"stco" | b"co64" => {
                // Full box: version and flags, then the counts.
                let mut fields = [0u8; 12];
                file.seek(SeekFrom::Start(body_start)).ok()?;
                let got = read_up_to(file, &mut fields);
                let entry_len: u64 = match &kind {
                    b"stts" | b"co64" => 8,
                    b"stsc" => 12,
                    _ => 4,
                };
                let (count_at, fixed) = if &kind == b"stsz" { (8, 12) } else { (4, 8) };
                if got < count_at + 4 {
                    return None;
                }
                let count = u64::from(u32::from_be_bytes(
                    fields[count_at..count_at + 4].try_into().ok()?,
                ));
                // stsz lists sizes only when all samples do not share one.
                let uniform = &kind == b"stsz" && fields[4..8] != [0; 4];
                let needed = if uniform { 0 } else { count * entry_len };
                if needed > available.saturating_sub(fixed) {
                    return Some(format!(
                        "its {} table claims {count} entries but the file holds {} bytes \
                         for it",
                        String::from_utf8_lossy(&kind),
                        available
                    ));
                }
            }
            _ => {}
        }
        pos = pos.checked_add(size)?;
    }
    None
}

/// Reads as much of `buf` as the file has; answers the bytes read.
fn read_up_to(file: &mut dyn ReadSeek, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
}

/// Child boxes of a container body: (type, body).
fn boxes(mut data: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 8 {
        let size = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = [data[4], data[5], data[6], data[7]];
        let (start, size) = match size {
            0 => (8, data.len()),
            1 if data.len() >= 16 => {
                let large = u64::from_be_bytes(data[8..16].try_into().unwrap_or([0; 8]));
                (16, usize::try_from(large).unwrap_or(usize::MAX))
            }
            n => (8, n),
        };
        if size < start || size > data.len() {
            break;
        }
        out.push((kind, &data[start..size]));
        data = &data[size..];
    }
    out
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(data)
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, b)| b)
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Timescale of an `mvhd` or `mdhd` body.
fn timescale(body: &[u8]) -> Option<u32> {
    match body.first()? {
        1 => be_u32(body, 20),
        _ => be_u32(body, 12),
    }
}

fn edit_in_moov(moov: &[u8], sample_rate: u32) -> Option<Edit> {
    let movie_scale = timescale(child(moov, b"mvhd")?)?;
    let trak = boxes(moov).into_iter().find_map(|(kind, body)| {
        let mdia = child(body, b"mdia")?;
        let hdlr = child(mdia, b"hdlr")?;
        (kind == *b"trak" && hdlr.get(8..12) == Some(b"soun")).then_some(body)
    })?;
    let media_scale = timescale(child(child(trak, b"mdia")?, b"mdhd")?)?;
    let elst = child(child(trak, b"edts")?, b"elst")?;
    let version = *elst.first()?;
    let count = be_u32(elst, 4)? as usize;
    let entry_len = if version == 1 { 20 } else { 12 };
    // Skip empty edits (media time -1); the first real one is the audio.
    for i in 0..count {
        let at = 8 + i * entry_len;
        let (duration, media_time) = if version == 1 {
            (be_u64(elst, at)?, be_u64(elst, at + 8)? as i64)
        } else {
            (
                u64::from(be_u32(elst, at)?),
                i64::from(be_u32(elst, at + 4)? as i32),
            )
        };
        if media_time < 0 {
            continue;
        }
        if movie_scale == 0 || media_scale == 0 {
            return None;
        }
        let rate = u64::from(sample_rate);
        let skip_frames = media_time as u64 * rate / u64::from(media_scale);
        let keep_frames = (duration > 0).then(|| duration * rate / u64::from(movie_scale));
        return Some(Edit {
            skip_frames,
            keep_frames,
        });
    }
    None
}
