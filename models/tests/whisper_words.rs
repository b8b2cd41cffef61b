//! Word timestamps on real recordings with the real weights: JFK's clip
//! (tiny.en and base) and pyannote-audio's 30 s two-speaker call (base).
//! Invariants (every word inside its segment, start <= end, monotonic, the
//! words spell the segment) and timings that can fail: where JFK's first
//! word starts, where "country" ends, the pause before "ask".

use std::path::PathBuf;
use std::sync::Mutex;

use murmur_models::audio;
use murmur_models::fetch;
use murmur_models::testaudio;
use murmur_models::transcript::{SpeechRegion, Transcript, Word};
use murmur_models::whisper::{DecodeOptions, WhisperModel};

/// One model decoding at a time on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn model(name: &str) -> PathBuf {
    fetch::install_cached(name).expect("install model").path
}

fn samples(path: &std::path::Path) -> Vec<f32> {
    let decoded = audio::decode_file(path).expect("decode");
    assert_eq!((decoded.sample_rate, decoded.channels), (16_000, 1));
    decoded.samples
}

fn with_words() -> DecodeOptions {
    DecodeOptions {
        word_timestamps: true,
        ..DecodeOptions::default()
    }
}

fn transcribe(name: &str, audio: &[f32], opts: &DecodeOptions) -> Transcript {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = WhisperModel::load(&model(name), &candle_core::Device::Cpu).expect("load");
    let t = m
        .transcribe(audio, opts, &mut |_| true)
        .expect("transcribe");
    for s in &t.segments {
        eprintln!("[{:.2} - {:.2}] {}", s.start, s.end, s.text);
        for w in s.words.iter().flatten() {
            eprintln!(
                "    {:6.2} {:6.2} {:.2} {:?}",
                w.start, w.end, w.probability, w.word
            );
        }
    }
    t
}

/// Lower-case letters and digits only: spacing and punctuation aside.
fn letters(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Every segment has words; each word lies inside its segment, has
/// start <= end and a probability, follows the previous word, and the
/// words spell the segment's text.
fn check_words(t: &Transcript) -> Vec<Word> {
    assert!(!t.segments.is_empty());
    let mut all = Vec::new();
    let mut last_end = 0.0;
    for s in &t.segments {
        let words = s.words.as_ref().expect("words asked for");
        assert!(!words.is_empty(), "segment without words: {s:?}");
        let joined: String = words.iter().map(|w| w.word.as_str()).collect();
        assert_eq!(joined.trim(), s.text, "words spell the segment");
        for w in words {
            assert!(w.start <= w.end, "start after end: {w:?}");
            assert!(w.start >= last_end - 1e-9, "not monotonic at {w:?}");
            assert!(
                w.start >= s.start - 1e-9 && w.end <= s.end + 1e-9,
                "word {w:?} outside its segment {}..{}",
                s.start,
                s.end
            );
            assert!((0.0..=1.0).contains(&w.probability), "{w:?}");
            last_end = w.end;
        }
        all.extend(words.iter().cloned());
    }
    all
}

fn find<'a>(words: &'a [Word], text: &str) -> &'a Word {
    words
        .iter()
        .find(|w| letters(&w.word) == text)
        .unwrap_or_else(|| panic!("no word {text:?} in {words:?}"))
}

fn check_jfk(t: &Transcript) {
    let words = check_words(t);
    assert_eq!(
        letters(&t.text),
        letters(&words.iter().map(|w| w.word.as_str()).collect::<String>())
    );
    // "And so my fellow Americans, ask not what your country can do for
    // you, ask what you can do for your country." (11 s, speech from about
    // 0.3 s to 10.6 s, a pause of about a second after "Americans").
    assert!(
        words[0].start < 1.0,
        "first word starts late: {:?}",
        words[0]
    );
    let last = words.last().expect("words");
    assert_eq!(letters(&last.word), "country");
    assert!(
        (10.0..=11.0).contains(&last.end),
        "\"country\" should end near the clip's end: {last:?}"
    );
    // The first "country" ends before the second "ask" starts (after 7 s).
    let country = find(&words, "country");
    assert!(
        (5.0..=7.0).contains(&country.end),
        "the first \"country\" should end about 6 s in: {country:?}"
    );
    let second_ask = words
        .iter()
        .filter(|w| letters(&w.word) == "ask")
        .nth(1)
        .expect("two asks");
    assert!(
        (7.0..=8.8).contains(&second_ask.start),
        "the second \"ask\" should start after 7 s: {second_ask:?}"
    );
}

#[test]
fn tiny_en_times_every_word_of_jfk() {
    let audio = samples(&testaudio::jfk().expect("jfk"));
    let t = transcribe("tiny.en", &audio, &with_words());
    check_jfk(&t);
}

#[test]
fn base_times_every_word_of_jfk() {
    let audio = samples(&testaudio::jfk().expect("jfk"));
    let t = transcribe("base", &audio, &with_words());
    check_jfk(&t);
}

#[test]
fn base_times_the_words_of_a_two_speaker_call() {
    let sample = testaudio::pyannote_sample().expect("sample");
    let audio = samples(&sample.wav);
    let t = transcribe("base", &audio, &with_words());
    let words = check_words(&t);
    let spoken = t.text.split_whitespace().count();
    assert!(
        words.len() >= spoken * 9 / 10 && words.len() <= spoken,
        "{} words for a text of {spoken}",
        words.len()
    );
    // Speech runs to the end of the 30 s call.
    let last = words.last().expect("words");
    assert!(last.end > 25.0 && last.end <= 30.0 + 1e-9, "{last:?}");
}

#[test]
fn words_of_speech_regions_are_on_the_original_timeline() {
    // JFK's clip preceded by 20 s of silence, decoded as one region.
    let jfk = samples(&testaudio::jfk().expect("jfk"));
    let offset = 20.0;
    let mut audio = vec![0f32; (offset * 16_000.0) as usize];
    audio.extend_from_slice(&jfk);
    let regions = [SpeechRegion {
        start: offset,
        end: offset + jfk.len() as f64 / 16_000.0,
    }];
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = WhisperModel::load(&model("tiny.en"), &candle_core::Device::Cpu).expect("load");
    let t = m
        .transcribe_regions(&audio, &regions, &with_words(), &mut |_| true)
        .expect("transcribe");
    let words = check_words(&t);
    assert!(
        words[0].start >= offset && words[0].start < offset + 1.0,
        "{:?}",
        words[0]
    );
    let last = words.last().expect("words");
    assert!(
        (offset + 10.0..=offset + 11.0).contains(&last.end),
        "{last:?}"
    );
}

#[test]
fn no_words_unless_asked() {
    let audio = samples(&testaudio::jfk().expect("jfk"));
    let t = transcribe("tiny.en", &audio, &DecodeOptions::default());
    assert!(t.segments.iter().all(|s| s.words.is_none()));
}
