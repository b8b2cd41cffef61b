//! The loaded model: weights, tokenizer and the special tokens and
//! suppression lists read from `config.json`, plus the small services the
//! rest of the engine asks of it (encoding a window, text <-> tokens,
//! language tokens). Loading is here; decoding is in `decoding.rs`, the
//! long-form loop in `transcribe.rs`.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use super::compute::{int8_encoder_available, ComputeType, Weights};
use super::decoder::TextDecoder;
use super::encoder::AudioEncoder;
use super::quantize;
use super::weights_file::WeightsFile;
use super::{Config, WhisperError};
use crate::mel::{self, MelFilters, N_FRAMES, SAMPLE_RATE};

/// Token ids the decoding loop needs.
#[derive(Debug, Clone)]
pub(super) struct Specials {
    pub(super) eot: u32,
    pub(super) sot: u32,
    pub(super) translate: u32,
    pub(super) transcribe: u32,
    pub(super) sot_prev: u32,
    pub(super) no_speech: u32,
    pub(super) no_timestamps: u32,
    pub(super) timestamp_begin: u32,
    /// Language tokens of multilingual models (empty for `.en`).
    pub(super) languages: Vec<u32>,
}

/// A loaded Whisper model, ready to transcribe. Holds its weights (hundreds
/// of MB for larger sizes) and nothing else: every transcription keeps its
/// own decoder state (key/value caches, see [`super::decoder::DecoderState`])
/// on its own stack, so one model behind an `Arc` serves any number of
/// threads at once through `&self`, with no lock. Not `Clone`: share it.
pub struct WhisperModel {
    pub(super) name: String,
    pub(super) config: Config,
    pub(super) compute_type: ComputeType,
    /// The encoder's linear layers are int8 ([`WhisperModel::load_with`]).
    pub(super) int8_encoder: bool,
    pub(super) encoder: AudioEncoder,
    pub(super) decoder: TextDecoder,
    pub(super) tokenizer: Tokenizer,
    pub(super) specials: Specials,
    /// Always suppressed while sampling.
    pub(super) suppress: Vec<u32>,
    /// Suppressed at the first sampled position (blank, EOT).
    pub(super) suppress_begin: Vec<u32>,
    /// Cross-attention heads that follow the audio in time (`(layer,
    /// head)`), read for word timestamps.
    pub(super) alignment_heads: Vec<(usize, usize)>,
    pub(super) filters: MelFilters,
    pub(super) device: Device,
}

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperModel")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("compute_type", &self.compute_type)
            .field("int8_encoder", &self.int8_encoder)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

fn read_file(dir: &Path, file: &str, name: &str) -> Result<PathBuf, WhisperError> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(WhisperError::MissingFile {
            path,
            name: name.to_string(),
        })
    }
}

impl WhisperModel {
    /// Loads a model directory (see the module docs) onto `device` in
    /// float32, the reference precision; [`WhisperModel::load_as`] chooses.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, WhisperError> {
        Self::load_as(dir, device, ComputeType::F32)
    }

    /// Loads a model directory onto `device` with `compute_type`'s weights
    /// (see `compute.rs`). `int8` quantizes the weights the first time and
    /// caches them in the directory (`quantize.rs`). The encoder stays
    /// float32.
    pub fn load_as(
        dir: &Path,
        device: &Device,
        compute_type: ComputeType,
    ) -> Result<Self, WhisperError> {
        Self::load_with(dir, device, compute_type, false)
    }

    /// [`WhisperModel::load_as`], and with `int8_encoder` under `int8`
    /// the encoder's linear layers are int8 too, quantized per output
    /// channel at load and multiplied by `gemm_i8.rs`, where this CPU can
    /// ([`int8_encoder_available`]; elsewhere the encoder stays float32).
    /// Faster, and a little further from float32 than the float encoder
    /// (docs/models.md, "The encoder in int8"). `models.int8_encoder`.
    pub fn load_with(
        dir: &Path,
        device: &Device,
        compute_type: ComputeType,
        int8_encoder: bool,
    ) -> Result<Self, WhisperError> {
        let int8_encoder = int8_encoder
            && compute_type == ComputeType::Int8
            && device.is_cpu()
            && int8_encoder_available();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let cfg_path = read_file(dir, "config.json", &name)?;
        let weights_path = read_file(dir, "model.safetensors", &name)?;
        let tok_path = read_file(dir, "tokenizer.json", &name)?;
        let bad = |path: &Path, detail: String| WhisperError::BadModelFile {
            path: path.to_path_buf(),
            detail,
        };

        let cfg_text =
            std::fs::read_to_string(&cfg_path).map_err(|e| bad(&cfg_path, e.to_string()))?;
        let config: Config =
            serde_json::from_str(&cfg_text).map_err(|e| bad(&cfg_path, e.to_string()))?;
        let extra: serde_json::Value =
            serde_json::from_str(&cfg_text).map_err(|e| bad(&cfg_path, e.to_string()))?;
        // Parsing tokenizer.json (the vocabulary, 50,000 merges, 1,600
        // special tokens) takes as long as reading the weights: it runs on
        // a thread of its own meanwhile.
        let (tokenizer, layers) = std::thread::scope(|scope| {
            let tokenizer = scope.spawn(|| {
                Tokenizer::from_file(&tok_path).map_err(|e| bad(&tok_path, e.to_string()))
            });
            let layers = Self::load_layers(
                dir,
                &weights_path,
                &config,
                device,
                compute_type,
                int8_encoder,
            );
            let tokenizer = tokenizer
                .join()
                .unwrap_or_else(|_| Err(bad(&tok_path, "the tokenizer's parser panicked".into())));
            (tokenizer, layers)
        });
        let (tokenizer, (encoder, decoder)) = (tokenizer?, layers?);

        let token = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| WhisperError::MissingToken(t.to_string()))
        };
        let no_timestamps = token("<|notimestamps|>")?;
        let sot = token("<|startoftranscript|>")?;
        let translate = token("<|translate|>")?;
        let multilingual = config.vocab_size >= 51865;
        let specials = Specials {
            eot: token("<|endoftext|>")?,
            sot,
            translate,
            transcribe: token("<|transcribe|>")?,
            sot_prev: token("<|startofprev|>")?,
            no_speech: token("<|nospeech|>").or_else(|_| token("<|nocaptions|>"))?,
            no_timestamps,
            timestamp_begin: no_timestamps + 1,
            languages: if multilingual {
                (sot + 1..translate).collect()
            } else {
                Vec::new()
            },
        };
        let ids = |key: &str| -> Vec<u32> {
            extra
                .get(key)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64())
                        .map(|x| x as u32)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut suppress = config.suppress_tokens.clone();
        // The special tokens OpenAI's "-1" adds, in case the config lacks them.
        suppress.extend([
            specials.transcribe,
            specials.translate,
            specials.sot,
            specials.sot_prev,
            specials.no_speech,
        ]);
        if let Some(lm) = tokenizer.token_to_id("<|startoflm|>") {
            suppress.push(lm);
        }
        suppress.sort_unstable();
        suppress.dedup();
        suppress.retain(|&t| (t as usize) < config.vocab_size);
        let mut suppress_begin = ids("begin_suppress_tokens");
        if suppress_begin.is_empty() {
            suppress_begin = tokenizer
                .encode(" ", false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default();
            suppress_begin.push(specials.eot);
        }
        let filters = MelFilters::slaney(config.num_mel_bins, mel::N_FFT, SAMPLE_RATE);
        let alignment_heads = super::align::alignment_heads(
            &extra,
            &name,
            config.decoder_layers,
            config.decoder_attention_heads,
        );
        Ok(Self {
            name,
            config,
            compute_type,
            int8_encoder,
            encoder,
            decoder,
            tokenizer,
            specials,
            suppress,
            suppress_begin,
            alignment_heads,
            filters,
            device: device.clone(),
        })
    }

    /// Encoder and decoder from `model.safetensors` (and, for `int8`, the
    /// quantized cache beside it), the encoder's linear layers quantized at
    /// load when `int8_encoder`.
    fn load_layers(
        dir: &Path,
        weights_path: &Path,
        config: &Config,
        device: &Device,
        compute_type: ComputeType,
        int8_encoder: bool,
    ) -> Result<(AudioEncoder, TextDecoder), WhisperError> {
        let file = WeightsFile::open(weights_path)?;
        let quantized = match compute_type {
            ComputeType::Int8 => Some(Arc::new(quantize::load_or_build(dir, &file, device)?)),
            ComputeType::F16 | ComputeType::F32 => None,
        };
        // The tensors kept in floating point (all of them, or for int8 those
        // not quantized), in the compute dtype; the quantized ones are not
        // even read.
        let dtype = compute_type.float_dtype();
        let tensors = file.tensors(
            |name| quantized.as_ref().is_none_or(|q| !q.contains_key(name)),
            dtype,
            device,
        )?;
        drop(file);
        let bad = |e: candle_core::Error| WhisperError::BadModelFile {
            path: weights_path.to_path_buf(),
            detail: e.to_string(),
        };
        let weights = Weights::new(VarBuilder::from_tensors(tensors, dtype, device), quantized);
        // The encoder multiplies 1,500 rows per window: asked for, its
        // weights are quantized per output channel here, as CTranslate2's
        // are (see gemm_i8.rs).
        let encoder_weights = if int8_encoder {
            weights.pp("model.encoder").with_int8_rows()
        } else {
            weights.pp("model.encoder")
        };
        let encoder = AudioEncoder::load(config, encoder_weights).map_err(bad)?;
        let decoder = TextDecoder::load(config, weights.pp("model.decoder")).map_err(bad)?;
        Ok((encoder, decoder))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How the weights are stored and multiplied.
    pub fn compute_type(&self) -> ComputeType {
        self.compute_type
    }

    /// Whether the encoder's linear layers are int8
    /// ([`WhisperModel::load_with`]).
    pub fn int8_encoder(&self) -> bool {
        self.int8_encoder
    }

    /// Whether the model knows languages other than English.
    pub fn is_multilingual(&self) -> bool {
        !self.specials.languages.is_empty()
    }

    pub(super) fn language_code(&self, token: u32) -> String {
        self.tokenizer
            .id_to_token(token)
            .map(|t| {
                t.trim_start_matches("<|")
                    .trim_end_matches("|>")
                    .to_string()
            })
            .unwrap_or_else(|| "en".into())
    }

    pub(super) fn language_token(&self, code: &str) -> Result<u32, WhisperError> {
        let token = self
            .tokenizer
            .token_to_id(&format!("<|{}|>", code.to_ascii_lowercase()))
            .filter(|t| self.specials.languages.contains(t));
        token.ok_or_else(|| WhisperError::UnknownLanguage(code.to_string()))
    }

    /// Encoder output `[1, 1500, d]` for a `[n_mels, N_FRAMES]` window.
    pub(super) fn encode(&self, window: Vec<f32>, n_mels: usize) -> Result<Tensor, WhisperError> {
        let started = std::time::Instant::now();
        let input = Tensor::from_vec(window, (1, n_mels, N_FRAMES), &self.device)?;
        let encoded = self.encode_input(&input)?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "window encoded");
        Ok(encoded)
    }

    /// Encoder output `[1, 1500, d]` for one 30 s log-mel window
    /// (`n_mels * 3000` values, row-major): what each window of a
    /// transcription costs before decoding (benchmarks time it alone).
    pub fn encode_window(&self, window: Vec<f32>) -> Result<Tensor, WhisperError> {
        self.encode(window, self.config.num_mel_bins)
    }

    /// Encodes `b` windows (each `[n_mels, N_FRAMES]`, row-major) into
    /// `[b, frames, d]`: as one batch on a GPU; one after the other on the
    /// CPU, where a batch is no faster (its matrix products are large
    /// already) and its attention scores (`heads x 1500 x 1500` per window
    /// and layer) would multiply the peak memory.
    pub(super) fn encode_batch(&self, windows: Vec<Vec<f32>>) -> Result<Tensor, WhisperError> {
        let n_mels = self.config.num_mel_bins;
        if self.device.is_cpu() {
            let encoded = windows
                .into_iter()
                .map(|w| self.encode(w, n_mels))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Tensor::cat(&encoded, 0)?);
        }
        let b = windows.len();
        let input = Tensor::from_vec(windows.concat(), (b, n_mels, N_FRAMES), &self.device)?;
        self.encode_input(&input)
    }

    fn encode_input(&self, input: &Tensor) -> Result<Tensor, WhisperError> {
        Ok(self.encoder.forward(input)?)
    }

    pub(super) fn encode_text(&self, text: &str) -> Result<Vec<u32>, WhisperError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| WhisperError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of the non-special tokens, trimmed.
    pub(super) fn decode_text(&self, tokens: &[u32]) -> Result<String, WhisperError> {
        let text: Vec<u32> = tokens
            .iter()
            .copied()
            .filter(|&t| t < self.specials.eot)
            .collect();
        let s = self
            .tokenizer
            .decode(&text, true)
            .map_err(|e| WhisperError::Tokenizer(e.to_string()))?;
        Ok(s.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Workers move loaded models between threads.
    #[test]
    fn model_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<WhisperModel>();
    }
}
