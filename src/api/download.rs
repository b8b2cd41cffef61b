//! Headers for serving stored bytes back (uploads, stems): a content type
//! Murmur chose, never the uploader's (a `text/html` upload must not render
//! as a page on our origin), `nosniff` so browsers do not guess one, and an
//! attachment filename encoded per RFC 6266 / RFC 5987 so a name with
//! quotes, control or non-ASCII characters cannot break the header.
//!
//! Stored bytes are sealed (encryption at rest): [`StoredBody`] opens them
//! chunk by chunk as the client reads, on the runtime (a 64 KiB chunk opens
//! in tens of microseconds), so a slow client holds no thread.

use std::io;
use std::path::Path;

use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use murmur_seal::{ChunkOpener, DataKey, HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use warp::http::header::{self, HeaderMap, HeaderValue};

/// A stored file opened for download: its plaintext length, its first bytes
/// (to choose a content type) and the stream of its bytes (answered with
/// [`streamed`], or read into a ZIP of stems).
pub struct StoredBody {
    pub len: u64,
    pub head: Vec<u8>,
    pub body: BoxStream<'static, io::Result<bytes::Bytes>>,
}

/// A 200 response whose body is `chunks`, sent as they are produced (never
/// held whole). An error item ends the body early, so the client sees a
/// truncated response, never a wrong one.
pub fn streamed<S, B, E>(chunks: S) -> warp::reply::Response
where
    S: futures_util::Stream<Item = Result<B, E>> + Send + 'static,
    B: Into<bytes::Bytes> + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    use warp::Reply;
    // warp wants a `Sync` stream; it is only ever polled through `&mut`,
    // which `SyncStream` makes `Sync` without a lock.
    warp::reply::stream(sync_wrapper::SyncStream::new(chunks)).into_response()
}

/// Opens a stored file at `path`: sealed with `key` and `context`, or plain
/// (written before encryption at rest). `NotFound` when it does not exist.
pub async fn stored_body(path: &Path, key: &DataKey, context: &str) -> io::Result<StoredBody> {
    let mut file = tokio::fs::File::open(path).await?;
    let sealed_len = file.metadata().await?.len();
    let mut header = vec![0u8; HEADER_LEN];
    let n = read_up_to(&mut file, &mut header).await?;
    header.truncate(n);
    if !murmur_seal::is_sealed_file(&header) {
        file.seek(io::SeekFrom::Start(0)).await?;
        header.truncate(16);
        let body = tokio_util::io::ReaderStream::new(file).boxed();
        return Ok(StoredBody {
            len: sealed_len,
            head: header,
            body,
        });
    }
    let opener = ChunkOpener::new(&header, sealed_len, key, context.as_bytes())?;
    // The first chunk now: its first bytes choose the content type, and a
    // file that does not open fails before the response starts.
    let first = read_chunk(&mut file, &opener, 0).await?;
    let head = first[..first.len().min(16)].to_vec();
    let len = opener.len();
    let rest =
        stream::try_unfold(
            (file, opener, 1u64),
            |(mut file, opener, index)| async move {
                if index >= opener.chunks() {
                    return Ok(None);
                }
                let chunk = read_chunk(&mut file, &opener, index).await.inspect_err(|e| {
            tracing::error!(error = %e, "a stored file failed to open while it was served");
        })?;
                Ok::<_, io::Error>(Some((bytes::Bytes::from(chunk), (file, opener, index + 1))))
            },
        );
    let body = futures_util::StreamExt::chain(
        stream::once(async move { Ok::<_, io::Error>(bytes::Bytes::from(first)) }),
        rest,
    );
    Ok(StoredBody {
        len,
        head,
        body: body.boxed(),
    })
}

async fn read_chunk(
    file: &mut tokio::fs::File,
    opener: &ChunkOpener,
    index: u64,
) -> io::Result<Vec<u8>> {
    let (start, span) = opener.chunk_span(index);
    file.seek(io::SeekFrom::Start(start)).await?;
    let mut buf = vec![0u8; span];
    file.read_exact(&mut buf).await?;
    opener.open_chunk(index, &mut buf)?;
    Ok(buf)
}

async fn read_up_to(file: &mut tokio::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The audio type of a file from its first bytes, or
/// `application/octet-stream` when it is none Murmur knows.
pub fn sniff_audio(head: &[u8]) -> &'static str {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"RIFF") && at(8, b"WAVE") {
        "audio/wav"
    } else if at(0, b"fLaC") {
        "audio/flac"
    } else if at(0, b"OggS") {
        "audio/ogg"
    } else if at(0, b"ID3") || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0) {
        "audio/mpeg"
    } else if at(4, b"ftyp") {
        "audio/mp4"
    } else if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        "audio/webm"
    } else {
        "application/octet-stream"
    }
}

/// Sets Content-Type, `X-Content-Type-Options: nosniff` and an attachment
/// Content-Disposition naming `filename`.
pub fn attachment(headers: &mut HeaderMap, content_type: &'static str, filename: &str) {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&content_disposition(filename)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
}

/// `attachment; filename="<ASCII stand-in>"; filename*=UTF-8''<name>`: old
/// clients read the plain ASCII name, current ones the exact one.
pub fn content_disposition(filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(filename.len() * 3);
    for byte in filename.bytes() {
        // RFC 5987 attr-char: everything else is percent-encoded.
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_are_safe_and_exact() {
        assert_eq!(
            content_disposition("a b.wav"),
            "attachment; filename=\"a b.wav\"; filename*=UTF-8''a%20b.wav"
        );
        let tricky = content_disposition("x\"; filename=evil.html\r\nSet-Cookie: a=b é.wav");
        assert!(!tricky.contains('\r') && !tricky.contains('\n'));
        assert!(tricky
            .starts_with("attachment; filename=\"x_; filename=evil.html__Set-Cookie: a=b _.wav\""));
        assert!(tricky.ends_with("%C3%A9.wav"));
        assert!(HeaderValue::from_str(&tricky).is_ok());
    }

    #[test]
    fn audio_is_recognised_and_the_rest_is_octets() {
        assert_eq!(sniff_audio(b"RIFF\0\0\0\0WAVEfmt "), "audio/wav");
        assert_eq!(sniff_audio(b"fLaC\0\0"), "audio/flac");
        assert_eq!(sniff_audio(b"<html><script>"), "application/octet-stream");
        assert_eq!(sniff_audio(b""), "application/octet-stream");
    }
}
