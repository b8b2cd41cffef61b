//! Separation of a recording that arrives in pieces (a chunked decode) and
//! leaves in pieces (stems written as they are final), so memory is bounded
//! by one chunk of Spleeter's work whatever the recording's length.
//!
//! The chunks are exactly [`Separator::separate`]'s: [`SEGMENTS_PER_CHUNK`]
//! segments of 512 STFT frames, the same frames in the same order, so the
//! stems are the same numbers (the overlap-add sums the same frames in the
//! same order). What changes is what is held: the input from the first
//! sample the next chunk reads, and the output from the first sample not yet
//! final. STFT frame `t` touches samples `t * 1024 - 4096 .. t * 1024`, so
//! a chunk runs once the input reaches its last frame's end, and after it
//! every output sample before the next chunk's first frame is final.
//!
//! The recording's length must be known up front: the last segment is
//! padded from it, and the stems' WAV headers (written before any sample,
//! for an output that cannot seek) carry it.

use std::io;

use super::stft::{self, Stft, FRAME_LENGTH};
use super::{SeparateError, Separator, CHANNELS, SEGMENTS_PER_CHUNK, SEGMENT_FRAMES};

/// Where the stems go as they become final: `(vocals, accompaniment)`,
/// interleaved stereo, the same number of samples each.
pub type StemSink<'s> = dyn FnMut(&[f32], &[f32]) -> io::Result<()> + 's;

/// STFT frames per chunk.
const CHUNK_FRAMES: usize = SEGMENT_FRAMES * SEGMENTS_PER_CHUNK;
/// Spleeter's zero padding in front of the waveform (one window).
const LEAD: usize = FRAME_LENGTH;

/// One recording being separated: push its 44.1 kHz interleaved stereo
/// samples in order, in pieces of any size; the stems come out through
/// `emit` as they become final, in order, in pieces of about 24 s. Owned by
/// one job on one thread; holds about 50 MB of audio beside one chunk's
/// network activations.
pub struct SeparationStream<'a> {
    separator: &'a Separator,
    stft: Stft,
    /// Frames in the whole recording, as announced.
    len: usize,
    /// STFT frames over the whole recording.
    frames: usize,
    chunks: usize,
    next_chunk: usize,
    /// Frames pushed so far.
    received: usize,
    /// Interleaved input from the recording's frame `input_first`.
    input: Vec<f32>,
    input_first: usize,
    /// Interleaved output per stem from the recording's frame `out_first`,
    /// the first not yet emitted.
    out: [Vec<f32>; 2],
    out_first: usize,
}

impl<'a> SeparationStream<'a> {
    /// A stream for a recording of `len` frames (44.1 kHz stereo).
    pub fn new(separator: &'a Separator, len: usize) -> Self {
        let frames = stft::frame_count(len, LEAD);
        let chunks = if len == 0 {
            0
        } else {
            frames.div_ceil(CHUNK_FRAMES)
        };
        SeparationStream {
            separator,
            stft: Stft::new(),
            len,
            frames,
            chunks,
            next_chunk: 0,
            received: 0,
            input: Vec::new(),
            input_first: 0,
            out: [Vec::new(), Vec::new()],
            out_first: 0,
        }
    }

    /// Share of the chunks done, 0.0 to 1.0.
    pub fn fraction_done(&self) -> f64 {
        if self.chunks == 0 {
            1.0
        } else {
            self.next_chunk as f64 / self.chunks as f64
        }
    }

    /// Takes the next interleaved stereo samples and runs every chunk they
    /// complete, handing the samples of both stems that became final to
    /// `emit(vocals, accompaniment)`.
    pub fn push(&mut self, samples: &[f32], emit: &mut StemSink) -> Result<(), SeparateError> {
        if !samples.len().is_multiple_of(CHANNELS) {
            return Err(SeparateError::InvalidAudio(format!(
                "{} samples do not split into {CHANNELS} channels",
                samples.len()
            )));
        }
        let frames = samples.len() / CHANNELS;
        if self.received + frames > self.len {
            return Err(SeparateError::InvalidAudio(format!(
                "more than the {} frames announced arrived",
                self.len
            )));
        }
        self.input.extend_from_slice(samples);
        self.received += frames;
        while self.next_chunk < self.chunks && self.received >= self.chunk_needs(self.next_chunk) {
            self.run_chunk(emit)?;
        }
        Ok(())
    }

    /// Checks that the whole recording arrived (every chunk then ran, and
    /// every stem sample was emitted).
    pub fn finish(self) -> Result<(), SeparateError> {
        if self.received != self.len || self.out_first != self.len {
            return Err(SeparateError::InvalidAudio(format!(
                "{} frames arrived of the {} announced",
                self.received, self.len
            )));
        }
        Ok(())
    }

    /// STFT frames `first..end` of chunk `k`.
    fn chunk_frames(&self, k: usize) -> (usize, usize) {
        let first = k * CHUNK_FRAMES;
        (first, (first + CHUNK_FRAMES).min(self.frames))
    }

    /// Input frames chunk `k` needs before it can run: up to its last STFT
    /// frame's end, or the recording's.
    fn chunk_needs(&self, k: usize) -> usize {
        let (_, end) = self.chunk_frames(k);
        stft::frame_end(end - 1, LEAD).min(self.len)
    }

    fn run_chunk(&mut self, emit: &mut StemSink) -> Result<(), SeparateError> {
        let k = self.next_chunk;
        let (first, end) = self.chunk_frames(k);
        // The output window reaches as far as this chunk writes, never past
        // the recording (the synthesis drops what falls outside).
        let out_end = self.chunk_needs(k);
        for stem in &mut self.out {
            stem.resize((out_end - self.out_first) * CHANNELS, 0.0);
        }
        self.separator.separate_chunk(
            &mut self.stft,
            (&self.input, self.input_first),
            first,
            (end - first).div_ceil(SEGMENT_FRAMES),
            self.frames,
            (&mut self.out, self.out_first),
        )?;
        self.next_chunk += 1;
        // Final: everything before the next chunk's first STFT frame.
        let done = if self.next_chunk == self.chunks {
            self.len
        } else {
            stft::frame_start(end, LEAD).min(self.len)
        };
        let n = (done - self.out_first) * CHANNELS;
        emit(&self.out[0][..n], &self.out[1][..n])?;
        for stem in &mut self.out {
            stem.drain(..n);
        }
        self.out_first = done;
        // The next chunk reads from `done` on.
        let dropped = done
            .saturating_sub(self.input_first)
            .min(self.input.len() / CHANNELS);
        self.input.drain(..dropped * CHANNELS);
        self.input_first += dropped;
        Ok(())
    }
}
