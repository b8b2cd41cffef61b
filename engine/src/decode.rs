//! The decode stage: the job's audio read from its stored file (sealed or
//! plain), whole or in chunks, stopped at the job's length limit, and its
//! decoder errors worded for the tenant (never the server's path). Every
//! other stage reads audio through here.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use murmur_actors::engine::{WorkError, WorkRequest};
use murmur_actors::sealed::StoredFile;
use murmur_models::audio::{self, AudioError, DecodedAudio};
use murmur_models::whisper;

/// Decode failures are the input's fault (fail at once), except I/O and a
/// stop. The message names "the audio", never the server's path to it
/// (`path`: the upload, or the vocals separated from it).
pub(crate) fn audio_error(e: AudioError, request: &WorkRequest, path: &Path) -> WorkError {
    let msg = e
        .to_string()
        .replace(&path.display().to_string(), "the audio");
    match (e, &request.audio_limit) {
        (AudioError::Io { .. }, _) => WorkError::Transient(msg),
        (AudioError::Cancelled { .. }, _) => WorkError::Cancelled,
        (AudioError::TooLong { .. }, Some(limit)) => WorkError::InvalidInput(format!(
            "the audio is longer than {}; nothing past it was processed or counted \
             (split the file, or upgrade)",
            limit.rule
        )),
        _ => WorkError::InvalidInput(format!("the file cannot be decoded: {msg}")),
    }
}

/// `options` stopping at the job's length limit.
pub(crate) fn limited(
    request: &WorkRequest,
    options: audio::DecodeOptions,
) -> audio::DecodeOptions {
    audio::DecodeOptions {
        max_duration_s: request.audio_limit.as_ref().map(|l| l.max_s),
        ..options
    }
}

/// The job's audio (`path`: the upload, or the vocals separated from it)
/// decoded whole, at the rate and layout of `options`, stopping at the
/// job's length limit.
pub(crate) fn decode_job_audio(
    request: &WorkRequest,
    file: &StoredFile,
    options: audio::DecodeOptions,
    cancel: &AtomicBool,
) -> Result<DecodedAudio, WorkError> {
    audio::decode_file_until(file.input(), &limited(request, options), &|| {
        cancel.load(Ordering::Relaxed)
    })
    .map_err(|e| audio_error(e, request, file.path()))
}
/// What Whisper and the diarizer read after VAD.
#[derive(Clone, Copy)]
pub(crate) struct AfterVad<'a> {
    /// The file Whisper reads again, front to back, as it goes: `frames`
    /// samples at 16 kHz mono decoded with `options`.
    pub(crate) file: &'a StoredFile,
    pub(crate) options: &'a audio::DecodeOptions,
    pub(crate) frames: usize,
    /// The whole recording at 16 kHz mono, in memory: only when diarizing.
    pub(crate) whole: Option<&'a [f32]>,
}

/// A file for [`whisper::WhisperModel::transcribe_regions_streamed`]: every read
/// decodes it anew on its own thread, a few chunks ahead.
pub(crate) struct FileChunks<'a> {
    pub(crate) file: &'a StoredFile,
    pub(crate) options: &'a audio::DecodeOptions,
}

impl whisper::ChunkSource for FileChunks<'_> {
    type Error = ReadError;
    type Reader = FileChunkReader;

    fn open(&self) -> FileChunkReader {
        FileChunkReader {
            reader: audio::ChunkReader::open_input(
                self.file.path(),
                self.file.opener(),
                self.options,
            ),
            path: self.file.path().display().to_string(),
        }
    }
}

/// A decoder error met while Whisper reads the job's audio again; its
/// message names "the audio", never the server's path to it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ReadError {
    message: String,
    source: AudioError,
}

pub(crate) struct FileChunkReader {
    reader: audio::ChunkReader,
    /// Scrubbed from error messages: a job's error names "the audio".
    path: String,
}

impl Iterator for FileChunkReader {
    type Item = Result<Vec<f32>, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.reader.next().map(|r| {
            r.map_err(|source| ReadError {
                message: source.to_string().replace(&self.path, "the audio"),
                source,
            })
        })
    }
}

/// The audio VAD, Whisper and the diarizer read: the upload, or the vocals
/// separated from it.
pub(crate) struct JobAudio {
    pub(crate) file: StoredFile,
    /// The source's length when `file` is a stem of it (what usage is
    /// metered from); None to take it from decoding `file`.
    pub(crate) duration_s: Option<f64>,
}
