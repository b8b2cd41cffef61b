//! The tier table from `config/tiers.toml`: the only place tier limits live.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The tier table embedded at build time; a deployment may point
/// `billing.tiers_file` at its own copy.
const EMBEDDED: &str = include_str!("../../config/tiers.toml");

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("cannot read tier table {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tier table is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("tier table is not valid: {0}")]
    Invalid(String),
}

/// How much translation a tier allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Translation {
    None,
    Limited,
    Full,
}

/// One tier's limits, exactly as configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    #[serde(skip_deserializing)]
    pub name: String,
    /// Orders tiers (higher pays more).
    pub rank: u32,
    /// The tier's share of the inference pool when tiers compete for it:
    /// waiting work is served in proportion to these weights, counted in
    /// audio seconds, so a steady stream of paid work never starves a
    /// lower tier. `None`: 2^rank (1, 2, 4 for ranks 0, 1, 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_weight: Option<u32>,
    pub max_file_bytes: u64,
    /// Longest audio accepted, in decoded seconds: checked at upload by
    /// decoding the whole file and again when a job decodes it. A tier
    /// table written before the field existed gets 3 hours, so it keeps
    /// loading after an upgrade.
    #[serde(default = "default_max_audio_seconds")]
    pub max_audio_seconds: u64,
    pub concurrent_jobs: u32,
    /// Model families ("tiny" covers "tiny.en"); "*" allows every model.
    pub models: Vec<String>,
    pub diarization: bool,
    pub bgm_separation: bool,
    pub translation: Translation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translation_max_file_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translation_jobs_per_month: Option<u64>,
    pub storage_bytes: u64,
    /// `None` means unlimited.
    #[serde(default)]
    pub max_workflows: Option<u64>,
    /// Finished jobs (with results, events and stems) and uploads older
    /// than this many days are deleted; `None` keeps them until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// Jobs queued or running at once (beyond: 429 `queue_full`); `None`
    /// means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_jobs: Option<u64>,
    /// Widest beam search, and most samples per fallback temperature, a
    /// job may ask for (`beam_size`, `best_of`; each costs about that many
    /// times the decoding work). `None`: the most any job may ask for
    /// (`params::MAX_BEAM_SIZE`, 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_beam_size: Option<u32>,
    /// Most chunks a job may decode together (`batch_size`; each holds its
    /// own audio state, so memory grows with it). `None`: the most any job
    /// may ask for (`params::MAX_BATCH_SIZE`, 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<u32>,
}

impl Tier {
    /// [`Tier::max_beam_size`], or the most any job may ask for.
    pub fn beam_limit(&self) -> u32 {
        self.max_beam_size
            .unwrap_or(murmur_actors::params::MAX_BEAM_SIZE)
            .min(murmur_actors::params::MAX_BEAM_SIZE)
    }

    /// [`Tier::max_batch_size`], or the most any job may ask for.
    pub fn batch_limit(&self) -> u32 {
        self.max_batch_size
            .unwrap_or(murmur_actors::params::MAX_BATCH_SIZE)
            .clamp(1, murmur_actors::params::MAX_BATCH_SIZE)
    }

    /// [`Tier::queue_weight`], or its default from the rank (at least 1).
    pub fn queue_weight(&self) -> u32 {
        self.queue_weight.unwrap_or(1 << self.rank.min(16)).max(1)
    }
}

fn default_max_audio_seconds() -> u64 {
    3 * 3600
}

impl Tier {
    /// Whether this tier may run `model` ("small.en" belongs to "small").
    pub fn allows_model(&self, model: &str) -> bool {
        let family = model_family(model);
        self.models.iter().any(|m| m == "*" || m == family)
    }
}

/// The family a model name belongs to: `tiny.en` -> `tiny`,
/// `large-v3-turbo` -> `large-v3-turbo`.
pub fn model_family(model: &str) -> &str {
    model.strip_suffix(".en").unwrap_or(model)
}

#[derive(Debug, Deserialize)]
struct RawTable {
    default_tier: String,
    tiers: BTreeMap<String, Tier>,
    #[serde(default)]
    entitlements: BTreeMap<String, String>,
}

/// All tiers, by name. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct TierTable {
    tiers: BTreeMap<String, Tier>,
    default_tier: String,
    entitlements: BTreeMap<String, String>,
}

impl TierTable {
    /// Reads `file`, or the embedded table when `file` is empty.
    pub fn load(file: &str) -> Result<TierTable, TierError> {
        if file.is_empty() {
            return Self::parse(EMBEDDED);
        }
        let text = std::fs::read_to_string(Path::new(file)).map_err(|source| TierError::Read {
            path: file.to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<TierTable, TierError> {
        let raw: RawTable = toml::from_str(text)?;
        let mut tiers = raw.tiers;
        for (name, tier) in tiers.iter_mut() {
            tier.name = name.clone();
            if tier.translation == Translation::Limited
                && (tier.translation_max_file_seconds.is_none()
                    || tier.translation_jobs_per_month.is_none())
            {
                return Err(TierError::Invalid(format!(
                    "tier {name} has limited translation but no translation_max_file_seconds \
                     or translation_jobs_per_month"
                )));
            }
        }
        if !tiers.contains_key(&raw.default_tier) {
            return Err(TierError::Invalid(format!(
                "default_tier {} is not a tier",
                raw.default_tier
            )));
        }
        if let Some((ent, tier)) = raw
            .entitlements
            .iter()
            .find(|(_, t)| !tiers.contains_key(*t))
        {
            return Err(TierError::Invalid(format!(
                "entitlement {ent} maps to unknown tier {tier}"
            )));
        }
        Ok(TierTable {
            tiers,
            default_tier: raw.default_tier,
            entitlements: raw.entitlements,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Tier> {
        self.tiers.get(name)
    }

    /// The tier for `name`, falling back to the default tier for a name the
    /// table no longer has (a tier removed from config must not lock a
    /// tenant out).
    pub fn get_or_default(&self, name: &str) -> &Tier {
        self.tiers
            .get(name)
            .unwrap_or_else(|| &self.tiers[&self.default_tier])
    }

    pub fn default_tier(&self) -> &str {
        &self.default_tier
    }

    pub fn tier_for_entitlement(&self, entitlement: &str) -> Option<&Tier> {
        self.entitlements
            .get(entitlement)
            .and_then(|t| self.tiers.get(t))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tiers.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_table_matches_the_product_table() {
        let t = TierTable::load("").unwrap();
        let basic = t.get("basic").unwrap();
        assert_eq!(basic.max_file_bytes, 100 * 1024 * 1024);
        assert_eq!(basic.max_audio_seconds, 3 * 3600);
        assert_eq!(basic.concurrent_jobs, 2);
        assert!(basic.allows_model("tiny.en") && basic.allows_model("base"));
        assert!(!basic.allows_model("small"));
        assert!(!basic.diarization && !basic.bgm_separation);
        assert_eq!(basic.translation, Translation::Limited);
        assert_eq!(basic.max_workflows, Some(5));
        let premium = t.get("premium").unwrap();
        assert!(premium.allows_model("medium") && !premium.allows_model("large-v3"));
        assert_eq!(premium.max_audio_seconds, 6 * 3600);
        // A table from before max_audio_seconds existed still loads.
        let old = toml::from_str::<Tier>(
            r#"rank = 0
max_file_bytes = 1
concurrent_jobs = 1
models = ["tiny"]
diarization = false
bgm_separation = false
translation = "none"
storage_bytes = 1"#,
        );
        assert_eq!(old.map(|t| t.max_audio_seconds).ok(), Some(3 * 3600));
        let ent = t.get("enterprise").unwrap();
        assert!(ent.allows_model("large-v3-turbo"));
        assert_eq!(ent.max_workflows, None);
        assert_eq!(ent.max_audio_seconds, 12 * 3600);
        assert_eq!(t.default_tier(), "basic");
        assert_eq!(t.tier_for_entitlement("premium").unwrap().name, "premium");
        assert_eq!(t.get_or_default("gone").name, "basic");
    }

    #[test]
    fn rejects_a_table_with_an_unknown_default() {
        let err = TierTable::parse("default_tier = \"gold\"\n[tiers]\n").unwrap_err();
        assert!(err.to_string().contains("gold"));
    }
}
