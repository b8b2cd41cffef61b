//! Tests of the subtitle layout options.

use super::*;
use crate::transcript::Word;

/// A segment whose words are spread evenly over `start..end`.
fn worded(start: f64, end: f64, text: &str, speaker: Option<&str>) -> Segment {
    let words: Vec<&str> = text.split_whitespace().collect();
    let step = (end - start) / words.len() as f64;
    Segment {
        start,
        end,
        text: format!(" {text}"),
        speaker: speaker.map(Into::into),
        words: Some(
            words
                .iter()
                .enumerate()
                .map(|(i, w)| Word {
                    word: format!(" {w}"),
                    start: start + i as f64 * step,
                    end: start + (i as f64 + 0.8) * step,
                    probability: 0.9,
                    speaker: speaker.map(Into::into),
                })
                .collect(),
        ),
        ..Segment::default()
    }
}

fn opts(width: Option<usize>, count: Option<usize>, words: Option<usize>) -> SubtitleOptions {
    SubtitleOptions {
        max_line_width: width,
        max_line_count: count,
        max_words_per_line: words,
        highlight_words: false,
    }
}

const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, \
                   ask what you can do for your country.";

#[test]
fn line_width_wraps_each_segment_at_word_boundaries() {
    let segments = vec![worded(0.3, 10.9, JFK, None)];
    let srt = to_srt_with(&segments, &opts(Some(20), None, None)).unwrap();
    let cues = parse_srt(&srt).unwrap();
    assert_eq!(cues.len(), 1, "one cue per segment without a line count");
    let lines: Vec<&str> = cues[0].text.lines().collect();
    assert!(lines.len() >= 5, "{lines:?}");
    assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
    assert_eq!(lines.join(" "), JFK);
    // Cue times follow the words: first word's start, last word's end.
    let words = segments[0].words.as_ref().unwrap();
    assert!((cues[0].start - words[0].start).abs() < 1e-3);
    assert!((cues[0].end - words.last().unwrap().end).abs() < 1e-3);
}

#[test]
fn a_line_count_makes_cues_run_across_segments_until_full() {
    let segments = vec![
        worded(0.0, 2.0, "one two three", None),
        worded(2.1, 4.0, "four five six", None),
        // More than 3 s of silence: a new cue even though there is room.
        worded(8.0, 9.0, "seven", None),
    ];
    let srt = to_srt_with(&segments, &opts(Some(9), Some(2), None)).unwrap();
    let cues = parse_srt(&srt).unwrap();
    let texts: Vec<&str> = cues.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        ["one two\nthree", "four five\nsix", "seven"],
        "cues hold at most 2 lines of at most 9 chars"
    );
    // Without the width, the count alone lets both segments share one cue.
    let srt = to_srt_with(&segments, &opts(None, Some(2), None)).unwrap();
    let texts: Vec<String> = parse_srt(&srt)
        .unwrap()
        .into_iter()
        .map(|c| c.text)
        .collect();
    assert_eq!(texts, ["one two three four five six", "seven"]);
}

#[test]
fn a_speaker_change_always_ends_a_cue() {
    let segments = vec![
        worded(0.0, 1.0, "hello there", Some("SPEAKER_00")),
        worded(1.1, 2.0, "hi", Some("SPEAKER_01")),
    ];
    let vtt = to_vtt_with(&segments, &opts(Some(40), Some(3), None)).unwrap();
    let cues = parse_vtt(&vtt).unwrap();
    assert_eq!(cues.len(), 2);
    assert_eq!(cues[0].speaker.as_deref(), Some("SPEAKER_00"));
    assert_eq!(cues[1].speaker.as_deref(), Some("SPEAKER_01"));
    assert_eq!(cues[1].text, "hi");
}

#[test]
fn one_word_per_line_alone_gives_one_cue_per_word() {
    let segments = vec![worded(0.0, 3.0, "ask not what", None)];
    let srt = to_srt_with(&segments, &opts(None, None, Some(1))).unwrap();
    let cues = parse_srt(&srt).unwrap();
    let words = segments[0].words.as_ref().unwrap();
    assert_eq!(cues.len(), 3);
    for (cue, word) in cues.iter().zip(words) {
        assert_eq!(cue.text, word.word.trim());
        assert!((cue.start - word.start).abs() < 1e-3 && (cue.end - word.end).abs() < 1e-3);
    }
    // Two words a line, two lines a cue.
    let segments = vec![worded(0.0, 5.0, "a b c d e", None)];
    let srt = to_srt_with(&segments, &opts(None, Some(2), Some(2))).unwrap();
    let texts: Vec<String> = parse_srt(&srt)
        .unwrap()
        .into_iter()
        .map(|c| c.text)
        .collect();
    assert_eq!(texts, ["a b\nc d", "e"]);
}

#[test]
fn highlighted_words_underline_one_word_per_cue_and_fill_the_gaps() {
    let segments = vec![worded(1.0, 2.0, "x<y & z", None)];
    let options = SubtitleOptions {
        highlight_words: true,
        ..SubtitleOptions::default()
    };
    let vtt = to_vtt_with(&segments, &options).unwrap();
    // Three words with gaps between them: a plain cue in each gap.
    let cues: Vec<&str> = vtt
        .split("\n\n")
        .skip(1)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(cues.len(), 5, "{vtt}");
    assert!(cues[0].ends_with("<u>x&lt;y</u> &amp; z"), "{vtt}");
    assert!(
        cues[1].ends_with("\nx&lt;y &amp; z"),
        "the gap is plain: {vtt}"
    );
    assert!(cues[2].ends_with("x&lt;y <u>&amp;</u> z"), "{vtt}");
    assert!(cues[4].ends_with("x&lt;y &amp; <u>z</u>"), "{vtt}");
    let parsed = parse_vtt(&vtt).unwrap();
    assert!(parsed.windows(2).all(|p| p[0].end <= p[1].start + 1e-9));
    assert!(parsed.iter().all(|c| c.text == "x<y & z"));
    // SRT underlines with the same tag.
    let srt = to_srt_with(&segments, &options).unwrap();
    assert!(srt.contains("<u>x<y</u> & z"), "{srt}");
}

#[test]
fn options_that_need_words_are_refused_without_them() {
    let segments = vec![Segment {
        start: 0.0,
        end: 5.0,
        text: " a long line of text without word times".into(),
        ..Segment::default()
    }];
    for options in [
        opts(None, Some(2), None),
        opts(None, None, Some(3)),
        SubtitleOptions {
            highlight_words: true,
            ..SubtitleOptions::default()
        },
    ] {
        let err = to_srt_with(&segments, &options).unwrap_err();
        assert!(err.to_string().contains("word_timestamps"), "{err}");
    }
    // The width alone wraps the segment's text and keeps its times.
    let srt = to_srt_with(&segments, &opts(Some(12), None, None)).unwrap();
    let cue = &parse_srt(&srt).unwrap()[0];
    assert_eq!(cue.text, "a long line\nof text\nwithout word\ntimes");
    assert_eq!((cue.start, cue.end), (0.0, 5.0));
}

#[test]
fn options_out_of_range_or_on_other_formats_are_refused() {
    let t = Transcript {
        language: None,
        language_probability: None,
        language_candidates: None,
        duration_s: 1.0,
        text: "hi".into(),
        segments: vec![worded(0.0, 1.0, "hi", None)],
        speakers: None,
    };
    for bad in [opts(Some(0), None, None), opts(None, Some(1001), None)] {
        let err = render_with(&t, Format::Srt, &bad).unwrap_err();
        assert!(err.to_string().contains("between 1 and 1000"), "{err}");
    }
    let err = render_with(&t, Format::Txt, &opts(Some(10), None, None)).unwrap_err();
    assert!(err.to_string().contains("srt and vtt"), "{err}");
    assert_eq!(
        render_with(&t, Format::Srt, &SubtitleOptions::default()).unwrap(),
        render(&t, Format::Srt)
    );
}

#[test]
fn srt_never_holds_an_arrow_however_many_dashes() {
    let segments = vec![Segment {
        start: 0.0,
        end: 1.0,
        text: "a ---> b ----> c".into(),
        ..Segment::default()
    }];
    let srt = to_srt(&segments);
    assert!(!srt.lines().skip(2).any(|l| l.contains("-->")), "{srt}");
}

/// Every layout keeps every word once, in order, on lines no wider than
/// asked (unless one word is wider alone), with at most the lines asked.
#[test]
fn every_layout_keeps_every_word_in_order() {
    let text = "Whisper splits long recordings into thirty second windows and \
                decodes each one with the text of the previous window as its prompt, \
                supercalifragilisticexpialidocious included.";
    let segments = vec![
        worded(0.0, 6.0, &text[..60], Some("A")),
        worded(6.5, 14.0, &text[60..], Some("A")),
    ];
    let all: Vec<String> = segments
        .iter()
        .flat_map(|s| s.words.clone().unwrap())
        .map(|w| w.word.trim().to_string())
        .collect();
    for width in [None, Some(1), Some(7), Some(16), Some(42)] {
        for count in [None, Some(1), Some(2), Some(3)] {
            for per_line in [None, Some(1), Some(3)] {
                let o = opts(width, count, per_line);
                let cues = parse_srt(&to_srt_with(&segments, &o).unwrap()).unwrap();
                let words: Vec<String> = cues
                    .iter()
                    .flat_map(|c| c.text.split_whitespace().map(str::to_string))
                    .collect();
                assert_eq!(words, all, "{o:?}");
                for cue in &cues {
                    let lines: Vec<&str> = cue.text.lines().collect();
                    if let Some(n) = count.or(per_line.map(|_| 1)) {
                        assert!(lines.len() <= n, "{o:?}: {lines:?}");
                    }
                    for line in lines {
                        let n_words = line.split_whitespace().count();
                        if let Some(w) = width {
                            assert!(line.chars().count() <= w || n_words == 1, "{o:?}: {line}");
                        }
                        if let Some(p) = per_line {
                            assert!(n_words <= p, "{o:?}: {line}");
                        }
                    }
                }
                assert!(cues.windows(2).all(|p| p[0].end <= p[1].start + 1e-9));
            }
        }
    }
}
