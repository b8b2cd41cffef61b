//! Job parameters (docs/API.md, "Job parameters"): what a job asks
//! for, and how a request's partial parameters are merged over a workflow's
//! and the defaults. Tier gates live with the tiers, in the service.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every model name the API accepts (installed or not).
pub const MODEL_NAMES: &[&str] = &[
    "tiny",
    "tiny.en",
    "base",
    "base.en",
    "small",
    "small.en",
    "medium",
    "large-v3",
    "large-v3-turbo",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    Transcription,
    Vad,
    BgmSeparation,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Transcription => "transcription",
            JobType::Vad => "vad",
            JobType::BgmSeparation => "bgm_separation",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Transcribe,
    Translate,
}

/// The `vad` block: the speech engine's own parameters, so what a job
/// asks for is exactly what Silero runs with.
pub use murmur_models::vad::VadParams;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeparateParams {
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiarizeParams {
    pub enabled: bool,
    pub min_speakers: Option<u32>,
    pub max_speakers: Option<u32>,
}

/// Fully resolved job parameters, as stored on a job or a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobParams {
    pub job_type: JobType,
    pub model: String,
    pub task: Task,
    pub language: Option<String>,
    pub vad: VadParams,
    pub separate_bgm: SeparateParams,
    pub diarize: DiarizeParams,
    pub initial_prompt: Option<String>,
    /// The first temperature tried; the fallback goes up from it (0, 0.2,
    /// ... 1.0) when a window's result fails the quality thresholds.
    pub temperature: f64,
    /// Beams searched at temperature 0 (1: greedy), as faster-whisper's
    /// `beam_size`. Jobs stored before the field existed read the default.
    #[serde(default = "default_beam_size")]
    pub beam_size: u32,
    /// Samples drawn at each fallback temperature above 0, the likeliest
    /// kept (faster-whisper's `best_of`).
    #[serde(default = "default_best_of")]
    pub best_of: u32,
    /// A beam search stops once `patience * beam_size` candidates have
    /// finished (faster-whisper's and openai-whisper's `patience`).
    #[serde(default = "default_patience")]
    pub patience: f64,
    /// How candidates are ranked: none divides their log-probability by
    /// their length; `alpha` divides it by `((5 + length) / 6)^alpha`
    /// (openai-whisper's `length_penalty`, 0 to 1).
    #[serde(default)]
    pub length_penalty: Option<f64>,
    /// Murmur's repetition guard, which faster-whisper does not have: a
    /// window whose text loops is stopped and decoded again at the next
    /// temperature, and one that copies its prompt is decoded again without
    /// it. `false` decodes by faster-whisper's rules alone (for comparing
    /// with it). Jobs stored before the field existed read it as on.
    #[serde(default = "default_repetition_guard")]
    pub repetition_guard: bool,
    /// Chunks decoded together (faster-whisper's `BatchedInferencePipeline`
    /// and its `batch_size`): above 1, the speech is cut into chunks of at
    /// most 30 s decoded independently, `batch_size` at a time, instead of
    /// Whisper's sequential long-form loop (docs/models.md, "Batched
    /// inference"). Each chunk in a batch holds its own audio state, so
    /// memory grows with it; tiers bound it (`max_batch_size`). Jobs stored
    /// before the field existed read 1.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Time every word (`words` in each result segment). Off by default:
    /// it costs a second decoder pass per 30 s window; a diarized job times
    /// words whatever this says (speakers are assigned per word). Jobs
    /// stored before the field existed read it as off.
    #[serde(default)]
    pub word_timestamps: bool,
}

impl JobParams {
    pub fn defaults(default_model: &str) -> JobParams {
        JobParams {
            job_type: JobType::Transcription,
            model: default_model.to_string(),
            task: Task::Transcribe,
            language: None,
            vad: VadParams::default(),
            separate_bgm: SeparateParams::default(),
            diarize: DiarizeParams::default(),
            initial_prompt: None,
            temperature: 0.0,
            beam_size: default_beam_size(),
            best_of: default_best_of(),
            patience: default_patience(),
            length_penalty: None,
            repetition_guard: true,
            batch_size: default_batch_size(),
            word_timestamps: false,
        }
    }

    /// Whether the job runs a Whisper model (only transcriptions do; vad
    /// and separation jobs carry `model` but never load it).
    pub fn runs_whisper(&self) -> bool {
        self.job_type == JobType::Transcription
    }

    /// Whether the job separates background music: a separation job, or a
    /// transcription that asks for it first.
    pub fn separates(&self) -> bool {
        self.job_type == JobType::BgmSeparation
            || (self.runs_whisper() && self.separate_bgm.enabled)
    }

    /// Whether the job labels speakers.
    pub fn diarizes(&self) -> bool {
        self.runs_whisper() && self.diarize.enabled
    }

    /// Whether the job translates to English (tiers limit this).
    pub fn translates(&self) -> bool {
        self.runs_whisper() && self.task == Task::Translate
    }

    /// `base` with every field of the JSON object `overrides` laid over it,
    /// nested objects merged key by key. Unknown fields and wrong types are
    /// errors, so a typo never silently runs the default.
    pub fn merged(base: &JobParams, overrides: &Value) -> Result<JobParams, ParamsError> {
        if overrides.is_null() {
            return Ok(base.clone());
        }
        if !overrides.is_object() {
            return Err(ParamsError::NotAnObject);
        }
        let params = Self::laid_over(base, overrides).map_err(|source| {
            // serde names the wrong type but not where: find the field.
            let field = overrides.as_object().into_iter().flatten().find(|(k, v)| {
                Self::laid_over(base, &serde_json::json!({ k.as_str(): v })).is_err()
            });
            ParamsError::Malformed {
                field: field.map(|(name, _)| name.clone()),
                source,
            }
        })?;
        params.validate()?;
        Ok(params)
    }

    fn laid_over(base: &JobParams, overrides: &Value) -> Result<JobParams, serde_json::Error> {
        let mut value = serde_json::to_value(base)?;
        merge_json(&mut value, overrides);
        serde_json::from_value(value)
    }

    /// Checks the values that serde's types do not.
    pub fn validate(&self) -> Result<(), ParamsError> {
        if !MODEL_NAMES.contains(&self.model.as_str()) {
            return Err(ParamsError::UnknownModel(self.model.clone()));
        }
        if self.task == Task::Translate && self.model.ends_with(".en") {
            return Err(ParamsError::EnglishOnlyTranslation(self.model.clone()));
        }
        if let Some(lang) = &self.language {
            let ok = (2..=3).contains(&lang.len()) && lang.chars().all(|c| c.is_ascii_lowercase());
            if !ok {
                return Err(ParamsError::Language(lang.clone()));
            }
        }
        self.vad.validate().map_err(ParamsError::Vad)?;
        if !(0.0..=1.0).contains(&self.temperature) {
            return Err(ParamsError::Temperature);
        }
        for (name, value) in [("beam_size", self.beam_size), ("best_of", self.best_of)] {
            if !(1..=MAX_BEAM_SIZE).contains(&value) {
                return Err(ParamsError::Beam { name, value });
            }
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(ParamsError::BatchSize(self.batch_size));
        }
        if !(self.patience > 0.0 && self.patience <= MAX_PATIENCE) {
            return Err(ParamsError::Patience(self.patience));
        }
        if let Some(alpha) = self.length_penalty {
            if !(0.0..=1.0).contains(&alpha) {
                return Err(ParamsError::LengthPenalty(alpha));
            }
        }
        if let (Some(lo), Some(hi)) = (self.diarize.min_speakers, self.diarize.max_speakers) {
            if lo > hi {
                return Err(ParamsError::SpeakerBounds);
            }
        }
        Ok(())
    }
}

/// Why job parameters are refused. Each message names the field and what
/// it accepts; the HTTP API shows it as it is (after "params: "), so the
/// wording is part of the contract.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("params must be a JSON object")]
    NotAnObject,
    /// A field of the wrong type or an unknown one; `field` names it when
    /// it could be found.
    #[error("{}{source}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Malformed {
        field: Option<String>,
        source: serde_json::Error,
    },
    #[error("unknown model {0:?}; choose one of {names}", names = MODEL_NAMES.join(", "))]
    UnknownModel(String),
    #[error("model {0} is English-only and cannot translate; use a multilingual model")]
    EnglishOnlyTranslation(String),
    #[error("language {0:?} is not an ISO 639-1 code such as \"en\"")]
    Language(String),
    /// The VAD settings' own check (`VadParams::validate`).
    #[error("{0}")]
    Vad(String),
    #[error("temperature must be between 0 and 1")]
    Temperature,
    /// `beam_size` or `best_of` out of range.
    #[error("{name} must be between 1 and {MAX_BEAM_SIZE} (1: greedy), not {value}")]
    Beam { name: &'static str, value: u32 },
    #[error(
        "batch_size must be between 1 and {MAX_BATCH_SIZE} (1: Whisper's sequential \
         long-form loop), not {0}"
    )]
    BatchSize(u32),
    #[error(
        "patience must be above 0 and at most {MAX_PATIENCE} (1: stop at beam_size \
         finished candidates), not {0}"
    )]
    Patience(f64),
    #[error(
        "length_penalty must be between 0 and 1 (or null: divide by the length), \
         not {0}"
    )]
    LengthPenalty(f64),
    #[error("diarize.min_speakers is larger than diarize.max_speakers")]
    SpeakerBounds,
}

/// Widest beam search (and most samples per temperature) a job may ask
/// for; tiers may allow less (`max_beam_size`).
pub const MAX_BEAM_SIZE: u32 = 10;

/// Most chunks a job may ask to decode together; tiers may allow fewer
/// (`max_batch_size`).
pub const MAX_BATCH_SIZE: u32 = 16;

/// Largest `patience`: the search already stops at the window's token
/// limit, so more only costs time.
pub const MAX_PATIENCE: f64 = 10.0;

/// Greedy, although faster-whisper and Whisper-WebUI search 5 beams: on
/// our recordings beam 5 was never more accurate than greedy and cost 1.3 to
/// 1.7 times the time (docs/models.md, "Beam search"). A job asks for
/// `beam_size: 5` to search as they do.
fn default_beam_size() -> u32 {
    1
}

/// One sample per fallback temperature, as before `best_of` existed.
fn default_best_of() -> u32 {
    1
}

/// Whisper's sequential long-form loop, which conditions each window on
/// the text before it.
fn default_batch_size() -> u32 {
    1
}

fn default_repetition_guard() -> bool {
    true
}

fn default_patience() -> f64 {
    1.0
}

fn merge_json(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge_json(slot, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_nested_overrides_and_keeps_defaults() {
        let base = JobParams::defaults("base");
        let p = JobParams::merged(
            &base,
            &json!({"vad": {"threshold": 0.3}, "model": "tiny.en"}),
        )
        .unwrap();
        assert_eq!(p.vad.threshold, 0.3);
        assert_eq!(p.vad.min_silence_ms, 2000);
        assert_eq!(p.model, "tiny.en");
        assert!(!p.word_timestamps);
        let p = JobParams::merged(&base, &json!({"word_timestamps": true})).unwrap();
        assert!(p.word_timestamps);
    }

    /// Params stored before `word_timestamps` existed still load.
    #[test]
    fn params_without_word_timestamps_still_load() {
        let mut stored = serde_json::to_value(JobParams::defaults("base")).unwrap();
        stored.as_object_mut().unwrap().remove("word_timestamps");
        let p: JobParams = serde_json::from_value(stored).unwrap();
        assert!(!p.word_timestamps);
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        let base = JobParams::defaults("base");
        assert!(JobParams::merged(&base, &json!({"modle": "tiny"})).is_err());
        assert!(JobParams::merged(&base, &json!({"model": "huge"})).is_err());
        assert!(JobParams::merged(&base, &json!({"task": "summarise"})).is_err());
        assert!(
            JobParams::merged(&base, &json!({"model": "tiny.en", "task": "translate"})).is_err()
        );
        assert!(JobParams::merged(&base, &json!({"language": "English"})).is_err());
        assert!(JobParams::merged(&base, &json!([1])).is_err());
    }

    #[test]
    fn decoding_defaults_to_greedy_and_bounds_the_search() {
        let base = JobParams::defaults("base");
        assert_eq!((base.beam_size, base.best_of, base.patience), (1, 1, 1.0));
        assert_eq!(base.length_penalty, None);
        let ok = |v: Value| JobParams::merged(&base, &v);
        let greedy = ok(json!({"beam_size": 1, "length_penalty": 0.6})).unwrap();
        assert_eq!((greedy.beam_size, greedy.length_penalty), (1, Some(0.6)));
        for bad in [
            json!({"beam_size": 0}),
            json!({"beam_size": 11}),
            json!({"best_of": 0}),
            json!({"patience": 0.0}),
            json!({"patience": -1.0}),
            json!({"length_penalty": 1.5}),
            json!({"batch_size": 0}),
            json!({"batch_size": 17}),
        ] {
            let err = ok(bad.clone()).expect_err("refused");
            let field = bad.as_object().unwrap().keys().next().unwrap().clone();
            assert!(err.to_string().contains(&field), "{bad}: {err}");
        }
        assert!(ok(json!({"beam_size": -1})).is_err());
        // Params stored before the fields existed read the defaults.
        let mut stored = serde_json::to_value(JobParams::defaults("base")).unwrap();
        for key in [
            "beam_size",
            "best_of",
            "patience",
            "length_penalty",
            "repetition_guard",
            "batch_size",
        ] {
            stored.as_object_mut().unwrap().remove(key);
        }
        let p: JobParams = serde_json::from_value(stored).unwrap();
        assert_eq!((p.beam_size, p.best_of, p.patience), (1, 1, 1.0));
        assert!(p.repetition_guard);
        assert_eq!(p.batch_size, 1);
        assert_eq!(ok(json!({"batch_size": 8})).unwrap().batch_size, 8);
    }

    #[test]
    fn the_repetition_guard_is_on_unless_turned_off() {
        let base = JobParams::defaults("base");
        assert!(base.repetition_guard);
        let off = JobParams::merged(&base, &json!({"repetition_guard": false})).unwrap();
        assert!(!off.repetition_guard);
        let err = JobParams::merged(&base, &json!({"repetition_guard": "no"})).unwrap_err();
        assert!(err.to_string().contains("repetition_guard"), "{err}");
    }

    /// The HTTP API shows these messages as they are: typed errors kept
    /// the wording the strings had.
    #[test]
    fn refusals_keep_their_wording() {
        let base = JobParams::defaults("base");
        let refused = |v: Value| JobParams::merged(&base, &v).unwrap_err().to_string();
        assert_eq!(refused(json!([1])), "params must be a JSON object");
        assert_eq!(
            refused(json!({"model": "huge"})),
            format!(
                "unknown model \"huge\"; choose one of {}",
                MODEL_NAMES.join(", ")
            )
        );
        assert_eq!(
            refused(json!({"model": "tiny.en", "task": "translate"})),
            "model tiny.en is English-only and cannot translate; use a multilingual model"
        );
        assert_eq!(
            refused(json!({"language": "English"})),
            "language \"English\" is not an ISO 639-1 code such as \"en\""
        );
        assert_eq!(
            refused(json!({"temperature": 2.0})),
            "temperature must be between 0 and 1"
        );
        assert_eq!(
            refused(json!({"best_of": 11})),
            "best_of must be between 1 and 10 (1: greedy), not 11"
        );
        assert_eq!(
            refused(json!({"patience": 0.0})),
            "patience must be above 0 and at most 10 (1: stop at beam_size finished \
             candidates), not 0"
        );
        assert_eq!(
            refused(json!({"length_penalty": 1.5})),
            "length_penalty must be between 0 and 1 (or null: divide by the length), not 1.5"
        );
        assert_eq!(
            refused(json!({"diarize": {"min_speakers": 3, "max_speakers": 2}})),
            "diarize.min_speakers is larger than diarize.max_speakers"
        );
        let malformed = refused(json!({"beam_size": "five"}));
        assert!(
            malformed.starts_with("beam_size: invalid type"),
            "{malformed}"
        );
    }

    #[test]
    fn says_which_stages_a_job_runs() {
        let base = JobParams::defaults("base");
        let over = |v: Value| JobParams::merged(&base, &v).unwrap();
        let plain = over(json!({}));
        assert!(plain.runs_whisper() && !plain.separates() && !plain.diarizes());
        assert!(!plain.translates());
        let all = over(json!({"separate_bgm": {"enabled": true},
            "diarize": {"enabled": true}, "task": "translate"}));
        assert!(all.separates() && all.diarizes() && all.translates());
        // A separation job separates and nothing else, whatever it carries.
        let sep = over(json!({"job_type": "bgm_separation",
            "diarize": {"enabled": true}, "task": "translate"}));
        assert!(sep.separates() && !sep.runs_whisper());
        assert!(!sep.diarizes() && !sep.translates());
        let vad = over(json!({"job_type": "vad", "separate_bgm": {"enabled": true}}));
        assert!(!vad.separates() && !vad.runs_whisper());
    }
}
