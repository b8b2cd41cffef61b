//! Aligning a window's text with its audio through the decoder's
//! cross-attention, the method of openai-whisper's `timing.py` (which
//! faster-whisper and CTranslate2 follow): the window's text tokens are fed
//! again in one forced pass, the scores of the model's alignment heads
//! (cross-attention heads that follow the audio in time) are softmaxed over
//! the frames that hold audio, normalised per frame over the tokens, median
//! filtered along time and averaged over the heads; dynamic time warping
//! through the negated matrix gives each token the encoder frame where it
//! starts.
//!
//! Word timestamps (`timing.rs`) group these times into words; the
//! long-form loops also use them to check a window's timestamp tokens
//! against where its text really ends (`timing.rs`, `time_window`).

use candle_core::{DType, Tensor};

use super::decoder::DecoderState;
use super::{WhisperError, WhisperModel};

/// Width of the median filter along time (both upstream defaults).
const MEDIAN_FILTER_WIDTH: usize = 7;
/// Encoder frames per second (100 mel frames, convolution stride 2).
const FRAMES_PER_SECOND: f64 = 50.0;

/// Alignment heads openai-whisper publishes per model, for a model whose
/// `config.json` does not list its own (`(decoder layer, head)`).
const KNOWN_HEADS: &[(&str, &[(usize, usize)])] = &[
    (
        "tiny.en",
        &[
            (1, 0),
            (2, 0),
            (2, 5),
            (3, 0),
            (3, 1),
            (3, 2),
            (3, 3),
            (3, 4),
        ],
    ),
    ("tiny", &[(2, 2), (3, 0), (3, 2), (3, 3), (3, 4), (3, 5)]),
    ("base.en", &[(3, 3), (4, 7), (5, 1), (5, 5), (5, 7)]),
    (
        "base",
        &[
            (3, 1),
            (4, 2),
            (4, 3),
            (4, 7),
            (5, 1),
            (5, 2),
            (5, 4),
            (5, 6),
        ],
    ),
    (
        "small.en",
        &[
            (6, 6),
            (7, 0),
            (7, 3),
            (7, 8),
            (8, 2),
            (8, 5),
            (8, 7),
            (9, 0),
            (9, 4),
            (9, 8),
            (9, 10),
            (10, 0),
            (10, 1),
            (10, 2),
            (10, 3),
            (10, 6),
            (10, 11),
            (11, 2),
            (11, 4),
        ],
    ),
    (
        "small",
        &[
            (5, 3),
            (5, 9),
            (8, 0),
            (8, 4),
            (8, 7),
            (8, 8),
            (9, 0),
            (9, 7),
            (9, 9),
            (10, 5),
        ],
    ),
    (
        "medium.en",
        &[
            (11, 4),
            (14, 1),
            (14, 12),
            (14, 14),
            (15, 4),
            (16, 0),
            (16, 4),
            (16, 9),
            (17, 12),
            (17, 14),
            (18, 7),
            (18, 10),
            (18, 15),
            (20, 0),
            (20, 3),
            (20, 9),
            (20, 14),
            (21, 12),
        ],
    ),
    (
        "medium",
        &[(13, 15), (15, 4), (15, 15), (16, 1), (20, 0), (23, 4)],
    ),
    (
        "large-v1",
        &[
            (9, 19),
            (11, 2),
            (11, 4),
            (11, 17),
            (22, 7),
            (22, 11),
            (22, 17),
            (23, 2),
            (23, 15),
        ],
    ),
    (
        "large-v2",
        &[
            (10, 12),
            (13, 17),
            (16, 11),
            (16, 12),
            (16, 13),
            (17, 15),
            (17, 16),
            (18, 4),
            (18, 11),
            (18, 19),
            (19, 11),
            (21, 2),
            (21, 3),
            (22, 3),
            (22, 9),
            (22, 12),
            (23, 5),
            (23, 7),
            (23, 13),
            (25, 5),
            (26, 1),
            (26, 12),
            (27, 15),
        ],
    ),
    (
        "large-v3",
        &[
            (7, 0),
            (10, 17),
            (12, 18),
            (13, 12),
            (16, 1),
            (17, 14),
            (19, 11),
            (21, 4),
            (24, 1),
            (25, 6),
        ],
    ),
    (
        "large-v3-turbo",
        &[(2, 4), (2, 11), (3, 3), (3, 6), (3, 11), (3, 14)],
    ),
];

/// The alignment heads of a model: `config.json`'s `alignment_heads` (as
/// CTranslate2 and transformers write it), else openai-whisper's list for
/// the model's name, else every head of the last half of the decoder
/// layers (openai-whisper's default). Heads outside the model are dropped.
pub(super) fn alignment_heads(
    config: &serde_json::Value,
    name: &str,
    layers: usize,
    heads: usize,
) -> Vec<(usize, usize)> {
    let fits = |list: &[(usize, usize)]| {
        !list.is_empty() && list.iter().all(|&(l, h)| l < layers && h < heads)
    };
    let listed: Vec<(usize, usize)> = config
        .get("alignment_heads")
        .and_then(|v| v.as_array())
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|p| {
                    let p = p.as_array()?;
                    Some((p.first()?.as_u64()? as usize, p.get(1)?.as_u64()? as usize))
                })
                .collect()
        })
        .unwrap_or_default();
    if fits(&listed) {
        return listed;
    }
    if let Some((_, known)) = KNOWN_HEADS.iter().find(|(n, _)| *n == name) {
        if fits(known) {
            return known.to_vec();
        }
    }
    (layers / 2..layers)
        .flat_map(|l| (0..heads).map(move |h| (l, h)))
        .collect()
}

/// A window's text aligned with its audio.
pub(super) struct Aligned {
    /// The decoder's hidden states of the forced pass, `[1, tokens, d]`
    /// (the SOT sequence, `<|notimestamps|>`, the text and EOT).
    pub(super) hidden: Tensor,
    /// Seconds from the window's start where each text token begins, then
    /// where the text ends (EOT begins): one more entry than text tokens.
    pub(super) jump_times: Vec<f64>,
}

impl WhisperModel {
    /// Aligns `text_tokens` (a window's text, all its segments) with the
    /// audio in `state` (the window's encoder output; `num_frames` mel
    /// frames of it hold audio). `state`'s tokens are reset before and after.
    /// `None` when there is nothing to align or it does not fit the
    /// decoder's context.
    pub(super) fn align_tokens(
        &self,
        state: &mut DecoderState,
        sot_sequence: &[u32],
        text_tokens: &[u32],
        num_frames: usize,
    ) -> Result<Option<Aligned>, WhisperError> {
        let n_frames = num_frames / 2;
        if text_tokens.is_empty() || n_frames == 0 {
            return Ok(None);
        }
        let eot = self.specials.eot;
        let mut tokens = sot_sequence.to_vec();
        tokens.push(self.specials.no_timestamps);
        tokens.extend_from_slice(text_tokens);
        tokens.push(eot);
        if tokens.len() > self.decoder.n_ctx() {
            return Ok(None);
        }
        state.reset_tokens();
        let forward =
            self.decoder
                .forward_with_cross_attention(&tokens, state, &self.alignment_heads);
        state.reset_tokens();
        let (hidden, scores) = forward?;

        // [tokens, frames] averaged over the heads.
        let sot_len = sot_sequence.len();
        let n_text = text_tokens.len();
        let t = tokens.len();
        let mut matrix = vec![0f32; t * n_frames];
        for head in &scores {
            let weights = candle_nn::ops::softmax_last_dim(
                &head
                    .narrow(1, 0, n_frames)?
                    .to_dtype(DType::F32)?
                    .contiguous()?,
            )?;
            let mut w = weights.flatten_all()?.to_vec1::<f32>()?;
            standardize_columns(&mut w, t, n_frames);
            median_filter_rows(&mut w, n_frames, MEDIAN_FILTER_WIDTH);
            for (m, x) in matrix.iter_mut().zip(&w) {
                *m += x;
            }
        }
        let n_heads = scores.len().max(1) as f32;
        // Rows from `<|notimestamps|>` (predicting the first text token) to
        // the last text token (predicting EOT).
        let rows = n_text + 1;
        let text_rows: Vec<f32> = matrix[sot_len * n_frames..(sot_len + rows) * n_frames]
            .iter()
            .map(|x| x / n_heads)
            .collect();
        let path = negative_dtw(&text_rows, rows, n_frames);
        // The frame where each row first appears on the path.
        let mut jump_times = Vec::with_capacity(rows);
        let mut last_row = None;
        for &(i, j) in &path {
            if last_row != Some(i) {
                jump_times.push(j as f64 / FRAMES_PER_SECOND);
                last_row = Some(i);
            }
        }
        if jump_times.len() != rows {
            return Ok(None);
        }
        Ok(Some(Aligned { hidden, jump_times }))
    }
}

/// Standardises each column (frame) of a row-major `[rows, cols]` matrix
/// over its rows: zero mean, unit population standard deviation.
fn standardize_columns(m: &mut [f32], rows: usize, cols: usize) {
    for c in 0..cols {
        let mean = (0..rows).map(|r| m[r * cols + c] as f64).sum::<f64>() / rows as f64;
        let var = (0..rows)
            .map(|r| (m[r * cols + c] as f64 - mean).powi(2))
            .sum::<f64>()
            / rows as f64;
        let std = var.sqrt();
        for r in 0..rows {
            let x = &mut m[r * cols + c];
            *x = if std > 0.0 {
                ((*x as f64 - mean) / std) as f32
            } else {
                0.0
            };
        }
    }
}

/// Median filter of odd `width` along each row, reflecting at the edges
/// (the edge value itself is not repeated). Rows no longer than half the
/// width are left as they are.
fn median_filter_rows(m: &mut [f32], cols: usize, width: usize) {
    let rank = width / 2;
    if cols <= rank || cols == 0 {
        return;
    }
    let mut window = vec![0f32; width];
    let mut row = vec![0f32; cols];
    for chunk in m.chunks_mut(cols) {
        row.copy_from_slice(chunk);
        for (j, out) in chunk.iter_mut().enumerate() {
            for (k, slot) in window.iter_mut().enumerate() {
                let mut read = (j as isize + k as isize - rank as isize).unsigned_abs();
                if read >= cols {
                    read = 2 * cols - read - 2;
                }
                *slot = row[read];
            }
            window.select_nth_unstable_by(rank, f32::total_cmp);
            *out = window[rank];
        }
    }
}

/// Dynamic time warping through the negated `[rows, cols]` matrix: the
/// monotonic path from (0, 0) to the last cell that maximises the summed
/// values. Ties break as in openai-whisper (diagonal, then down, then right).
fn negative_dtw(x: &[f32], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    let w = cols + 1;
    let mut cost = vec![f32::INFINITY; (rows + 1) * w];
    let mut trace = vec![u8::MAX; (rows + 1) * w];
    cost[0] = 0.0;
    for j in 1..=cols {
        for i in 1..=rows {
            let c0 = cost[(i - 1) * w + j - 1];
            let c1 = cost[(i - 1) * w + j];
            let c2 = cost[i * w + j - 1];
            let (c, t) = if c0 < c1 && c0 < c2 {
                (c0, 0)
            } else if c1 < c0 && c1 < c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            cost[i * w + j] = -x[(i - 1) * cols + j - 1] + c;
            trace[i * w + j] = t;
        }
    }
    for t in trace.iter_mut().take(w) {
        *t = 2;
    }
    for i in 0..=rows {
        trace[i * w] = 1;
    }
    let (mut i, mut j) = (rows, cols);
    let mut path = Vec::with_capacity(rows + cols);
    while i > 0 || j > 0 {
        path.push((i.saturating_sub(1), j.saturating_sub(1)));
        match trace[i * w + j] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtw_takes_the_path_openai_whisper_takes() {
        // Row i is strong on columns 2i and 2i + 1. The expected path is
        // what openai-whisper's `dtw_cpu` returns for this matrix (a step
        // down re-counts a strong cell, so rows start one column early).
        let (rows, cols) = (3, 6);
        let mut x = vec![0f32; rows * cols];
        for i in 0..rows {
            x[i * cols + 2 * i] = 1.0;
            x[i * cols + 2 * i + 1] = 1.0;
        }
        let path = negative_dtw(&x, rows, cols);
        let expected = [
            (0, 0),
            (0, 1),
            (1, 1),
            (1, 2),
            (1, 3),
            (2, 3),
            (2, 4),
            (2, 5),
        ];
        assert_eq!(path, expected);
    }

    #[test]
    fn median_filter_reflects_at_the_edges() {
        let mut row = vec![5.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 1.0];
        median_filter_rows(&mut row, 8, 3);
        // Position 0 sees [0, 5, 0] (reflected), position 3 sees [0, 9, 0].
        assert_eq!(row, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let mut row = vec![1.0, 2.0, 3.0, 4.0, 5.0];
        median_filter_rows(&mut row, 5, 3);
        assert_eq!(row, vec![2.0, 2.0, 3.0, 4.0, 4.0]);
    }

    #[test]
    fn standardized_columns_have_zero_mean_and_unit_spread() {
        let mut m = vec![1.0, 10.0, 3.0, 10.0, 5.0, 40.0];
        standardize_columns(&mut m, 3, 2);
        let col0 = [m[0], m[2], m[4]];
        assert!((col0.iter().sum::<f32>()).abs() < 1e-5);
        assert!((col0[2] - 1.2247449).abs() < 1e-5);
    }

    #[test]
    fn heads_come_from_the_config_then_the_name_then_the_last_half() {
        let cfg: serde_json::Value = serde_json::json!({ "alignment_heads": [[1, 0], [3, 4]] });
        assert_eq!(alignment_heads(&cfg, "x", 4, 6), vec![(1, 0), (3, 4)]);
        let none = serde_json::json!({});
        assert_eq!(alignment_heads(&none, "base", 6, 8).len(), 8);
        let out_of_range = serde_json::json!({ "alignment_heads": [[9, 0]] });
        let fallback = alignment_heads(&out_of_range, "custom", 4, 2);
        assert_eq!(fallback, vec![(2, 0), (2, 1), (3, 0), (3, 1)]);
    }
}
