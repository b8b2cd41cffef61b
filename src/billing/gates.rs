//! Which tier gates a job's parameters meet. Checked when a job or a
//! workflow is submitted, so a workflow saved on a higher tier meets the
//! tenant's tier of today when it runs.

use murmur_actors::params::{JobParams, JobType, Task};

use super::{Tier, Translation};

/// Why a tier refuses a job.
#[derive(Debug, Clone, PartialEq)]
pub enum TierGate {
    Model(String),
    Feature(&'static str),
}

/// The first tier gate `params` fail, if any.
pub fn check(params: &JobParams, tier: &Tier) -> Result<(), TierGate> {
    // Only transcription runs a Whisper model; vad and separation jobs
    // carry the field but never load it.
    if params.job_type == JobType::Transcription && !tier.allows_model(&params.model) {
        return Err(TierGate::Model(params.model.clone()));
    }
    let separates = params.job_type == JobType::BgmSeparation
        || (params.job_type == JobType::Transcription && params.separate_bgm.enabled);
    if separates && !tier.bgm_separation {
        return Err(TierGate::Feature("BGM separation"));
    }
    if params.job_type == JobType::Transcription && params.diarize.enabled && !tier.diarization {
        return Err(TierGate::Feature("speaker diarization"));
    }
    if params.job_type == JobType::Transcription
        && params.task == Task::Translate
        && tier.translation == Translation::None
    {
        return Err(TierGate::Feature("translation"));
    }
    Ok(())
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
            Err(TierGate::Feature("speaker diarization"))
        );
        assert_eq!(check(&diarize, premium), Ok(()));
        let small = JobParams::merged(&base, &json!({"model": "small"})).unwrap();
        assert_eq!(check(&small, basic), Err(TierGate::Model("small".into())));
        let vad = JobParams::merged(&base, &json!({"job_type": "vad", "model": "small"})).unwrap();
        assert_eq!(check(&vad, basic), Ok(()));
        let bgm = JobParams::merged(&base, &json!({"job_type": "bgm_separation"})).unwrap();
        assert_eq!(check(&bgm, basic), Err(TierGate::Feature("BGM separation")));
    }
}
