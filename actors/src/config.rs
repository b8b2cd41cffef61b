//! The supervision settings of the actor tree (`[jobs]` in the service's
//! config): retries, backoff and the inference deadline. Plain data, read
//! by every actor through [`Ctx`](crate::ctx::Ctx).

use std::time::Duration;

use serde::Deserialize;

/// Supervision settings (`[jobs]` in the service's config).
#[derive(Debug, Clone, Deserialize)]
pub struct SystemConfig {
    /// Runs of a job before a transient failure becomes final.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to `backoff_max`.
    #[serde(with = "millis")]
    pub backoff_base: Duration,
    /// Longest retry delay.
    #[serde(with = "millis")]
    pub backoff_max: Duration,
    /// A worker is stuck when one job runs longer than
    /// `deadline_base + deadline_per_audio_second * audio seconds`.
    #[serde(with = "millis")]
    pub deadline_base: Duration,
    /// Deadline added per second of the job's audio.
    pub deadline_per_audio_second: f64,
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            deadline_base: Duration::from_secs(120),
            deadline_per_audio_second: 20.0,
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
