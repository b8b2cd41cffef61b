//! The engine the service runs: `murmur-engine`'s [`ModelEngine`], with
//! what only the HTTP service knows added to its results (a separation's
//! stems get their download links). The engine crate itself holds no URL,
//! so a worker on another machine produces the same plain result.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use murmur_actors::params::JobType;
use murmur_actors::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use murmur_engine::{ModelEngine, ModelEngineConfig};

use crate::config::Settings;

/// The engines of the inference pool: `models.workers` workers sharing one
/// engine (and its loaded models) on the configured device. None at all
/// only for a control node that worker nodes may join (`cluster.listen`)
/// with `models.workers = 0`.
pub fn engines(settings: &Settings) -> anyhow::Result<Vec<Arc<dyn Engine>>> {
    if settings.models.workers == 0 && !settings.cluster.listen.trim().is_empty() {
        return Ok(Vec::new());
    }
    let device = murmur_models::device::device_from_str(&settings.models.device)
        .with_context(|| format!("models.device = {:?}", settings.models.device))?;
    let compute_type = settings
        .compute_type(&device)
        .with_context(|| format!("models.compute_type = {:?}", settings.models.compute_type))?;
    let engine: Arc<dyn Engine> = Arc::new(WithLinks(ModelEngine::new(
        ModelEngineConfig {
            models_dir: settings.models_dir(),
            cache_dir: settings.cache_dir(),
            max_loaded_models: settings.models.max_loaded_models,
            fetch_missing: settings.models.fetch_missing,
            compute_type,
            int8_encoder: settings.models.int8_encoder,
        },
        device,
    )));
    Ok(vec![engine; settings.models.workers.max(1)])
}

/// An engine whose results carry the service's download links.
pub struct WithLinks<E>(pub E);

impl<E: Engine> Engine for WithLinks<E> {
    fn run(
        &self,
        request: &WorkRequest,
        sink: &mut dyn WorkSink,
        cancel: &AtomicBool,
    ) -> Result<WorkOutput, WorkError> {
        let mut output = self.0.run(request, sink, cancel)?;
        if request.params.job_type == JobType::BgmSeparation {
            link_stems(&mut output.result, &request.job_id);
        }
        Ok(output)
    }

    fn device(&self) -> String {
        self.0.device()
    }

    fn compute_type(&self) -> Option<String> {
        self.0.compute_type()
    }

    fn loaded_models(&self) -> Vec<String> {
        self.0.loaded_models()
    }
}

/// Gives each stem of a separation result its `GET /v1/jobs/{id}/stems/{name}`.
fn link_stems(result: &mut serde_json::Value, job_id: &str) {
    let Some(stems) = result["stems"].as_array_mut() else {
        return;
    };
    for stem in stems {
        if let Some(name) = stem["name"].as_str() {
            stem["url"] = format!("/v1/jobs/{job_id}/stems/{name}").into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stem_gets_its_download_link() {
        let mut result = serde_json::json!({
            "duration_s": 1.0,
            "stems": [{"name": "vocals"}, {"name": "accompaniment"}],
        });
        link_stems(&mut result, "job_1");
        assert_eq!(result["stems"][0]["url"], "/v1/jobs/job_1/stems/vocals");
        assert_eq!(
            result["stems"][1]["url"],
            "/v1/jobs/job_1/stems/accompaniment"
        );
    }
}
