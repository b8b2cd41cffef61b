//! Writing 16-bit PCM WAV: [`WavWriter`] streams samples to any
//! [`Write`] (no seeking: the header, with the data length, goes first, so
//! the frame count must be known up front), and [`write_wav_16bit`] writes
//! a buffer in memory to a file through it.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::AudioError;

/// Bytes of the canonical PCM header before the samples.
pub const WAV_HEADER_BYTES: u64 = 44;

/// A 16-bit PCM WAV file being written to `out`, its header already out.
/// Samples are clipped to [-1, 1]; [`WavWriter::finish`] checks that exactly
/// the announced frames were written, so the header never lies.
pub struct WavWriter<W: Write> {
    out: W,
    channels: u16,
    /// Samples (not frames) announced in the header, and written so far.
    expected: u64,
    written: u64,
    /// Little-endian bytes of the samples being written, reused.
    bytes: Vec<u8>,
}

impl<W: Write> WavWriter<W> {
    /// Writes the header for `frames` frames of `channels` channels at
    /// `sample_rate` to `out`.
    pub fn new(mut out: W, sample_rate: u32, channels: u16, frames: u64) -> io::Result<Self> {
        let invalid = |msg: &str| io::Error::new(io::ErrorKind::InvalidInput, msg.to_string());
        if channels == 0 || sample_rate == 0 {
            return Err(invalid(
                "a WAV file needs at least one channel and a positive rate",
            ));
        }
        let samples = frames * u64::from(channels);
        let data_len = samples
            .checked_mul(2)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n <= u32::MAX - 36)
            .ok_or_else(|| invalid("too many samples for a WAV file (4 GB at most)"))?;
        let block_align = channels * 2;
        let byte_rate = sample_rate
            .checked_mul(u32::from(block_align))
            .ok_or_else(|| invalid("sample rate too high for a WAV file"))?;
        let mut header = Vec::with_capacity(WAV_HEADER_BYTES as usize);
        header.extend_from_slice(b"RIFF");
        header.extend_from_slice(&(36 + data_len).to_le_bytes());
        header.extend_from_slice(b"WAVEfmt ");
        header.extend_from_slice(&16u32.to_le_bytes());
        header.extend_from_slice(&1u16.to_le_bytes()); // PCM
        header.extend_from_slice(&channels.to_le_bytes());
        header.extend_from_slice(&sample_rate.to_le_bytes());
        header.extend_from_slice(&byte_rate.to_le_bytes());
        header.extend_from_slice(&block_align.to_le_bytes());
        header.extend_from_slice(&16u16.to_le_bytes());
        header.extend_from_slice(b"data");
        header.extend_from_slice(&data_len.to_le_bytes());
        out.write_all(&header)?;
        Ok(WavWriter {
            out,
            channels,
            expected: samples,
            written: 0,
            bytes: Vec::new(),
        })
    }

    /// Appends interleaved samples (any number; frames may span calls).
    pub fn write(&mut self, samples: &[f32]) -> io::Result<()> {
        let n = samples.len() as u64;
        if self.written + n > self.expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "more samples than the {} the WAV header announced",
                    self.expected
                ),
            ));
        }
        self.bytes.clear();
        self.bytes.reserve(samples.len() * 2);
        for &s in samples {
            let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.out.write_all(&self.bytes)?;
        self.written += n;
        Ok(())
    }

    /// Flushes and hands back the output, once every announced frame is
    /// written.
    pub fn finish(mut self) -> io::Result<W> {
        if self.written != self.expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} of the {} samples ({} channels) the WAV header announced were written",
                    self.written, self.expected, self.channels
                ),
            ));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes interleaved `samples` as a 16-bit PCM WAV file (clipped to [-1, 1]).
pub fn write_wav_16bit(
    path: &Path,
    samples: &[f32],
    sample_rate: u32,
    channels: u16,
) -> Result<(), AudioError> {
    if channels == 0 || sample_rate == 0 {
        return Err(AudioError::InvalidArgument(
            "a WAV file needs at least one channel and a positive rate".into(),
        ));
    }
    if !samples.len().is_multiple_of(usize::from(channels)) {
        return Err(AudioError::InvalidArgument(format!(
            "{} samples do not split into {channels} channels",
            samples.len()
        )));
    }
    let frames = (samples.len() / usize::from(channels)) as u64;
    if frames * u64::from(channels) * 2 > u64::from(u32::MAX - 36) {
        return Err(AudioError::InvalidArgument(
            "too many samples for a WAV file".into(),
        ));
    }
    let io_err = |source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    };
    let out = BufWriter::new(File::create(path).map_err(io_err)?);
    let mut wav = WavWriter::new(out, sample_rate, channels, frames).map_err(io_err)?;
    // A bounded piece at a time keeps the byte buffer small.
    for piece in samples.chunks(1 << 16) {
        wav.write(piece).map_err(io_err)?;
    }
    wav.finish().map_err(io_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_writer_matches_the_buffer_writer_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let samples: Vec<f32> = (0..10_000).map(|i| (i as f32 * 0.01).sin() * 1.2).collect();
        write_wav_16bit(&path, &samples, 44_100, 2).unwrap();
        let whole = std::fs::read(&path).unwrap();
        // In odd pieces that split frames, to a plain Vec (no Seek).
        let mut wav = WavWriter::new(Vec::new(), 44_100, 2, 5_000).unwrap();
        for piece in samples.chunks(333) {
            wav.write(piece).unwrap();
        }
        let streamed = wav.finish().unwrap();
        assert_eq!(streamed.len() as u64, WAV_HEADER_BYTES + 20_000);
        assert_eq!(streamed, whole);
    }

    #[test]
    fn the_header_never_lies_about_the_length() {
        let mut short = WavWriter::new(Vec::new(), 16_000, 1, 10).unwrap();
        short.write(&[0.0; 9]).unwrap();
        assert!(short.finish().is_err());
        let mut long = WavWriter::new(Vec::new(), 16_000, 1, 10).unwrap();
        assert!(long.write(&[0.0; 11]).is_err());
        assert!(WavWriter::new(Vec::new(), 44_100, 2, 1 << 30).is_err());
    }
}
