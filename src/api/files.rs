//! `/v1/files`: streamed uploads, metadata, bytes, deletion.
//!
//! An upload is written to a hidden `.part` file while it streams, checked
//! against the tier's file-size limit and the storage quota as bytes
//! arrive, decoded whole to measure its length (the tier's maximum audio
//! length applies to that, not to the header's claim), then renamed into
//! place and only then recorded.
//! A broken or refused upload leaves no row and no file.
//!
//! Storage room is claimed in the store's ledger chunk by chunk before the
//! chunk is written, so parallel uploads cannot pass the quota together.
//! A multipart body has at most [`MAX_PARTS`] parts, only the field names
//! its endpoint knows, and [`MAX_TEXT_BYTES`] of text fields in all: beside
//! the file nothing is streamed to disk, so everything else is held in
//! memory and must stay small.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::Path;

use bytes::Buf;
use chrono::Utc;
use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use warp::filters::multipart::{FormData, Part};
use warp::filters::BoxedFilter;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::pending::PendingUpload;
use super::{
    auth_header, json_reply, op, respond, tag_tenant, with_state, ApiError, AppState, Caller,
};
use crate::ids::new_id;
use crate::store::{FileRecord, PageRequest, Reservation, ReserveError, Role, Store};
use murmur_actors::sealed::{upload_context, StoredFile};
use murmur_seal::Sealer;

/// Room for multipart boundaries and part headers when judging an upload
/// by its Content-Length before reading it.
const MULTIPART_SLACK: u64 = 64 * 1024;
/// After refusing an upload, read at most this much more of the body so the
/// client sees the answer rather than a reset connection.
const DRAIN_BUDGET: u64 = 8 * 1024 * 1024;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let state_for_url = state.clone();
    let upload = warp::path!("v1" / "files")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(warp::header::optional::<u64>("content-length"))
        .and(multipart_form())
        .then(|s, a, len, form| async move { respond(upload(s, a, len, form).await) });
    let list = warp::path!("v1" / "files")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(warp::query::<PageRequest>())
        .then(|s, a, p| async move { respond(list(s, a, p).await) });
    let one = warp::path!("v1" / "files" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|id, s, a| async move { respond(get(s, a, id).await) });
    let content = warp::path!("v1" / "files" / String / "content")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|id, s, a| async move { respond(content(s, a, id).await) });
    let delete = warp::path!("v1" / "files" / String)
        .and(warp::delete())
        .and(with_state(state))
        .and(auth_header())
        .then(|id, s, a| async move { respond(delete(s, a, id).await) });
    super::url_input::route(state_for_url)
        .or(upload)
        .unify()
        .or(list)
        .unify()
        .or(one)
        .unify()
        .or(content)
        .unify()
        .or(delete)
        .unify()
        .boxed()
}

/// The multipart body, or why it is not one, as a value: a rejection here
/// would let warp try the other `/v1/files` routes and answer 405.
pub fn multipart_form(
) -> impl Filter<Extract = (Result<FormData, ApiError>,), Error = std::convert::Infallible> + Clone
{
    warp::multipart::form().max_length(None).map(Ok).or_else(
        |rejection: warp::Rejection| async move {
            let detail = match rejection.find::<warp::reject::InvalidHeader>() {
                Some(e) => format!("not a multipart/form-data body with a boundary: {e}"),
                None => {
                    "the body must be multipart/form-data with a field named \"file\"".to_string()
                }
            };
            Ok::<_, std::convert::Infallible>((Err(ApiError::invalid(detail)),))
        },
    )
}

pub fn file_view(f: &FileRecord) -> serde_json::Value {
    json!({"id": f.id, "name": f.name, "size": f.size, "duration_s": f.duration_s,
           "content_type": f.content_type, "created_at": f.created_at})
}

pub(super) fn too_large(limit: u64, tier: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the file is larger than the {tier} tier's limit of {limit} bytes"),
    )
}

/// The answer to audio the upload measurement refused.
fn audio_refused(refusal: crate::media::Refusal, name: &str, tier: &str) -> ApiError {
    use crate::media::Refusal;
    match refusal {
        // 413 like an oversized file: the request is too big for the tier.
        Refusal::TooLong { limit_s } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "audio_too_long",
            format!(
                "{name} holds more than the {tier} tier's maximum of {limit_s} s of audio; \
                 split it or upgrade"
            ),
        ),
        Refusal::Inconsistent {
            header_s,
            decoded_s,
        } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "inconsistent_audio",
            format!(
                "{name} claims to be {header_s:.1} s long but decodes to {decoded_s:.1} s; \
                 the file's header is damaged or edited, re-encode it"
            ),
        ),
        Refusal::Invalid(reason) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_audio",
            format!("{name} is not audio Murmur can decode: {reason}"),
        ),
    }
}

/// Keeps only a safe display name: no path, no control characters, at most
/// 255 characters, never empty. Public for the fuzz targets.
pub fn clean_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let name: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    if name.trim().is_empty() {
        "upload".to_string()
    } else {
        name
    }
}

/// Reads and discards up to `budget` more bytes of the request.
/// The caller of a multipart endpoint, or the refusal; a refused client's
/// body is drained first (up to [`DRAIN_BUDGET`]) so a client still sending
/// reads the answer instead of a reset connection.
pub async fn authenticate_upload(
    state: &AppState,
    auth: Option<&str>,
    operation: super::Operation,
    form: Result<FormData, ApiError>,
) -> Result<(Caller, FormData), ApiError> {
    match (state.authenticate(auth, operation).await, form) {
        (Ok(caller), Ok(form)) => Ok((caller, form)),
        (Err(e), Ok(form)) => {
            drain(form, DRAIN_BUDGET).await;
            Err(e)
        }
        (_, Err(e)) => Err(e),
    }
}

/// Reads and discards a refused multipart request's body (up to
/// [`DRAIN_BUDGET`]), so a client still sending reads the answer.
pub(super) async fn discard(form: FormData) {
    drain(form, DRAIN_BUDGET).await;
}

async fn drain(mut form: FormData, mut budget: u64) {
    while let Some(Ok(part)) = form.next().await {
        let mut stream = part.stream();
        while let Some(Ok(chunk)) = stream.next().await {
            budget = budget.saturating_sub(chunk.remaining() as u64);
            if budget == 0 {
                return;
            }
        }
    }
}

enum Refusal {
    TooLarge,
    OverQuota,
}

/// Streams an upload's bytes into `path`, sealed with `sealer`
/// (encryption at rest), stopping at `max` bytes. Answers the size received
/// (the plaintext, what quotas count) or why it stopped.
async fn write_stream<S, B>(
    mut stream: S,
    path: &Path,
    mut sealer: Sealer,
    max: u64,
    declared: Option<u64>,
    room: &mut Reservation,
) -> Result<Result<u64, Refusal>, ApiError>
where
    S: futures_util::Stream<Item = Result<B, ApiError>> + Unpin,
    B: Buf,
{
    // A request that says how long it is claims that much room at once, or
    // what is left of it (the file is part of the body): parallel uploads
    // are then served first come, first served. Claiming only chunk by
    // chunk, ten uploads racing for room could each hold a share and all be
    // refused. Whether the file fits is still decided by the bytes that
    // arrive, so a file that fits exactly is kept.
    if let Some(len) = declared {
        room.grow_up_to(len.min(max)).map_err(ApiError::from)?;
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(ApiError::internal)?;
    let mut written: u64 = 0;
    let mut sealed = Vec::with_capacity(2 * murmur_seal::SEALED_CHUNK);
    while let Some(mut chunk) = stream.try_next().await? {
        let n = chunk.remaining() as u64;
        written += n;
        if written > max {
            return Ok(Err(Refusal::TooLarge));
        }
        // Claim any room past what is claimed before writing: parallel
        // uploads share the quota.
        let extra = written.saturating_sub(room.bytes());
        if extra > 0 {
            match room.grow(extra) {
                Ok(()) => {}
                Err(ReserveError::Full(_)) => return Ok(Err(Refusal::OverQuota)),
                Err(ReserveError::Store(e)) => return Err(e.into()),
            }
        }
        // A chunk may be several slices: seal them all.
        while chunk.has_remaining() {
            let slice = chunk.chunk();
            sealer.push(slice, &mut sealed);
            let n = slice.len();
            chunk.advance(n);
        }
        if !sealed.is_empty() {
            file.write_all(&sealed).await.map_err(ApiError::internal)?;
            sealed.clear();
        }
    }
    sealer.finish(&mut sealed);
    file.write_all(&sealed).await.map_err(ApiError::internal)?;
    file.sync_all().await.map_err(ApiError::internal)?;
    Ok(Ok(written))
}

async fn upload(
    state: AppState,
    auth: Option<String>,
    content_length: Option<u64>,
    form: Result<FormData, ApiError>,
) -> Result<Response, ApiError> {
    let (caller, form) = authenticate_upload(
        &state,
        auth.as_deref(),
        op("files:write", Role::Member),
        form,
    )
    .await?;
    let (upload, _fields) = receive_form(&state, &caller, content_length, form, &[]).await?;
    let record = upload.keep();
    Ok(tag_tenant(
        json_reply(StatusCode::CREATED, &file_view(&record)),
        &caller,
    ))
}

/// Most parts one multipart body may have, the file included.
pub const MAX_PARTS: usize = 32;
/// Most bytes of text fields (model, language, prompt...) in one body, all
/// fields together: they are held in memory.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Reads a multipart upload: its `file` part is streamed into the caller's
/// storage (checked against the tier's file size and storage quota as bytes
/// arrive, probed as audio, renamed into place, recorded); its other parts,
/// which must be named in `text_fields`, each at most once (an array field,
/// named `...[]`, may repeat: its values are joined with commas), are
/// answered as text. Any failure leaves no file and no row, and so does a
/// request dropped before it keeps the upload (see [`PendingUpload`]).
pub async fn receive_form(
    state: &AppState,
    caller: &Caller,
    content_length: Option<u64>,
    mut form: FormData,
    text_fields: &[&str],
) -> Result<(PendingUpload, HashMap<String, String>), ApiError> {
    let tier = &caller.tier;
    if content_length.is_some_and(|len| len > tier.max_file_bytes.saturating_add(MULTIPART_SLACK)) {
        // Refuse before storing a byte: the client said how much is coming.
        drain(form, DRAIN_BUDGET).await;
        return Err(too_large(tier.max_file_bytes, &tier.name));
    }
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut stored: Option<PendingUpload> = None;
    let outcome: Result<(), ApiError> = async {
        let mut parts = 0;
        let mut text_left = MAX_TEXT_BYTES;
        while let Some(part) = form.next().await {
            let part =
                part.map_err(|e| ApiError::invalid(format!("malformed multipart body: {e}")))?;
            parts += 1;
            if parts > MAX_PARTS {
                return Err(ApiError::invalid(format!(
                    "the multipart body has more than {MAX_PARTS} parts"
                )));
            }
            let name = part.name().to_string();
            if name == "file" {
                if stored.is_some() {
                    return Err(ApiError::invalid(
                        "send one field named \"file\", not several",
                    ));
                }
                let record = store_part(state, caller, content_length, part).await?;
                stored = Some(PendingUpload::new(state, caller.tenant_id(), record));
            } else if !text_fields.contains(&name.as_str()) {
                return Err(unknown_field(&name, text_fields));
            } else if name.ends_with("[]") && fields.contains_key(&name) {
                let text = read_text(part, &name, text_left.saturating_sub(1)).await?;
                text_left = text_left.saturating_sub(text.len() + 1);
                if let Some(values) = fields.get_mut(&name) {
                    values.push(',');
                    values.push_str(&text);
                }
            } else {
                let Entry::Vacant(slot) = fields.entry(name) else {
                    return Err(ApiError::invalid(format!(
                        "field {:?} is sent more than once",
                        part.name()
                    )));
                };
                let text = read_text(part, slot.key(), text_left).await?;
                text_left -= text.len();
                slot.insert(text);
            }
        }
        Ok(())
    }
    .await;
    match (outcome, stored) {
        (Ok(()), Some(record)) => Ok((record, fields)),
        (Ok(()), None) => Err(ApiError::invalid(
            "the multipart body has no field named \"file\"",
        )),
        (Err(e), stored) => {
            if let Some(mut upload) = stored {
                upload.delete().await;
            }
            // Let the client finish sending so it reads the answer.
            drain(form, DRAIN_BUDGET).await;
            Err(e)
        }
    }
}

/// A field this endpoint does not take, named in the answer (clipped: the
/// name is the client's).
fn unknown_field(name: &str, known: &[&str]) -> ApiError {
    let shown: String = name.chars().take(64).collect();
    let known = std::iter::once("file")
        .chain(known.iter().copied())
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    ApiError::invalid(format!(
        "unknown multipart field {shown:?}; this endpoint takes {known}"
    ))
}

/// Reads a text field of at most `budget` bytes (what is left of
/// [`MAX_TEXT_BYTES`]).
async fn read_text(part: Part, name: &str, budget: usize) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    let mut stream = part.stream();
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::invalid(format!("malformed multipart body: {e}")))?;
        while chunk.has_remaining() {
            let slice = chunk.chunk();
            bytes.extend_from_slice(slice);
            let n = slice.len();
            chunk.advance(n);
        }
        if bytes.len() > budget {
            return Err(ApiError::invalid(format!(
                "field {name:?} passes the limit of {MAX_TEXT_BYTES} bytes of text fields \
                 in one request"
            )));
        }
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::invalid(format!("field {name} is not UTF-8 text")))
}

/// Stores one file part for the caller and records it.
async fn store_part(
    state: &AppState,
    caller: &Caller,
    declared: Option<u64>,
    part: Part,
) -> Result<FileRecord, ApiError> {
    let name = clean_name(part.filename().unwrap_or("upload"));
    let content_type = part.content_type().map(str::to_string);
    let stream = part
        .stream()
        .map_err(|e| ApiError::invalid(format!("malformed multipart body: {e}")));
    store_stream(state, caller, name, content_type, declared, stream).await
}

/// Stores an upload's bytes for the caller, from any stream (a multipart
/// part, a body fetched from a URL): checked against the tier's file size
/// and storage quota as they arrive, sealed at rest, measured as audio,
/// renamed into place and recorded. `declared` is the length announced
/// up front, if any. Any failure leaves no file and no row.
pub(super) async fn store_stream<S, B>(
    state: &AppState,
    caller: &Caller,
    name: String,
    content_type: Option<String>,
    declared: Option<u64>,
    stream: S,
) -> Result<FileRecord, ApiError>
where
    S: futures_util::Stream<Item = Result<B, ApiError>> + Unpin,
    B: Buf,
{
    let tier = &caller.tier;
    let limit = tier.max_file_bytes;
    let tenant = caller.tenant_id().clone();
    let mut room = state.store.reserve_storage(&tenant, tier.storage_bytes);
    let id = new_id("f");
    tokio::fs::create_dir_all(state.store.blob_dir(&tenant))
        .await
        .map_err(ApiError::internal)?;
    let partial = state.store.partial_blob_path(&tenant, &id);
    let key = state.store.data_key(&tenant)?;
    let context = upload_context(&id);
    let sealer = Sealer::new(&key, context.as_bytes());
    let outcome = write_stream(stream, &partial, sealer, limit, declared, &mut room).await;
    let size = match outcome {
        Ok(Ok(size)) => size,
        Ok(Err(refusal)) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(match refusal {
                Refusal::TooLarge => too_large(limit, &tier.name),
                Refusal::OverQuota => ApiError::quota(format!(
                    "the {} tier stores at most {} bytes; delete files to make room",
                    tier.name, tier.storage_bytes
                )),
            });
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    let stored = StoredFile::new(&partial, Some(key), context);
    let duration_s = match crate::media::measure(stored, &name, tier.max_audio_seconds).await {
        Ok(d) => d,
        Err(refusal) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(audio_refused(refusal, &name, &tier.name));
        }
    };
    let relative = Store::blob_relative_path(&tenant, &id);
    let final_path = state.store.data_dir().join(&relative);
    tokio::fs::rename(&partial, &final_path)
        .await
        .map_err(ApiError::internal)?;
    sync_dir(final_path.parent()).await;
    let record = FileRecord {
        id,
        name,
        path: relative,
        size,
        duration_s: Some(duration_s),
        content_type,
        user_id: caller.principal.user_id.clone(),
        tenant_id: tenant.to_string(),
        created_at: Utc::now(),
    };
    if let Err(e) = state.store.put_file_reserved(&record, room).await {
        let _ = tokio::fs::remove_file(&final_path).await;
        return Err(e.into());
    }
    Ok(record)
}

/// Makes a rename durable (the directory entry), best effort.
async fn sync_dir(dir: Option<&Path>) {
    if let Some(dir) = dir {
        if let Ok(d) = tokio::fs::File::open(dir).await {
            let _ = d.sync_all().await;
        }
    }
}

async fn list(
    state: AppState,
    auth: Option<String>,
    page: PageRequest,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("files:read", Role::Viewer))
        .await?;
    let files = state
        .store
        .list_files(caller.tenant_id(), &page)?
        .map(|f| file_view(&f));
    Ok(tag_tenant(json_reply(StatusCode::OK, &files), &caller))
}

async fn get(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("files:read", Role::Viewer))
        .await?;
    let file = state
        .store
        .file(caller.tenant_id(), &id)?
        .ok_or_else(|| ApiError::not_found("file"))?;
    Ok(tag_tenant(
        json_reply(StatusCode::OK, &file_view(&file)),
        &caller,
    ))
}

async fn content(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("files:read", Role::Viewer))
        .await?;
    let file = state
        .store
        .file(caller.tenant_id(), &id)?
        .ok_or_else(|| ApiError::not_found("file"))?;
    let key = state.store.data_key(caller.tenant_id())?;
    let stored = super::download::stored_body(
        &state.store.blob_path(&file),
        &key,
        &upload_context(&file.id),
    )
    .await
    .map_err(|e| ApiError::internal(format!("file {} cannot be read: {e}", file.id)))?;
    // Served as the audio type its bytes show, never as the type the
    // uploader claimed (see `download`).
    let content_type = super::download::sniff_audio(&stored.head);
    let mut res = super::download::streamed(stored.body);
    let headers = res.headers_mut();
    super::download::attachment(headers, content_type, &file.name);
    headers.insert(header::CONTENT_LENGTH, stored.len.into());
    Ok(tag_tenant(res, &caller))
}

async fn delete(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("files:write", Role::Member))
        .await?;
    if state
        .store
        .delete_file(caller.tenant_id(), &id)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("file"));
    }
    Ok(tag_tenant(StatusCode::NO_CONTENT.into_response(), &caller))
}
