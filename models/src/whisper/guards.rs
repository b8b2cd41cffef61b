//! Hallucination guards: the compression ratio that flags repetitive text,
//! repetition loops inside a window, and windows that copy their prompt.

use std::io::Write;

/// gzip-style compression ratio of the text (deflate via zlib, as OpenAI's
/// Whisper computes it): repetitive text compresses well.
pub(super) fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    if enc.write_all(text.as_bytes()).is_err() {
        return 0.0;
    }
    match enc.finish() {
        Ok(compressed) if !compressed.is_empty() => text.len() as f64 / compressed.len() as f64,
        _ => 0.0,
    }
}

/// How the repetition guard cut a window's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cut {
    /// A block of tokens said over and over, back to back: the model is
    /// stuck, and the window is decoded again at the next temperature.
    Loop,
    /// A sentence said again, other words between the copies. Whisper
    /// re-reading itself looks like this, but so does a speaker saying
    /// the same thing twice (JFK's sentence, heard twice within one
    /// window, lost its second copy: every temperature was cut there
    /// too). The first copy is kept, not decoded again, and the window's
    /// audio from where `copy` starts is heard as the next window, where a
    /// copy of the prompt is decoded again without it ([`copies_prompt`]).
    Repeat {
        /// The tokens cut off: the start of the copy (to find where it
        /// starts in the audio).
        copy: Vec<u32>,
    },
}

/// Detects repetition in the text tokens (timestamps ignored): either
/// they end with the same block of `p` tokens repeated enough times (16
/// for one token, 8 for two, 4 for longer blocks: [`Cut::Loop`]), or
/// their last [`PROMPT_COPY_TOKENS`] tokens already appeared earlier in
/// the window (a whole sentence said twice, typically with new
/// timestamps), or their last [`THRICE_TOKENS`] already appeared twice (a
/// short sentence said three times, other words between the copies: base,
/// int8, on the test call, wrote "I don't hear that in New Jersey now."
/// three times with "Oh," before the second): [`Cut::Repeat`]. Returns
/// where to cut `tokens` so one copy is kept, and which it was.
pub(super) fn repetition_loop(tokens: &[u32], ts_begin: u32) -> Option<(usize, Cut)> {
    let text: Vec<(usize, u32)> = tokens
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, t)| t < ts_begin)
        .collect();
    let n = text.len();
    for p in 1..=32usize {
        let repeats = match p {
            1 => 16,
            2 => 8,
            _ => 4,
        };
        if n < p * repeats {
            continue;
        }
        let tail = &text[n - p * repeats..];
        let block = &tail[..p];
        if tail
            .chunks(p)
            .all(|c| c.iter().zip(block).all(|(a, b)| a.1 == b.1))
        {
            // Keep everything up to the end of the first copy.
            return Some((tail[p - 1].0 + 1, Cut::Loop));
        }
    }
    for (k, copies) in [(PROMPT_COPY_TOKENS, 1), (THRICE_TOKENS, 2)] {
        if n <= k {
            continue;
        }
        let tail = &text[n - k..];
        let earlier = (0..n - k)
            .filter(|&start| {
                text[start..start + k]
                    .iter()
                    .zip(tail)
                    .all(|(a, b)| a.1 == b.1)
            })
            .count();
        if earlier >= copies {
            let at = tail[0].0;
            let copy = tokens[at..].to_vec();
            return Some((at, Cut::Repeat { copy }));
        }
    }
    None
}

/// Length of a run of text tokens that, said a third time in one window,
/// counts as a loop (about six words).
const THRICE_TOKENS: usize = 8;

/// Whether the text tokens of `tokens` repeat a run of at least
/// [`PROMPT_COPY_TOKENS`] consecutive text tokens of `prompt`.
pub(super) fn copies_prompt(tokens: &[u32], prompt: &[u32], eot: u32) -> bool {
    let a: Vec<u32> = tokens.iter().copied().filter(|&t| t < eot).collect();
    let b: Vec<u32> = prompt.iter().copied().filter(|&t| t < eot).collect();
    if a.len() < PROMPT_COPY_TOKENS || b.len() < PROMPT_COPY_TOKENS {
        return false;
    }
    // Longest common substring, one DP row at a time.
    let mut prev = vec![0usize; b.len() + 1];
    for &x in &a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, &y) in b.iter().enumerate() {
            if x == y {
                cur[j + 1] = prev[j] + 1;
                if cur[j + 1] >= PROMPT_COPY_TOKENS {
                    return true;
                }
            }
        }
        prev = cur;
    }
    false
}

/// Length of a verbatim copy of the prompt that counts as a hallucination
/// (about a dozen words: a repeated sentence, not a repeated phrase).
const PROMPT_COPY_TOKENS: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_detection_keeps_one_copy() {
        let ts = 50_000;
        let mut tokens = vec![1, 2, 3];
        for _ in 0..4 {
            tokens.extend([7, 8, 9]);
        }
        let (cut, kind) = repetition_loop(&tokens, ts).expect("loop");
        assert_eq!(&tokens[..cut], &[1, 2, 3, 7, 8, 9]);
        assert_eq!(kind, Cut::Loop);
        assert_eq!(repetition_loop(&[1, 2, 3, 1, 2, 3], ts), None);

        // A sentence of 12+ tokens said again later, with timestamps around.
        let sentence: Vec<u32> = (200..214).collect();
        let mut tokens = vec![ts, 1, 2];
        tokens.extend(&sentence);
        tokens.extend([ts + 50, ts + 50, 5, 6]);
        let second = tokens.len();
        tokens.extend(&sentence[..12]);
        let copy = tokens[second..].to_vec();
        assert_eq!(copy, &sentence[..12]);
        assert_eq!(
            repetition_loop(&tokens, ts),
            Some((second, Cut::Repeat { copy }))
        );

        // A sentence of 8 tokens said three times, other tokens between:
        // the third copy is the loop; twice is not.
        let short: Vec<u32> = (300..308).collect();
        let mut tokens = vec![1, 2];
        tokens.extend(&short);
        tokens.extend([ts + 20, 7]);
        tokens.extend(&short);
        assert_eq!(repetition_loop(&tokens, ts), None);
        tokens.push(ts + 40);
        let third = tokens.len();
        tokens.extend(&short);
        assert_eq!(
            repetition_loop(&tokens, ts),
            Some((third, Cut::Repeat { copy: short }))
        );
    }

    #[test]
    fn prompt_copies_are_detected() {
        let eot = 50_257;
        let prompt: Vec<u32> = (100..130).collect();
        let copy: Vec<u32> = [1, 2].into_iter().chain(110..124).collect();
        assert!(copies_prompt(&copy, &prompt, eot));
        let short: Vec<u32> = (110..118).collect();
        assert!(!copies_prompt(&short, &prompt, eot));
        assert!(!copies_prompt(&copy, &[], eot));
    }

    #[test]
    fn compression_ratio_flags_repetition() {
        let normal = "And so my fellow Americans, ask not what your country can do for you.";
        let looped = "thank you ".repeat(30);
        assert!(compression_ratio(normal) < 2.4);
        assert!(compression_ratio(&looped) > 2.4);
    }
}
