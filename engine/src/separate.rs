//! The separation stage: Spleeter over the job's
//! audio in chunks, straight into the two stems on disk (sealed with the
//! tenant's key when the job has one), written as `.part` files and
//! renamed once whole so a crash never leaves half a stem; a resumed job
//! finds its stems instead of separating again.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use murmur_models::audio::{self, AudioError};
use murmur_models::separate::{SeparateError, SeparationStream, Separator, STEMS};
use serde_json::json;

use crate::decode::{audio_error, limited};
use crate::progress::ProgressPlan;
use crate::{Checkpoint, ModelEngine};
use murmur_actors::engine::{WorkError, WorkRequest, WorkSink};
use murmur_actors::job::JobStage;
use murmur_actors::params::JobType;
use murmur_actors::sealed::{
    artifact_context, artifact_part_path, artifact_path, ArtifactWriter, StoredFile,
};

/// Where a separation keeps the stem `name` (one of
/// `murmur_models::separate::STEMS`) in a job's artifacts folder.
pub fn stem_path(artifacts: &Path, name: &str) -> PathBuf {
    artifact_path(artifacts, name)
}

/// Where the stem `name` is written until it is whole.
pub(crate) fn stem_part_path(folder: &Path, name: &str) -> PathBuf {
    artifact_part_path(folder, name)
}

/// The stem `name` of the job as stored: sealed with the tenant's key
/// when the job has one (encryption at rest).
fn stem_file(request: &WorkRequest, folder: &Path, name: &str) -> StoredFile {
    StoredFile::new(
        &stem_path(folder, name),
        request.sealing.as_ref().map(|s| s.key.clone()),
        artifact_context(&request.job_id, name),
    )
}

/// Opens the output the stem `name` is written to, front to back and never
/// sought (a 16-bit WAV whose header, with the length, comes first),
/// sealed with the tenant's key when the job has one; committed once whole,
/// so a crash never leaves half a stem.
fn create_stem(request: &WorkRequest, folder: &Path, name: &str) -> io::Result<ArtifactWriter> {
    ArtifactWriter::create(
        folder,
        name,
        request.sealing.as_ref().map(|s| &*s.key),
        &request.job_id,
    )
}

/// Removes the `.part` files an unfinished separation left (best effort: a
/// later attempt overwrites them anyway).
fn discard_stems(folder: &Path) {
    for name in STEMS {
        let _ = std::fs::remove_file(stem_part_path(folder, name));
    }
}

fn separate_error(e: SeparateError) -> WorkError {
    match e {
        SeparateError::Cancelled => WorkError::Cancelled,
        SeparateError::InvalidAudio(m) => WorkError::InvalidInput(m),
        other => WorkError::Transient(other.to_string()),
    }
}

/// A folder for the stems of a job that has no artifacts folder (the CLI's
/// `transcribe --separate-bgm`): the vocals go to disk all the same, so they
/// are read back in bounded memory. Removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> io::Result<ScratchDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "murmur-stems-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A finished separation: where its stems are, and the source's length.
pub(crate) struct Separated {
    pub(crate) folder: PathBuf,
    /// The source's decoded length in seconds (what usage is metered from).
    pub(crate) duration_s: f64,
    /// Keeps a scratch folder alive while the vocals are read.
    _scratch: Option<ScratchDir>,
}

impl Separated {
    pub(crate) fn vocals(&self, request: &WorkRequest) -> StoredFile {
        stem_file(request, &self.folder, "vocals")
    }
}

impl ModelEngine {
    /// Splits the job's audio into vocals and accompaniment and writes both
    /// to the artifacts folder (or a scratch folder when the job has none),
    /// in memory that does not grow with the audio's length: a first pass
    /// counts the frames at 44.1 kHz, the second decodes in chunks into a
    /// [`SeparationStream`] whose stems are written as they become final.
    /// A resumed job whose stems were written finds them instead.
    ///
    /// Why a first pass rather than the upload's measured length: the stem
    /// headers need the exact frame count up front (the output cannot seek
    /// back), and only the same decode and resampler give it exactly; the
    /// pass also enforces the length limit and finds a damaged or truncated
    /// file before minutes of Spleeter, for a few percent of their cost.
    pub(crate) fn separate(
        &self,
        request: &WorkRequest,
        checkpoint: &mut Checkpoint,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        plan: &ProgressPlan,
    ) -> Result<Separated, WorkError> {
        let stop = || cancel.load(Ordering::Relaxed);
        let (folder, scratch) = match &request.artifacts {
            Some(folder) => (folder.clone(), None),
            None if request.params.job_type == JobType::BgmSeparation => {
                return Err(WorkError::InvalidInput(
                    "a separation job needs a folder to write its stems to".into(),
                ))
            }
            None => {
                let scratch = ScratchDir::new().map_err(|e| {
                    WorkError::Transient(format!("creating a folder for the stems: {e}"))
                })?;
                (scratch.0.clone(), Some(scratch))
            }
        };
        if checkpoint.separated {
            // Measuring decodes the whole stem, so a damaged one is found
            // here and separated again.
            let vocals = stem_file(request, &folder, "vocals");
            if let Ok(m) = audio::measure_duration(vocals.input(), None, &stop) {
                sink.stage(JobStage::Separate);
                sink.progress(plan.separating(1.0));
                return Ok(Separated {
                    folder,
                    duration_s: m.duration_s,
                    _scratch: scratch,
                });
            }
        }
        let options = limited(
            request,
            audio::DecodeOptions::stereo(murmur_models::separate::SAMPLE_RATE),
        );
        let upload = request.stored_audio();
        let counted =
            audio::decode_chunks::<AudioError>(upload.input(), &options, &stop, |_, _| Ok(()))
                .map_err(|e| audio_error(e, request, upload.path()))?;
        sink.progress(plan.decoded);
        sink.stage(JobStage::Separate);
        let separator = self.separator()?;
        std::fs::create_dir_all(&folder)
            .map_err(|e| WorkError::Transient(format!("creating the stems folder: {e}")))?;
        let written = self.write_stems(
            request,
            &folder,
            &options,
            counted.frames,
            sink,
            cancel,
            plan,
            &separator,
        );
        if let Err(e) = written {
            discard_stems(&folder);
            return Err(e);
        }
        checkpoint.separated = request.artifacts.is_some();
        if checkpoint.separated {
            sink.checkpoint(json!(checkpoint));
        }
        Ok(Separated {
            folder,
            duration_s: counted.duration_s,
            _scratch: scratch,
        })
    }

    /// The second pass of [`ModelEngine::separate`]: decodes `frames`
    /// frames in chunks through Spleeter into both stems' outputs, and
    /// commits them once whole.
    #[allow(clippy::too_many_arguments)]
    fn write_stems(
        &self,
        request: &WorkRequest,
        folder: &Path,
        options: &audio::DecodeOptions,
        frames: u64,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        plan: &ProgressPlan,
        separator: &Separator,
    ) -> Result<(), WorkError> {
        let stop = || cancel.load(Ordering::Relaxed);
        let write_error = |name: &str, e: io::Error| {
            WorkError::Transient(format!("writing the {name} stem: {e}"))
        };
        let open = |name: &str| {
            create_stem(request, folder, name)
                .and_then(|out| {
                    audio::WavWriter::new(out, murmur_models::separate::SAMPLE_RATE, 2, frames)
                })
                .map_err(|e| write_error(name, e))
        };
        let mut outputs = [open(STEMS[0])?, open(STEMS[1])?];
        let len = usize::try_from(frames)
            .map_err(|_| WorkError::InvalidInput("the audio is too long to separate".into()))?;
        let mut stream = SeparationStream::new(separator, len);
        let upload = request.stored_audio();
        let mut reported = 0.0;
        audio::decode_chunks::<SeparateError>(upload.input(), options, &stop, |chunk, _| {
            let [vocals, accompaniment] = &mut outputs;
            stream.push(chunk, &mut |v, a| {
                vocals.write(v)?;
                accompaniment.write(a)
            })?;
            if stream.fraction_done() > reported {
                reported = stream.fraction_done();
                sink.progress(plan.separating(reported));
            }
            Ok(())
        })
        .and_then(|_| stream.finish())
        .map_err(|e| match e {
            SeparateError::Audio(e) => audio_error(e, request, upload.path()),
            SeparateError::Write(e) => WorkError::Transient(format!("writing the stems: {e}")),
            SeparateError::InvalidAudio(m) => WorkError::Transient(format!(
                "the audio decoded differently the second time ({m}); try again"
            )),
            other => separate_error(other),
        })?;
        for (name, output) in STEMS.iter().zip(outputs) {
            output
                .finish()
                .and_then(ArtifactWriter::commit)
                .map_err(|e| write_error(name, e))?;
        }
        Ok(())
    }
}
