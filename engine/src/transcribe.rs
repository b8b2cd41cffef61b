//! The transcription stage: Whisper over the speech left to decode (the
//! regions after the checkpoint's resume point, or all of the audio without
//! VAD), reading the file window by window, each decoded segment
//! checkpointed; then this attempt's segments joined to those of earlier
//! attempts into the job's transcript.

use std::sync::atomic::{AtomicBool, Ordering};

use murmur_actors::engine::{WorkError, WorkRequest, WorkSink};
use murmur_actors::job::JobStage;
use murmur_actors::params::{JobParams, Task};
use murmur_models::transcript::{Segment, SpeechRegion, Transcript};
use murmur_models::whisper::{self, DecodeOptions};
use serde_json::json;

use crate::decode::{AfterVad, FileChunks};
use crate::progress::ProgressPlan;
use crate::{Checkpoint, ModelEngine};

pub(crate) fn decode_options(p: &JobParams) -> DecodeOptions {
    let mut opts = DecodeOptions {
        task: match p.task {
            Task::Transcribe => whisper::Task::Transcribe,
            Task::Translate => whisper::Task::Translate,
        },
        language: p.language.clone(),
        initial_prompt: p.initial_prompt.clone(),
        // Diarization labels speakers word by word, so it times words too.
        word_timestamps: p.word_timestamps || p.diarize.enabled,
        beam_size: p.beam_size as usize,
        best_of: p.best_of as usize,
        patience: p.patience,
        length_penalty: p.length_penalty,
        suppress_repetition_loops: p.repetition_guard,
        ..DecodeOptions::default()
    };
    // Fallback starts at the asked temperature.
    opts.temperatures.retain(|t| *t >= p.temperature - 1e-9);
    if opts.temperatures.first() != Some(&p.temperature) {
        opts.temperatures.insert(0, p.temperature);
    }
    opts
}

/// Prompts a transcription resumed after `earlier` (a checkpoint's
/// segments) as the uninterrupted long-form loop would have prompted its
/// next window: with the earlier segments' tokens since the prompt was last
/// reset (after a window decoded above temperature 0.5, or after every
/// window without `condition_on_previous_text`), and with the initial
/// prompt only if no reset happened. Without this a resumed job decoded
/// the rest of its audio unprompted, and its words came out differently
/// from an uninterrupted run's.
pub(crate) fn resume_prompt(opts: &mut DecodeOptions, earlier: &[Segment]) {
    if earlier.is_empty() {
        return;
    }
    if !opts.condition_on_previous_text {
        opts.initial_prompt = None;
        return;
    }
    let since = earlier
        .iter()
        .rposition(|s| s.temperature.is_some_and(|t| t > 0.5))
        .map_or(0, |i| i + 1);
    if since > 0 {
        opts.initial_prompt = None;
    }
    opts.previous_tokens = earlier[since..]
        .iter()
        .flat_map(|s| s.tokens.iter().copied())
        .collect();
}

/// The part of `regions` after `t` (seconds).
pub(crate) fn regions_after(regions: &[SpeechRegion], t: f64) -> Vec<SpeechRegion> {
    regions
        .iter()
        .filter(|r| r.end > t)
        .map(|r| SpeechRegion {
            start: r.start.max(t),
            end: r.end,
        })
        .collect()
}
impl ModelEngine {
    /// Whisper over `input` from the checkpoint's resume point: within
    /// `regions` when VAD ran, else over everything up to `duration_s`.
    /// The transcript holds every attempt's segments, numbered afresh.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn transcribe(
        &self,
        request: &WorkRequest,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
        plan: &ProgressPlan,
        mut checkpoint: Checkpoint,
        input: &AfterVad,
        duration_s: f64,
        regions: Option<&[SpeechRegion]>,
    ) -> Result<Transcript, WorkError> {
        let params = &request.params;
        let cancelled = || cancel.load(Ordering::Relaxed);
        sink.stage(JobStage::Transcribe);
        let model = self.whisper(&params.model)?;
        let mut opts = decode_options(params);
        if opts.language.is_none() {
            opts.language = checkpoint.language.clone();
        }
        let resume_at = checkpoint.resume_at;
        resume_prompt(&mut opts, &checkpoint.segments);
        if resume_at > 0.0 {
            tracing::info!(
                job = %request.job_id,
                resume_at,
                segments = checkpoint.segments.len(),
                "transcription resumes from a checkpoint"
            );
        }
        let todo = match regions {
            Some(r) => regions_after(r, resume_at),
            None => vec![SpeechRegion {
                start: resume_at,
                end: duration_s,
            }],
        };
        let earlier = checkpoint.segments.clone();
        // Segments wait for the point where the model says a run could
        // resume (the next window's start): a checkpoint taken there is
        // resumed into the same windows with the same prompt as the
        // uninterrupted run. From a segment's end instead, the windows
        // after a resume fell elsewhere and tiny.en dropped phrases at
        // the seams of JFK x5 that the uninterrupted run heard.
        let mut pending: Vec<Segment> = Vec::new();
        let mut on_progress = |p: whisper::Progress| {
            if cancelled() {
                return false;
            }
            // A decoded segment's progress is reported with the checkpoint
            // that keeps it (the model's next resume point comes right
            // after a window's segments): reported first, a restart
            // between the two showed progress that the retry, with no
            // checkpoint, ran again from the start.
            if let Some(seg) = p.segment {
                pending.push(seg);
                return true;
            }
            if let Some(at) = p.resumable_at {
                if !pending.is_empty() || at > checkpoint.resume_at {
                    checkpoint.resume_at = checkpoint.resume_at.max(at);
                    checkpoint.segments.append(&mut pending);
                    sink.checkpoint(json!(checkpoint));
                }
            }
            let fraction = if p.total_s > 0.0 {
                p.processed_s / p.total_s
            } else {
                1.0
            };
            sink.progress(plan.transcribing(fraction));
            true
        };
        let this_run = if todo.is_empty() {
            Transcript {
                language_probability: None,
                language_candidates: None,
                language: opts.language.clone(),
                duration_s,
                text: String::new(),
                segments: Vec::new(),
                speakers: None,
            }
        } else {
            let chunks = FileChunks {
                file: input.file,
                options: input.options,
            };
            // Above 1, the batched pipeline (`batch_size` chunks at once).
            let batch = request.params.batch_size as usize;
            if batch > 1 {
                model.transcribe_batched(
                    &chunks,
                    input.frames,
                    &todo,
                    &opts,
                    batch,
                    &mut on_progress,
                )
            } else {
                model.transcribe_regions_streamed(
                    &chunks,
                    input.frames,
                    &todo,
                    &opts,
                    &mut on_progress,
                )
            }
            .map_err(|e| match e {
                whisper::WhisperError::Cancelled => WorkError::Cancelled,
                other => WorkError::Transient(other.to_string()),
            })?
        };
        Ok(joined(earlier, this_run, opts.language, duration_s))
    }
}

/// The job's transcript: the segments of earlier attempts (`earlier`),
/// then this one's, numbered afresh, with their text joined. `asked` is
/// the language this run decoded with, if any was set.
fn joined(
    mut earlier: Vec<Segment>,
    this_run: Transcript,
    asked: Option<String>,
    duration_s: f64,
) -> Transcript {
    earlier.extend(this_run.segments);
    let mut done = earlier;
    for (i, seg) in done.iter_mut().enumerate() {
        seg.id = i as u32;
    }
    let text = done
        .iter()
        .map(|s| s.text.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    // A resumed job whose last stretch held no speech keeps the
    // language of what it had already decoded.
    let language = match this_run.language {
        None if !done.is_empty() => asked,
        detected => detected,
    };
    Transcript {
        // Detection ran on this run's first window (after a resume, on
        // the part left to decode).
        language_probability: this_run.language_probability,
        language_candidates: this_run.language_candidates,
        language,
        duration_s,
        text,
        segments: done,
        speakers: None,
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;

    fn segment(tokens: &[u32], temperature: f64) -> Segment {
        Segment {
            tokens: tokens.to_vec(),
            temperature: Some(temperature),
            ..Segment::default()
        }
    }

    #[test]
    fn a_resumed_transcription_is_prompted_as_the_loop_would_have_been() {
        let asked = DecodeOptions {
            initial_prompt: Some("Murmur, ractor".into()),
            ..DecodeOptions::default()
        };
        // Nothing earlier: the options stay as asked.
        let mut opts = asked.clone();
        resume_prompt(&mut opts, &[]);
        assert_eq!(opts.initial_prompt.as_deref(), Some("Murmur, ractor"));
        assert!(opts.previous_tokens.is_empty());

        // Every earlier token, after the initial prompt.
        let mut opts = asked.clone();
        resume_prompt(&mut opts, &[segment(&[1, 2], 0.0), segment(&[3], 0.2)]);
        assert_eq!(opts.initial_prompt.as_deref(), Some("Murmur, ractor"));
        assert_eq!(opts.previous_tokens, [1, 2, 3]);

        // A window above 0.5 reset the prompt: only what came after it.
        let mut opts = asked.clone();
        let earlier = [
            segment(&[1, 2], 0.0),
            segment(&[3], 0.8),
            segment(&[4, 5], 0.0),
        ];
        resume_prompt(&mut opts, &earlier);
        assert_eq!(opts.initial_prompt, None);
        assert_eq!(opts.previous_tokens, [4, 5]);

        // Not conditioned on previous text: no prompt after the first window.
        let mut opts = DecodeOptions {
            condition_on_previous_text: false,
            ..asked
        };
        resume_prompt(&mut opts, &earlier);
        assert_eq!(opts.initial_prompt, None);
        assert!(opts.previous_tokens.is_empty());
    }
}
