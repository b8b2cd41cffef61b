//! Decoding to samples: [`decode_inner`] keeps the whole output (what
//! [`super::decode_file_with`] answers), [`decode_chunks_inner`] hands it on
//! in chunks and keeps nothing, so its memory does not grow with the audio's
//! length.

use symphonia::core::audio::SampleBuffer;

use super::packets::{check_truncation, open, walk_packets, Walked};
use super::resample::ResampleStream;
use super::{AudioError, ChunkedDecode, DecodeOptions, DecodedAudio, Input};

/// Output frames a chunked decode gathers before handing them on: one second
/// at 16 kHz (64 KB of mono floats), few calls, little memory.
pub(super) const CHUNK_FRAMES: usize = 16_384;

/// Decodes all of `path` and keeps every output sample.
pub(super) fn decode_inner(
    input: Input<'_>,
    options: &DecodeOptions,
    should_stop: &dyn Fn() -> bool,
) -> Result<DecodedAudio, AudioError> {
    let path = input.path();
    let (stream, walked) = decode_walk(input, options, should_stop, true, &mut |_| Ok(()))?;
    let samples = stream.finish()?;
    if samples.is_empty() {
        return Err(AudioError::NoSamples {
            path: path.to_path_buf(),
        });
    }
    Ok(DecodedAudio {
        samples,
        sample_rate: options.sample_rate,
        channels: options.channels.count() as u16,
        duration_s: walked.duration_s(),
        source_rate: walked.source_rate,
        source_channels: u16::try_from(walked.source_channels).unwrap_or(u16::MAX),
    })
}

/// Decodes all of `path`, handing the output to `on_chunk` every
/// [`CHUNK_FRAMES`] frames or so with the index of its first frame, and
/// keeping none of it. The same resampler runs as in [`decode_inner`], so
/// the chunks laid end to end are exactly its samples.
pub(super) fn decode_chunks_inner(
    input: Input<'_>,
    options: &DecodeOptions,
    should_stop: &dyn Fn() -> bool,
    mut on_chunk: impl FnMut(&[f32], u64) -> Result<(), AudioError>,
) -> Result<ChunkedDecode, AudioError> {
    let path = input.path();
    let channels = options.channels.count();
    let mut next_frame = 0u64;
    let mut hand_on = |samples: &[f32], next_frame: &mut u64| -> Result<(), AudioError> {
        if samples.is_empty() {
            return Ok(());
        }
        on_chunk(samples, *next_frame)?;
        *next_frame += (samples.len() / channels) as u64;
        Ok(())
    };
    let (stream, walked) = decode_walk(input, options, should_stop, false, &mut |stream| {
        if stream.output().len() >= CHUNK_FRAMES * channels {
            hand_on(stream.output(), &mut next_frame)?;
            stream.take_output();
        }
        Ok(())
    })?;
    let tail = stream.finish()?;
    hand_on(&tail, &mut next_frame)?;
    if next_frame == 0 {
        return Err(AudioError::NoSamples {
            path: path.to_path_buf(),
        });
    }
    Ok(ChunkedDecode {
        frames: next_frame,
        sample_rate: options.sample_rate,
        channels: channels as u16,
        duration_s: walked.duration_s(),
        source_rate: walked.source_rate,
        source_channels: u16::try_from(walked.source_channels).unwrap_or(u16::MAX),
    })
}

/// The decode both entry points share: checks the header against the
/// length limit, walks the packets into a resampler (calling `after_packet`
/// after each, so a chunked decode can take the output), checks for
/// truncation, and answers the resampler (to finish) with what the walk
/// found. `size_from_header` sizes the output buffer for the whole file.
fn decode_walk(
    input: Input<'_>,
    options: &DecodeOptions,
    should_stop: &dyn Fn() -> bool,
    size_from_header: bool,
    after_packet: &mut dyn FnMut(&mut ResampleStream) -> Result<(), AudioError>,
) -> Result<(ResampleStream, Walked), AudioError> {
    let path = input.path();
    let opened = open(input)?;
    let params = opened.params.clone();
    let header_frames = params.n_frames;
    if header_frames == Some(0) {
        return Err(AudioError::NoSamples {
            path: path.to_path_buf(),
        });
    }
    if let (Some(limit), Some(frames), Some(rate)) =
        (options.max_duration_s, header_frames, params.sample_rate)
    {
        let duration_s = frames as f64 / f64::from(rate.max(1));
        if duration_s > limit {
            return Err(AudioError::TooLong {
                path: path.to_path_buf(),
                duration_s,
                limit_s: limit,
            });
        }
    }
    let out_channels = options.channels.count();
    let expected_frames = if size_from_header {
        header_frames.unwrap_or(0) as usize
    } else {
        0
    };
    let mut stream: Option<ResampleStream> = None;
    let mut interleaved: Option<SampleBuffer<f32>> = None;
    let walked = walk_packets(
        input,
        opened,
        options.max_duration_s,
        should_stop,
        |decoded, kept| {
            let spec = *decoded.spec();
            let channels = spec.channels.count();
            let stream = match &mut stream {
                Some(stream) => stream,
                slot => slot.insert(ResampleStream::new(
                    spec.rate,
                    options.sample_rate,
                    out_channels,
                    expected_frames,
                )?),
            };
            let needed = decoded.capacity() as u64;
            let buf = match &mut interleaved {
                Some(buf) if buf.capacity() as u64 >= needed * channels as u64 => buf,
                slot => slot.insert(SampleBuffer::<f32>::new(needed, spec)),
            };
            buf.copy_interleaved_ref(decoded);
            // Float formats carry any bit pattern: NaN or infinity would
            // poison the resampler's whole output and every model after it.
            for s in buf.samples_mut() {
                *s = if s.is_finite() {
                    s.clamp(-1.0, 1.0)
                } else {
                    0.0
                };
            }
            let all = buf.samples();
            stream.push(
                &all[kept.start * channels..kept.end * channels],
                channels,
                options.channels,
            )?;
            after_packet(stream)
        },
    )?;
    if let Some(expected) = header_frames {
        check_truncation(
            path,
            &params,
            expected,
            walked.raw_frames,
            walked.source_rate,
        )?;
    }
    let stream = stream.ok_or_else(|| AudioError::NoSamples {
        path: path.to_path_buf(),
    })?;
    Ok((stream, walked))
}
