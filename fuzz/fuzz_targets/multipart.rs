//! The upload body as the `/v1/files` and `/v1/jobs` routes read it, without
//! a server: warp's multipart parser behind [`files::multipart_form`] (the
//! same filter and refusal mapping the routes use) on an arbitrary body and
//! optionally an arbitrary `Content-Type`, then every part's name, file name
//! (through [`files::clean_name`], which makes the stored display name),
//! content type and bytes, read with the routes' text-field bound.
//!
//! What stays out: the handlers' storage and quota logic needs a running
//! store and is covered by the integration tests; the stored bytes go to the
//! `audio_decode` target.
//!
//! Properties: no panic, no hang, and a cleaned name never holds a path
//! separator or control character, is never empty and at most 255 chars.

#![no_main]

use std::sync::OnceLock;

use bytes::Buf;
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;
use murmur::api::files;

const BOUNDARY: &str = "murmur-fuzz-boundary";
/// Bytes read from one part before giving up, like the routes' text bound.
const MAX_PART: usize = 64 * 1024;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn check_name(raw: &str) {
    let name = files::clean_name(raw);
    assert!(!name.trim().is_empty(), "empty name from {raw:?}");
    assert!(name.chars().count() <= 255, "long name from {raw:?}");
    assert!(
        !name.contains(['/', '\\']) && !name.chars().any(char::is_control),
        "unsafe name {name:?} from {raw:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    // First byte: 0..=31 takes that many following bytes as the Content-Type
    // header; anything else uses the well-formed one with our boundary.
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let (content_type, body) = if usize::from(head) < 32 && rest.len() >= usize::from(head) {
        let (ct, body) = rest.split_at(usize::from(head));
        (String::from_utf8_lossy(ct).into_owned(), body)
    } else {
        (format!("multipart/form-data; boundary={BOUNDARY}"), rest)
    };
    check_name(&String::from_utf8_lossy(body));
    let Ok(header) = warp::http::HeaderValue::from_str(&content_type) else {
        return;
    };
    runtime().block_on(async {
        let form = warp::test::request()
            .method("POST")
            .path("/v1/files")
            .header("content-type", header)
            .body(body.to_vec())
            .filter(&files::multipart_form())
            .await;
        let Ok(Ok(mut form)) = form else { return };
        while let Some(part) = form.next().await {
            let Ok(part) = part else { break };
            let _ = part.name().len();
            let _ = part.content_type().map(str::len);
            check_name(part.filename().unwrap_or("upload"));
            let mut stream = part.stream();
            let mut read = 0usize;
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { break };
                read += chunk.remaining();
                if read > MAX_PART {
                    break;
                }
            }
        }
    });
});
