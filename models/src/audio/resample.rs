//! Resampling and channel downmixing: [`ResampleStream`] turns decoded
//! source frames into output frames at another rate, chunk by chunk, and
//! [`resample`] does the same for a buffer already in memory.

use rubato::{
    calculate_cutoff, Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use super::{AudioError, ChannelLayout};

/// Input frames per resampler call: small work buffers, few calls.
const RESAMPLE_CHUNK: usize = 1024;

/// Taps of the windowed-sinc resampling filter, counted at the input rate.
/// rubato's synchronous FFT resampler measured about 6x slower here for
/// 44.1 -> 16 kHz. With 44.1 -> 16 kHz, 128 taps (Blackman-Harris) pass 6 kHz
/// at -0.1 dB and leave a 10 kHz tone's alias at -63 dB (see the tests); 64
/// taps already cut 6 kHz by 4 dB, 256 gain nothing audible at twice the
/// cost (about 70 ms per 20 s of 44.1 kHz audio for 128 taps here).
const SINC_LEN: usize = 128;

/// Resamples interleaved `samples` with `channels` channels from `from` Hz to
/// `to` Hz with the same resampler the decoder uses.
pub fn resample(
    samples: &[f32],
    channels: usize,
    from: u32,
    to: u32,
) -> Result<Vec<f32>, AudioError> {
    if channels == 0 || from == 0 || to == 0 {
        return Err(AudioError::InvalidArgument(
            "resampling needs channels and positive rates".into(),
        ));
    }
    let layout = match channels {
        1 => ChannelLayout::Mono,
        2 => ChannelLayout::Stereo,
        n => {
            return Err(AudioError::InvalidArgument(format!(
                "resampling supports 1 or 2 channels, not {n}"
            )))
        }
    };
    let mut stream = ResampleStream::new(from, to, channels, samples.len() / channels)?;
    stream.push(samples, channels, layout)?;
    stream.finish()
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// Appends interleaved `src` (`channels` per frame) to the planar `out`
/// (one vector per output channel) in the output layout.
fn downmix_into(src: &[f32], channels: usize, layout: ChannelLayout, out: &mut [Vec<f32>]) {
    match (layout, channels) {
        (ChannelLayout::Mono, 1) => out[0].extend_from_slice(src),
        (ChannelLayout::Mono, 2) => out[0].extend(src.chunks_exact(2).map(|f| 0.5 * (f[0] + f[1]))),
        (ChannelLayout::Mono, n) => {
            let scale = 1.0 / n as f32;
            out[0].extend(src.chunks_exact(n).map(|f| f.iter().sum::<f32>() * scale));
        }
        (ChannelLayout::Stereo, 1) => {
            out[0].extend_from_slice(src);
            out[1].extend_from_slice(src);
        }
        (ChannelLayout::Stereo, n) => {
            out[0].extend(src.chunks_exact(n).map(|f| f[0]));
            out[1].extend(src.chunks_exact(n).map(|f| f[1]));
        }
    }
}

/// Streaming resampler: frames go in one at a time, chunks of
/// [`RESAMPLE_CHUNK`] go through rubato's sinc resampler, and output lands in
/// one interleaved vector sized up front (or, for a chunked decode, is taken
/// out chunk by chunk with [`ResampleStream::take_output`]). Passes samples
/// straight through when the rates match.
pub(super) struct ResampleStream {
    resampler: Option<SincFixedIn<f32>>,
    channels: usize,
    from: u32,
    to: u32,
    /// Planar input waiting for a full chunk.
    pending: Vec<Vec<f32>>,
    out_buf: Vec<Vec<f32>>,
    /// Output frames still to drop at the start (the resampler's delay;
    /// zero for the sinc resampler, kept so another resampler can be
    /// dropped in).
    skip: usize,
    frames_in: u64,
    /// Output frames already taken out of `output`.
    taken: u64,
    output: Vec<f32>,
}

impl ResampleStream {
    pub(super) fn new(
        from: u32,
        to: u32,
        channels: usize,
        expected_frames: usize,
    ) -> Result<Self, AudioError> {
        let ratio = f64::from(to) / f64::from(from);
        let capacity = ((expected_frames as f64 * ratio).ceil() as usize + 16) * channels;
        let mut pending = vec![Vec::with_capacity(RESAMPLE_CHUNK); channels];
        let (resampler, out_buf, skip) = if from == to {
            (None, Vec::new(), 0)
        } else {
            let params = SincInterpolationParameters {
                sinc_len: SINC_LEN,
                f_cutoff: calculate_cutoff(SINC_LEN, WindowFunction::BlackmanHarris2),
                oversampling_factor: 256,
                interpolation: SincInterpolationType::Linear,
                window: WindowFunction::BlackmanHarris2,
            };
            let ratio = f64::from(to) / f64::from(from);
            let r = SincFixedIn::<f32>::new(ratio, 1.0, params, RESAMPLE_CHUNK, channels).map_err(
                |e| AudioError::Resample {
                    from,
                    to,
                    detail: e.to_string(),
                },
            )?;
            let out_buf = r.output_buffer_allocate(true);
            // rubato 0.16's SincFixedIn puts output n at input time
            // (n + 1) * from / to - 1 (its `output_delay()` does not describe
            // this). Leading with from/g - 1 zeros (g = gcd) and dropping the
            // first to/g - 1 outputs puts output m at input time
            // m * from / to exactly; the tests check it with a click.
            let g = gcd(from, to);
            let lead_in = (from / g) as usize - 1;
            for ch in &mut pending {
                ch.resize(lead_in, 0.0);
            }
            (Some(r), out_buf, (to / g) as usize - 1)
        };
        Ok(ResampleStream {
            resampler,
            channels,
            from,
            to,
            pending,
            out_buf,
            skip,
            frames_in: 0,
            taken: 0,
            // Capacity from the header's frame count, capped so a lying
            // header cannot make us allocate gigabytes up front.
            output: Vec::with_capacity(capacity.min(1 << 26)),
        })
    }

    /// Feeds interleaved source samples with `channels` channels, downmixed
    /// to the output layout.
    pub(super) fn push(
        &mut self,
        src: &[f32],
        channels: usize,
        layout: ChannelLayout,
    ) -> Result<(), AudioError> {
        let frames = src.len() / channels;
        self.frames_in += frames as u64;
        let Some(resampler) = &self.resampler else {
            // Same rate: downmix straight into the (planar, then interleaved)
            // output without a resampler.
            if self.channels == 1 {
                downmix_into(
                    src,
                    channels,
                    layout,
                    std::slice::from_mut(&mut self.output),
                );
            } else {
                downmix_into(src, channels, layout, &mut self.pending);
                let (l, r) = (&self.pending[0], &self.pending[1]);
                self.output
                    .extend(l.iter().zip(r).flat_map(|(a, b)| [*a, *b]));
                self.pending.iter_mut().for_each(Vec::clear);
            }
            return Ok(());
        };
        let next = resampler.input_frames_next();
        // The lead-in can exceed a chunk for unusual rate pairs.
        while self.pending[0].len() >= next {
            self.run_chunk(false)?;
        }
        let mut offset = 0;
        while offset < frames {
            let take = (next - self.pending[0].len()).min(frames - offset);
            let part = &src[offset * channels..(offset + take) * channels];
            downmix_into(part, channels, layout, &mut self.pending);
            offset += take;
            if self.pending[0].len() >= next {
                self.run_chunk(false)?;
            }
        }
        Ok(())
    }

    /// Resamples what is pending (a full chunk, or with `partial` whatever is
    /// left, zero-padded) and appends the output after the delay.
    fn run_chunk(&mut self, partial: bool) -> Result<(), AudioError> {
        let Some(resampler) = &mut self.resampler else {
            return Ok(());
        };
        let err = |e: rubato::ResampleError| AudioError::Resample {
            from: self.from,
            to: self.to,
            detail: e.to_string(),
        };
        let (consumed, produced) = if partial {
            let input = if self.pending[0].is_empty() {
                None
            } else {
                Some(&self.pending[..])
            };
            resampler
                .process_partial_into_buffer(input, &mut self.out_buf, None)
                .map_err(err)?
        } else {
            resampler
                .process_into_buffer(&self.pending, &mut self.out_buf, None)
                .map_err(err)?
        };
        for ch in &mut self.pending {
            ch.drain(..consumed.min(ch.len()));
        }
        let start = self.skip.min(produced);
        self.skip -= start;
        if let [mono] = &self.out_buf[..] {
            self.output.extend_from_slice(&mono[start..produced]);
        } else {
            for i in start..produced {
                self.output.extend(self.out_buf.iter().map(|ch| ch[i]));
            }
        }
        Ok(())
    }

    /// Interleaved output not taken yet.
    pub(super) fn output(&self) -> &[f32] {
        &self.output
    }

    /// Forgets the output not taken yet (the caller has handed it on), so a
    /// chunked decode holds one chunk at a time.
    pub(super) fn take_output(&mut self) {
        self.taken += (self.output.len() / self.channels) as u64;
        self.output.clear();
    }

    /// Flushes the resampler and returns the rest of the output (all of it
    /// when nothing was taken): exactly `frames_in * to / from` frames
    /// (rounded) in all, interleaved.
    pub(super) fn finish(mut self) -> Result<Vec<f32>, AudioError> {
        let wanted_frames =
            (self.frames_in as f64 * f64::from(self.to) / f64::from(self.from)).round() as u64;
        let wanted = wanted_frames.saturating_sub(self.taken) as usize * self.channels;
        if self.resampler.is_some() {
            // Remaining input, then silence until the delayed tail is out.
            self.run_chunk(true)?;
            let mut guard = 0;
            while self.output.len() < wanted && guard < 64 {
                self.run_chunk(true)?;
                guard += 1;
            }
        }
        self.output.truncate(wanted);
        self.output.shrink_to_fit();
        Ok(self.output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn resampling_keeps_length_and_tone() {
        let input = sine(440.0, 44_100, 1.0);
        let out = resample(&input, 1, 44_100, 16_000).unwrap();
        assert_eq!(out.len(), 16_000);
        // Compare with the ideal 16 kHz sine away from the edges: a delay or
        // a wrong ratio would show as a large error.
        let ideal = sine(440.0, 16_000, 1.0);
        let max_err = out[200..15_800]
            .iter()
            .zip(&ideal[200..15_800])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_err < 0.01, "max error {max_err}");
    }

    #[test]
    fn resampling_removes_what_the_new_rate_cannot_hold() {
        // 10 kHz is above 16 kHz's Nyquist frequency: it must vanish, not
        // fold back to 6 kHz.
        let tone = sine(10_000.0, 44_100, 1.0);
        let out = resample(&tone, 1, 44_100, 16_000).unwrap();
        let rms = |x: &[f32]| (x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32).sqrt();
        let ratio = rms(&out[500..15_500]) / rms(&tone);
        println!("10 kHz alias level {ratio:.5}");
        assert!(ratio < 0.01, "alias level {ratio}");
        // 6 kHz passes nearly untouched.
        let tone = sine(6_000.0, 44_100, 1.0);
        let out = resample(&tone, 1, 44_100, 16_000).unwrap();
        let ratio = rms(&out[500..15_500]) / rms(&tone);
        println!("6 kHz level {ratio:.4}");
        assert!((0.95..1.05).contains(&ratio), "6 kHz level {ratio}");
    }

    #[test]
    fn same_rate_passes_through() {
        let input = sine(100.0, 16_000, 0.1);
        assert_eq!(resample(&input, 1, 16_000, 16_000).unwrap(), input);
    }

    /// A click must stay where it was: a resampler delay would move every
    /// timestamp of a transcript. (A sine cannot show this: it repeats.)
    #[test]
    fn resampling_does_not_shift_time() {
        for (from, to) in [
            (44_100, 16_000),
            (48_000, 16_000),
            (22_050, 16_000),
            (8_000, 16_000),
            (16_000, 44_100),
        ] {
            let mut click = vec![0f32; from as usize];
            click[from as usize / 4] = 1.0;
            let out = resample(&click, 1, from, to).unwrap();
            assert_eq!(out.len(), to as usize);
            let peak = out
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .map(|(i, _)| i)
                .unwrap();
            let expected = to as usize / 4;
            assert!(
                peak.abs_diff(expected) <= 2,
                "{from}->{to}: click at {peak}, expected {expected}"
            );
        }
    }

    #[test]
    fn downmix_layouts() {
        let mut mono = vec![Vec::new()];
        downmix_into(&[0.2, 0.4, 1.0, 0.0], 2, ChannelLayout::Mono, &mut mono);
        assert_eq!(mono[0].len(), 2);
        assert!((mono[0][0] - 0.3).abs() < 1e-6 && (mono[0][1] - 0.5).abs() < 1e-6);
        let mut stereo = vec![Vec::new(), Vec::new()];
        downmix_into(&[0.7], 1, ChannelLayout::Stereo, &mut stereo);
        downmix_into(&[0.1, 0.2, 0.3], 3, ChannelLayout::Stereo, &mut stereo);
        assert_eq!(stereo, vec![vec![0.7, 0.1], vec![0.7, 0.2]]);
    }

    #[test]
    fn stereo_resampling_keeps_channels_apart() {
        let left = sine(440.0, 48_000, 0.5);
        let input: Vec<f32> = left.iter().flat_map(|&s| [s, 0.0]).collect();
        let out = resample(&input, 2, 48_000, 44_100).unwrap();
        assert_eq!(out.len(), 2 * 22_050);
        assert!(out.iter().skip(1).step_by(2).all(|s| s.abs() < 1e-3));
        let ideal = sine(440.0, 44_100, 0.5);
        let max_err = out
            .iter()
            .step_by(2)
            .zip(&ideal)
            .skip(200)
            .take(21_000)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_err < 0.01, "max error {max_err}");
    }
}
