//! The batched pipeline (`WhisperModel::transcribe_batched`) on real
//! recordings with the real weights: the two-speaker call and JFK's clip
//! joined by silence (about 45 s, so several chunks), cut by Silero VAD as
//! the engine cuts a batched job's speech (regions of at most 30 s).
//!
//! Batched decoding must be deterministic, give the same words whatever
//! the batch size (each chunk is its own row), stay as accurate as the
//! sequential loop on the same regions, and keep times and word timings on
//! the recording's timeline and inside their chunks.

use std::sync::Mutex;

use candle_core::Device;
use murmur_models::audio;
use murmur_models::fetch;
use murmur_models::testaudio;
use murmur_models::transcript::{SpeechRegion, Transcript};
use murmur_models::vad::{SileroVad, VadParams};
use murmur_models::wer::{stm_file_text, wer};
use murmur_models::whisper::{plan_chunks, ChunkSource, DecodeOptions, WhisperModel};

/// One model decoding at a time on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

const SR: usize = 16_000;

/// A recording held in memory, read in one-second pieces.
struct Memory(Vec<f32>);

impl ChunkSource for Memory {
    type Error = String;
    type Reader = std::vec::IntoIter<Result<Vec<f32>, String>>;

    fn open(&self) -> Self::Reader {
        self.0
            .chunks(SR)
            .map(|c| Ok(c.to_vec()))
            .collect::<Vec<_>>()
            .into_iter()
    }
}

fn samples(path: &std::path::Path) -> Vec<f32> {
    audio::decode_file(path).expect("decode").samples
}

/// The call, 2 s of silence, JFK; and its reference text in time order.
fn recording() -> (Vec<f32>, String) {
    let call = testaudio::pyannote_sample().expect("fetch the call");
    let jfk = testaudio::jfk().expect("fetch jfk");
    let mut pcm = samples(&call.wav);
    pcm.extend(std::iter::repeat_n(0.0, 2 * SR));
    pcm.extend(samples(&jfk));
    let call_text = stm_file_text(&call.stm).expect("read stm");
    (pcm, format!("{call_text} {}", testaudio::JFK_TEXT))
}

/// Speech regions as the engine finds them for a batched job.
fn regions(pcm: &[f32]) -> Vec<SpeechRegion> {
    let dir = fetch::install_cached("silero-vad")
        .expect("install VAD")
        .path;
    let vad = SileroVad::load_dir(&dir, &Device::Cpu).expect("load VAD");
    let params = VadParams {
        max_speech_s: Some(30.0),
        ..VadParams::default()
    };
    vad.speech_regions(pcm, &params).expect("VAD")
}

fn batched(
    m: &WhisperModel,
    pcm: &[f32],
    regions: &[SpeechRegion],
    opts: &DecodeOptions,
    batch: usize,
) -> Transcript {
    m.transcribe_batched(
        &Memory(pcm.to_vec()),
        pcm.len(),
        regions,
        opts,
        batch,
        &mut |_| true,
    )
    .expect("transcribe batched")
}

#[test]
fn batched_decoding_matches_the_sequential_loop_whatever_the_batch() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (pcm, reference) = recording();
    let regions = regions(&pcm);
    let chunks = plan_chunks(&regions, pcm.len());
    assert!(chunks.len() >= 2, "several chunks to batch: {chunks:?}");
    let dir = fetch::install_cached("tiny.en").expect("install").path;
    let m = WhisperModel::load(&dir, &Device::Cpu).expect("load");
    let opts = DecodeOptions::default();

    let sequential = m
        .transcribe_regions(&pcm, &regions, &opts, &mut |_| true)
        .expect("sequential");
    let one = batched(&m, &pcm, &regions, &opts, 1);
    let four = batched(&m, &pcm, &regions, &opts, 4);
    let again = batched(&m, &pcm, &regions, &opts, 4);
    let (w_seq, w_four) = (
        wer(&reference, &sequential.text),
        wer(&reference, &four.text),
    );
    eprintln!(
        "{} chunks; sequential WER {w_seq:.3}: {}\nbatch 4 WER {w_four:.3}: {}",
        chunks.len(),
        sequential.text,
        four.text
    );
    assert_eq!(
        four.text, again.text,
        "batched decoding is not deterministic"
    );
    // Rows are independent: the batch size changes nothing but float
    // rounding in the products, so at most a word in a hundred.
    let between = wer(&one.text, &four.text);
    assert!(
        between <= 0.01,
        "batch 1 and 4 differ by {between:.3}:\n{}\n{}",
        one.text,
        four.text
    );
    assert!(
        w_four <= w_seq + 0.05,
        "batch 4 WER {w_four:.3} against sequential {w_seq:.3}"
    );
    assert!(four
        .text
        .to_lowercase()
        .contains("ask not what your country can do for you"));

    let total = pcm.len() as f64 / SR as f64;
    let mut last_start = 0.0;
    for s in &four.segments {
        assert!(
            s.start >= last_start && s.start < s.end && s.end <= total + 1e-6,
            "{s:?}"
        );
        let inside = chunks.iter().any(|c| {
            s.start >= c.start as f64 / SR as f64 - 1e-3 && s.end <= c.end as f64 / SR as f64 + 1e-3
        });
        assert!(
            inside,
            "segment {:.2}-{:.2} crosses a chunk edge",
            s.start, s.end
        );
        last_start = s.start;
    }
    let ids: Vec<u32> = four.segments.iter().map(|s| s.id).collect();
    assert_eq!(ids, (0..ids.len() as u32).collect::<Vec<_>>());
}

#[test]
fn batched_words_are_timed_on_the_recordings_timeline() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (pcm, _) = recording();
    let regions = regions(&pcm);
    let dir = fetch::install_cached("tiny.en").expect("install").path;
    let m = WhisperModel::load(&dir, &Device::Cpu).expect("load");
    let opts = DecodeOptions {
        word_timestamps: true,
        ..DecodeOptions::default()
    };
    let t = batched(&m, &pcm, &regions, &opts, 4);
    let words: Vec<_> = t
        .segments
        .iter()
        .flat_map(|s| s.words.clone().expect("words"))
        .collect();
    assert!(words.len() >= 90, "{} words", words.len());
    for s in &t.segments {
        for w in s.words.as_deref().unwrap_or_default() {
            assert!(w.start <= w.end, "{w:?}");
            // As openai-whisper: a last word found too long is cut to the
            // median word length (at most 0.7 s), which may still end after
            // the segment's last timestamp.
            assert!(
                w.start >= s.start - 1e-3 && w.start <= s.end,
                "{w:?} outside {s:?}"
            );
            assert!(w.end <= s.end + 0.7 + 1e-3, "{w:?} ends long after {s:?}");
        }
    }
    for pair in words.windows(2) {
        assert!(pair[1].start >= pair[0].start - 1e-3, "{pair:?}");
    }
    // JFK starts 32 s in (the call, then 2 s of silence): his last
    // "country" ends near the recording's end.
    let total = pcm.len() as f64 / SR as f64;
    let country = words
        .iter()
        .rfind(|w| w.word.to_lowercase().contains("country"))
        .expect("country");
    assert!(
        country.end > total - 2.5 && country.end <= total + 0.05,
        "{country:?} in {total:.2} s"
    );
}

/// A sentence said again within a chunk: JFK's clip five times over
/// (55 s, two chunks), base, beam 5, batch 4. The repetition guard cuts
/// each chunk before the sentence comes round again; the chunk's rest,
/// from where that saying starts in the audio, is decoded as a piece of
/// its own. Without that, the pieces went on past the cut: 81 words of 110.
#[test]
fn a_sentence_said_again_in_a_chunk_is_heard_again() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let jfk = samples(&testaudio::jfk().expect("fetch jfk"));
    let pcm = jfk.repeat(5);
    let whole = [SpeechRegion {
        start: 0.0,
        end: pcm.len() as f64 / SR as f64,
    }];
    let dir = fetch::install_cached("base").expect("install").path;
    let m = WhisperModel::load(&dir, &Device::Cpu).expect("load");
    let opts = DecodeOptions {
        beam_size: 5,
        ..DecodeOptions::default()
    };
    let t = batched(&m, &pcm, &whole, &opts, 4);
    let reference = [testaudio::JFK_TEXT; 5].join(" ");
    let w = wer(&reference, &t.text);
    assert!(w <= 0.05, "WER {w}: {}", t.text);
}
