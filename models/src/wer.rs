//! Word error rate, with a Whisper-style English normalisation, for tests and
//! benchmarks; and a reader for STM reference transcripts.
//!
//! Normalisation (close to Whisper's `BasicTextNormalizer`, not its full
//! English one): text in `[...]` or `(...)` is dropped (annotations such as
//! `[Music]`), apostrophes are removed inside words (`didn't` -> `didnt`),
//! every other non-alphanumeric character becomes a space, letters are
//! lowercased and whitespace collapses. Numbers stay as written, so `10` and
//! `ten` still differ.

/// Lowercased words of `text` after normalisation.
pub fn normalize_words(text: &str) -> Vec<String> {
    let mut cleaned = String::with_capacity(text.len());
    let mut depth_square = 0usize;
    let mut depth_round = 0usize;
    for c in text.chars() {
        match c {
            '[' => depth_square += 1,
            ']' => depth_square = depth_square.saturating_sub(1),
            '(' => depth_round += 1,
            ')' => depth_round = depth_round.saturating_sub(1),
            _ if depth_square > 0 || depth_round > 0 => {}
            '\'' | '\u{2019}' => {}
            c if c.is_alphanumeric() => cleaned.extend(c.to_lowercase()),
            _ => cleaned.push(' '),
        }
        if matches!(c, '[' | ']' | '(' | ')') {
            cleaned.push(' ');
        }
    }
    cleaned.split_whitespace().map(str::to_string).collect()
}

/// The normalised text: [`normalize_words`] joined by single spaces.
pub fn normalize(text: &str) -> String {
    normalize_words(text).join(" ")
}

/// Alignment counts between a reference and a hypothesis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WerStats {
    pub substitutions: usize,
    pub deletions: usize,
    pub insertions: usize,
    pub reference_words: usize,
    pub hypothesis_words: usize,
}

impl WerStats {
    /// Errors per reference word. An empty reference gives 0.0 against an
    /// empty hypothesis and 1.0 otherwise.
    pub fn wer(&self) -> f64 {
        let errors = self.substitutions + self.deletions + self.insertions;
        if self.reference_words == 0 {
            return if errors == 0 { 0.0 } else { 1.0 };
        }
        errors as f64 / self.reference_words as f64
    }
}

/// Word error rate of `hypothesis` against `reference`, both normalised.
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    wer_stats(reference, hypothesis).wer()
}

/// Minimum edit alignment counts of the normalised word sequences.
pub fn wer_stats(reference: &str, hypothesis: &str) -> WerStats {
    let r = normalize_words(reference);
    let h = normalize_words(hypothesis);
    align(&r, &h)
}

/// Levenshtein over words with two rolling rows; each cell keeps
/// (cost, substitutions, deletions, insertions) of its best path, ties
/// broken towards substitutions as jiwer does.
fn align(r: &[String], h: &[String]) -> WerStats {
    type Cell = (usize, usize, usize, usize);
    let mut prev: Vec<Cell> = (0..=h.len()).map(|j| (j, 0, 0, j)).collect();
    let mut cur: Vec<Cell> = vec![(0, 0, 0, 0); h.len() + 1];
    for (i, rw) in r.iter().enumerate() {
        cur[0] = (i + 1, 0, i + 1, 0);
        for (j, hw) in h.iter().enumerate() {
            let diag = prev[j];
            let sub = if rw == hw {
                diag
            } else {
                (diag.0 + 1, diag.1 + 1, diag.2, diag.3)
            };
            let del = {
                let up = prev[j + 1];
                (up.0 + 1, up.1, up.2 + 1, up.3)
            };
            let ins = {
                let left = cur[j];
                (left.0 + 1, left.1, left.2, left.3 + 1)
            };
            let mut best = sub;
            if del.0 < best.0 {
                best = del;
            }
            if ins.0 < best.0 {
                best = ins;
            }
            cur[j + 1] = best;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let (_, substitutions, deletions, insertions) = prev[h.len()];
    WerStats {
        substitutions,
        deletions,
        insertions,
        reference_words: r.len(),
        hypothesis_words: h.len(),
    }
}

/// One line of an STM (segment time mark) reference transcript:
/// `file channel speaker start end [<labels>] text`.
#[derive(Debug, Clone, PartialEq)]
pub struct StmLine {
    pub file: String,
    pub channel: String,
    pub speaker: String,
    pub start: f64,
    pub end: f64,
    pub text: String,
}

/// Parses STM text, skipping blank lines and `;;` comments; lines that do
/// not parse are reported with their number.
pub fn parse_stm(input: &str) -> Result<Vec<StmLine>, String> {
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(";;") {
            continue;
        }
        let mut fields = line.splitn(6, char::is_whitespace);
        let mut next = || fields.next().unwrap_or("").trim();
        let (file, channel, speaker) = (next().to_string(), next().to_string(), next().to_string());
        let start = next().parse::<f64>();
        let end = next().parse::<f64>();
        let (Ok(start), Ok(end)) = (start, end) else {
            return Err(format!("line {}: bad start or end time in `{line}`", i + 1));
        };
        let mut text = next().to_string();
        // Optional `<o,f1,male>` labels before the text.
        if text.starts_with('<') {
            if let Some((_, rest)) = text.split_once('>') {
                text = rest.trim().to_string();
            }
        }
        out.push(StmLine {
            file,
            channel,
            speaker,
            start,
            end,
            text,
        });
    }
    Ok(out)
}

/// The reference text of the STM file at `path`, in time order (the
/// recordings' references in tests and benchmarks).
pub fn stm_file_text(path: &std::path::Path) -> Result<String, String> {
    let input = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(stm_text(&parse_stm(&input)?))
}

/// The reference text of an STM file in time order.
pub fn stm_text(lines: &[StmLine]) -> String {
    let mut sorted: Vec<&StmLine> = lines.iter().collect();
    sorted.sort_by(|a, b| a.start.total_cmp(&b.start));
    sorted
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(
            normalize("And so, my fellow Americans: ask NOT what your country can do!"),
            "and so my fellow americans ask not what your country can do"
        );
        assert_eq!(
            normalize("I didn't know — you’re there?"),
            "i didnt know youre there"
        );
        assert_eq!(normalize("[Music] Hello (laughs) world"), "hello world");
        assert_eq!(
            normalize("It costs 10.5 dollars, 3-4 times"),
            "it costs 10 5 dollars 3 4 times"
        );
        assert_eq!(normalize("  Ünïcode  ÉTÉ  "), "ünïcode été");
        assert_eq!(normalize(""), "");
    }

    #[test]
    fn exact_match_is_zero() {
        let jfk = "And so my fellow Americans, ask not what your country can do for you, \
                   ask what you can do for your country.";
        assert_eq!(wer(jfk, &jfk.to_uppercase()), 0.0);
        assert_eq!(
            wer(jfk, " and so my fellow americans ask not what your country can do for you ask what you can do for your country "),
            0.0
        );
    }

    #[test]
    fn counts_each_kind_of_error() {
        let s = wer_stats("the cat sat on the mat", "the cat sat on mat");
        assert_eq!((s.substitutions, s.deletions, s.insertions), (0, 1, 0));
        assert!((s.wer() - 1.0 / 6.0).abs() < 1e-12);
        let s = wer_stats("the cat sat", "the big cat sat");
        assert_eq!((s.substitutions, s.deletions, s.insertions), (0, 0, 1));
        let s = wer_stats("the cat sat", "a cat sat");
        assert_eq!((s.substitutions, s.deletions, s.insertions), (1, 0, 0));
        let s = wer_stats("a b c d", "x y");
        assert_eq!(s.substitutions + s.deletions + s.insertions, 4);
        assert_eq!(wer("a b", "c d e f g"), 2.5);
        assert_eq!(wer("", ""), 0.0);
        assert_eq!(wer("", "words"), 1.0);
        assert_eq!(wer("some words", ""), 1.0);
    }

    #[test]
    fn stm_reading() {
        let stm = ";; comment\nsample 1 Diane 6.68 7.16 Hello?\n\
                   sample 1 Sheila 7.634 8.155 <o,f0,female> Hello?\n\
                   sample 1 Diane 8.436 8.876 Oh, hello.\n";
        let lines = parse_stm(stm).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].speaker, "Sheila");
        assert_eq!(lines[1].text, "Hello?");
        assert_eq!((lines[0].start, lines[0].end), (6.68, 7.16));
        assert_eq!(normalize(&stm_text(&lines)), "hello hello oh hello");
        assert!(parse_stm("a 1 b x y text").is_err());
    }
}
