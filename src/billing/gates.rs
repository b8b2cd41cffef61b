//! Which tier gates a job's parameters meet. Checked when a job or a
//! workflow is submitted, so a workflow saved on a higher tier meets the
//! tenant's tier of today when it runs.

use murmur_actors::params::JobParams;

use super::{Tier, Translation};

/// Why a tier refuses a job: a model family it does not include, or a
/// capability it lacks.
#[derive(Debug, Clone, PartialEq)]
pub enum TierGate {
    Model(String),
    Feature(Capability),
}

/// What a tier may do beyond running models; stated in every token's
/// authority block as `capability("<fact name>")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Diarization,
    BgmSeparation,
    /// The `translate` task, within the tier's limits when they are
    /// `limited`.
    Translation,
}

impl Capability {
    pub const ALL: [Capability; 3] = [
        Capability::Diarization,
        Capability::BgmSeparation,
        Capability::Translation,
    ];

    /// The name in `capability(...)` facts.
    pub fn fact(self) -> &'static str {
        match self {
            Capability::Diarization => "diarization",
            Capability::BgmSeparation => "bgm_separation",
            Capability::Translation => "translation",
        }
    }

    /// How answers name it.
    pub fn label(self) -> &'static str {
        match self {
            Capability::Diarization => "speaker diarization",
            Capability::BgmSeparation => "BGM separation",
            Capability::Translation => "translation",
        }
    }

    pub fn in_tier(self, tier: &Tier) -> bool {
        match self {
            Capability::Diarization => tier.diarization,
            Capability::BgmSeparation => tier.bgm_separation,
            Capability::Translation => tier.translation != Translation::None,
        }
    }
}

/// The capabilities a tier's tokens state.
pub fn capabilities(tier: &Tier) -> Vec<Capability> {
    Capability::ALL
        .into_iter()
        .filter(|c| c.in_tier(tier))
        .collect()
}

/// What running `params` needs from a tier, in the order refusals are
/// reported: the model family, then each capability.
pub fn needs(params: &JobParams) -> Vec<TierGate> {
    let mut out = Vec::new();
    // Only transcription runs a Whisper model; vad and separation jobs
    // carry the field but never load it.
    if params.runs_whisper() {
        out.push(TierGate::Model(params.model.clone()));
    }
    if params.separates() {
        out.push(TierGate::Feature(Capability::BgmSeparation));
    }
    if params.diarizes() {
        out.push(TierGate::Feature(Capability::Diarization));
    }
    if params.translates() {
        out.push(TierGate::Feature(Capability::Translation));
    }
    out
}

/// Whether `tier` meets one need.
pub fn allows(tier: &Tier, gate: &TierGate) -> bool {
    match gate {
        TierGate::Model(model) => tier.allows_model(model),
        TierGate::Feature(c) => c.in_tier(tier),
    }
}

/// The first tier gate `params` fail, if any: the rule the token
/// authorizer enforces, stated without tokens.
pub fn check(params: &JobParams, tier: &Tier) -> Result<(), TierGate> {
    match needs(params).into_iter().find(|g| !allows(tier, g)) {
        Some(gate) => Err(gate),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::TierTable;
    use serde_json::json;

    #[test]
    fn tier_gates() {
        let tiers = TierTable::load("").unwrap();
        let basic = tiers.get("basic").unwrap();
        let premium = tiers.get("premium").unwrap();
        let base = JobParams::defaults("base");
        let diarize = JobParams::merged(&base, &json!({"diarize": {"enabled": true}})).unwrap();
        assert_eq!(
            check(&diarize, basic),
            Err(TierGate::Feature(Capability::Diarization))
        );
        assert_eq!(check(&diarize, premium), Ok(()));
        let small = JobParams::merged(&base, &json!({"model": "small"})).unwrap();
        assert_eq!(check(&small, basic), Err(TierGate::Model("small".into())));
        let vad = JobParams::merged(&base, &json!({"job_type": "vad", "model": "small"})).unwrap();
        assert_eq!(check(&vad, basic), Ok(()));
        let bgm = JobParams::merged(&base, &json!({"job_type": "bgm_separation"})).unwrap();
        assert_eq!(
            check(&bgm, basic),
            Err(TierGate::Feature(Capability::BgmSeparation))
        );
    }
}
