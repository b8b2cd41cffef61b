//! Tests of every format's writer and parser.

use super::parse::parse_timestamp;
use super::*;

fn seg(id: u32, start: f64, end: f64, text: &str, speaker: Option<&str>) -> Segment {
    Segment {
        id,
        start,
        end,
        text: text.into(),
        speaker: speaker.map(Into::into),
        ..Segment::default()
    }
}

fn transcript(segments: Vec<Segment>) -> Transcript {
    Transcript {
        language_probability: None,
        language_candidates: None,
        language: Some("en".into()),
        duration_s: 11.0,
        text: segments
            .iter()
            .map(|s| s.text.trim())
            .collect::<Vec<_>>()
            .join(" "),
        segments,
        speakers: None,
    }
}

#[test]
fn timestamps() {
    assert_eq!(format_timestamp(1.0, ','), "00:00:01,000");
    assert_eq!(format_timestamp(1.0, '.'), "00:00:01.000");
    assert_eq!(format_timestamp(3661.5, ','), "01:01:01,500");
    assert_eq!(format_timestamp(0.0005, '.'), "00:00:00.001");
    assert_eq!(format_timestamp(59.9996, '.'), "00:01:00.000");
    assert_eq!(
        format_timestamp(100.0 * 3600.0 + 0.25, ','),
        "100:00:00,250"
    );
    assert_eq!(format_timestamp(-3.0, ','), "00:00:00,000");
    assert_eq!(format_timestamp(f64::NAN, ','), "00:00:00,000");
    assert_eq!(parse_timestamp("100:00:00,250", false), Some(360_000.25));
    assert_eq!(parse_timestamp("01:02.500", true), Some(62.5));
    assert_eq!(parse_timestamp("01:02.500", false), None);
    assert_eq!(parse_timestamp("00:61:00,000", false), None);
}

#[test]
fn format_names() {
    for f in Format::ALL {
        assert_eq!(f.as_str().parse::<Format>().unwrap(), f);
        assert_eq!(f.to_string(), f.extension());
    }
    assert_eq!("WebVTT".parse::<Format>().unwrap(), Format::Vtt);
    assert_eq!(
        Format::Srt.content_type(),
        "application/x-subrip; charset=utf-8"
    );
    assert_eq!(Format::Vtt.content_type(), "text/vtt; charset=utf-8");
    assert!(matches!(
        "docx".parse::<Format>(),
        Err(FormatError::UnknownFormat(_))
    ));
}

#[test]
fn srt_shape() {
    let t = transcript(vec![
        seg(0, 0.0, 2.5, " And so my fellow Americans,", None),
        seg(1, 2.5, 3661.0, "ask not", Some("SPEAKER_00")),
    ]);
    assert_eq!(
        render(&t, Format::Srt),
        "1\n00:00:00,000 --> 00:00:02,500\nAnd so my fellow Americans,\n\n\
         2\n00:00:02,500 --> 01:01:01,000\n[SPEAKER_00]: ask not\n\n"
    );
}

#[test]
fn vtt_shape_and_escaping() {
    let t = transcript(vec![
        seg(0, 0.0, 1.0, "Tom & Jerry <3", None),
        seg(1, 1.0, 2.0, "a --> b", Some("Ann <host>")),
    ]);
    assert_eq!(
        render(&t, Format::Vtt),
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nTom &amp; Jerry &lt;3\n\n\
         00:00:01.000 --> 00:00:02.000\n<v Ann &lt;host&gt;>a --&gt; b\n\n"
    );
    let back = parse_vtt(&render(&t, Format::Vtt)).unwrap();
    assert_eq!(back, t.segments);
}

#[test]
fn newlines_never_end_a_cue_early() {
    let segments = vec![
        seg(0, 0.0, 1.0, "line one\n\n\nline two\r\n", None),
        seg(1, 1.0, 2.0, "   ", None),
        seg(2, 2.0, 3.0, "next", None),
    ];
    let srt = to_srt(&segments);
    assert!(srt.contains("line one\nline two\n\n2\n"), "{srt}");
    let back = parse_srt(&srt).unwrap();
    assert_eq!(back.len(), 2, "the empty segment is left out");
    assert_eq!(back[0].text, "line one\nline two");
    assert_eq!(back[1].text, "next");
    let vtt = parse_vtt(&to_vtt(&segments)).unwrap();
    assert_eq!(vtt[0].text, "line one\nline two");
    assert_eq!(
        to_srt(&[seg(0, 0.0, 1.0, "x --> y", None)]).lines().nth(2),
        Some("x -> y")
    );
}

#[test]
fn srt_and_vtt_round_trip() {
    let segments = vec![
        seg(0, 0.0, 2.34, "And so my fellow Americans,", None),
        seg(
            1,
            2.34,
            7.5,
            "ask not what your country can do for you,",
            None,
        ),
        seg(2, 7.5, 11.0, "ask what you can do for your country.", None),
        seg(
            3,
            4000.125,
            4001.0,
            "Later, with \"quotes\" & <angle brackets>",
            Some("SPEAKER_01"),
        ),
        seg(4, 4001.0, 4002.0, "[Music]", None),
    ];
    assert_eq!(parse_srt(&to_srt(&segments)).unwrap(), segments);
    assert_eq!(parse_vtt(&to_vtt(&segments)).unwrap(), segments);
}

#[test]
fn millisecond_times_read_back_identically() {
    for ms in (0..200_000u64).step_by(7) {
        let t = ms as f64 / 1000.0;
        let srt = to_srt(&[seg(0, t, t + 0.001, "x", None)]);
        let back = parse_srt(&srt).unwrap();
        assert_eq!((back[0].start, back[0].end), (t, (ms + 1) as f64 / 1000.0));
    }
}

#[test]
fn parsers_accept_common_variants() {
    let srt = "\u{feff}1\r\n00:00:01,000 --> 00:00:02,000\r\nHello\r\n\r\n\r\n2\r\n00:00:02.500 --> 00:00:03,000\r\nWorld\r\n";
    let s = parse_srt(srt).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!((s[1].start, s[1].text.as_str()), (2.5, "World"));

    let vtt = "WEBVTT - a title\n\nNOTE a comment\nspanning lines\n\nSTYLE\n::cue { color: red }\n\n\
               cue-1\n00:01.000 --> 00:02.000 align:start position:10%\n<v.loud Bob>Hi <i>there</i>&nbsp;!\n\n\
               00:00:03.000 --> 00:00:04.000\n<c.yellow>plain</c>\n";
    let v = parse_vtt(vtt).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].speaker.as_deref(), Some("Bob"));
    assert_eq!(v[0].text, "Hi there\u{a0}!");
    assert_eq!((v[0].start, v[0].end), (1.0, 2.0));
    assert_eq!(
        (v[1].text.as_str(), v[1].speaker.as_deref()),
        ("plain", None)
    );
}

#[test]
fn parse_errors_name_the_line() {
    let err = parse_srt("1\n00:00:01 --> 00:00:02,000\nx\n").unwrap_err();
    assert_eq!(
        err,
        FormatError::Parse {
            line: 2,
            message: "bad start time `00:00:01`".into()
        }
    );
    assert!(matches!(
        parse_vtt("1\n00:00.000 --> 00:01.000\nx"),
        Err(FormatError::Parse { line: 1, .. })
    ));
    assert!(parse_srt("").unwrap().is_empty());
}

#[test]
fn txt_and_tsv() {
    let t = transcript(vec![
        seg(0, 0.0, 2.3456, " Hello\tthere\nfriend ", None),
        seg(1, 2.3456, 4.0, "Bye.", Some("B")),
    ]);
    assert_eq!(render(&t, Format::Txt), "Hello there friend\n[B]: Bye.\n");
    assert_eq!(
        render(&t, Format::Tsv),
        "start\tend\ttext\n0\t2346\tHello there friend\n2346\t4000\t[B]: Bye.\n"
    );
    let empty = Transcript {
        language_probability: None,
        language_candidates: None,
        segments: vec![],
        text: " just text ".into(),
        ..t.clone()
    };
    assert_eq!(to_txt(&empty), "just text\n");
}

#[test]
fn json_is_the_api_shape() {
    let mut t = transcript(vec![seg(0, 0.0, 1.5, "Hi", Some("SPEAKER_00"))]);
    t.speakers = Some(vec!["SPEAKER_00".into()]);
    let v: serde_json::Value = serde_json::from_str(&render(&t, Format::Json)).unwrap();
    assert_eq!(v["language"], "en");
    assert_eq!(v["duration_s"], 11.0);
    assert_eq!(v["segments"][0]["speaker"], "SPEAKER_00");
    assert_eq!(v["segments"][0]["end"], 1.5);
    assert_eq!(v["speakers"][0], "SPEAKER_00");
    let plain = transcript(vec![seg(0, 0.0, 1.0, "Hi", None)]);
    let v: serde_json::Value = serde_json::from_str(&to_json(&plain)).unwrap();
    assert!(v.get("speakers").is_none() && v["segments"][0].get("speaker").is_none());
}

#[test]
fn rttm_round_trip() {
    let turns = vec![
        SpeakerTurn {
            start: 0.5,
            end: 2.25,
            speaker: "SPEAKER_00".into(),
        },
        SpeakerTurn {
            start: 2.0,
            end: 3.0,
            speaker: "speaker two".into(),
        },
    ];
    let text = to_rttm("my file", &turns);
    assert_eq!(
        text.lines().next(),
        Some("SPEAKER my_file 1 0.500 1.750 <NA> <NA> SPEAKER_00 <NA> <NA>")
    );
    let back = parse_rttm(&text).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back[1].speaker, "speaker_two");
    assert!((back[0].end - 2.25).abs() < 1e-9);
}
