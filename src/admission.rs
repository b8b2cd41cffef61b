//! Job admission: every rule a new job meets before it is stored, in one
//! place for every entry point that starts jobs (`/v1/jobs`, the OpenAI
//! endpoints, the Whisper-WebUI routes) and for workflows, whose saved
//! parameters meet the same gates.
//!
//! In order: the file (and workflow) belong to the caller's tenant; the
//! parameters merge (defaults, workflow, request) and validate; the tier
//! gates hold, checked in the caller's token authorizer; the audio fits the
//! tier's length and translation limits; the models the job needs are
//! installed or installable here. The store then admits the job against the
//! tier's queue bound and monthly translation quota in the same transaction
//! that writes it `queued` with its first event, and the actor system takes
//! it. Refusals are [`Refusal`]s; the HTTP layer words them as problems
//! (`api::errors`, docs/API.md "Errors").

use murmur_actors::params::{JobParams, ParamsError};
use murmur_models::fetch::{self, DIARIZATION_MODEL, SEPARATION_MODEL};
use serde_json::Value;

use crate::auth::tokens::GateError;
use crate::auth::{Caller, TokenError, TokenKeys};
use crate::billing::gates::{Capability, TierGate};
use crate::billing::Translation;
use crate::config::Settings;
use crate::ids::new_id;
use crate::store::{EventType, Job, JobCallback, NewJob, Store, StoreError, TranslationLimit};

/// Why a job (or a workflow's parameters) is refused. Each says what to do
/// about it; none names another tenant's data.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The file or workflow is not the caller's (or does not exist).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("params: {0}")]
    Params(#[from] ParamsError),
    #[error("the {tier} tier cannot use model {model}; it allows {allowed}")]
    ModelNotInTier {
        tier: String,
        model: String,
        allowed: String,
    },
    #[error("{} is not part of the {tier} tier; upgrade to use it", .feature.label())]
    FeatureNotInTier { tier: String, feature: Capability },
    #[error(
        "this file is {duration:.1} s long, over the {tier} tier's maximum of {max_s} s of \
         audio (split it, or upgrade)"
    )]
    AudioTooLong {
        tier: String,
        duration: f64,
        max_s: u64,
    },
    #[error(
        "the {tier} tier translates files of at most {max_s} s; this file is {duration:.1} s \
         long (upgrade for longer translations)"
    )]
    TranslationTooLong {
        tier: String,
        duration: f64,
        max_s: u64,
    },
    #[error(
        "the {tier} tier searches at most {max} beams (and draws at most {max} samples per \
         temperature); {field} {asked} asks for more (ask for less, or upgrade)"
    )]
    BeamTooWide {
        tier: String,
        field: &'static str,
        asked: u32,
        max: u32,
    },
    #[error(
        "the {tier} tier decodes at most {max} chunks together; batch_size {asked} asks for \
         more (ask for less, or upgrade)"
    )]
    BatchTooLarge { tier: String, asked: u32, max: u32 },
    #[error("model {0} is not installed on this server; GET /v1/models lists what is")]
    ModelNotInstalled(String),
    #[error(
        "{feature} is not installed on this server (the operator can run \
         `murmur models fetch {model}`)"
    )]
    FeatureNotInstalled {
        feature: &'static str,
        model: &'static str,
    },
    #[error(
        "the {tier} tier queues at most {limit} jobs at once and {open} are queued or \
         running; submit more when some have finished"
    )]
    QueueFull { tier: String, open: u64, limit: u64 },
    #[error(
        "the {tier} tier allows {limit} translation jobs per calendar month (UTC); {used} \
         used in {period}; upgrade or wait for next month"
    )]
    TranslationQuota {
        tier: String,
        used: u64,
        limit: u64,
        period: String,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a caller asks to run.
pub struct JobRequest<'a> {
    pub file_id: &'a str,
    /// A saved workflow whose parameters replace the defaults.
    pub workflow_id: Option<&'a str>,
    /// Partial parameters laid over the defaults or the workflow's.
    pub params: &'a Value,
    /// A checked `callback_url`, stored with the job.
    pub callback: Option<&'a JobCallback>,
}

/// The rules, over the state they read. Borrowed per request.
pub struct Rules<'a> {
    pub store: &'a Store,
    pub settings: &'a Settings,
    pub keys: &'a TokenKeys,
    pub jobs: &'a murmur_actors::System,
}

impl Rules<'_> {
    /// `params` laid over `base`, validated and gated for the caller's tier
    /// of today (a workflow saved on a higher tier meets it when it runs).
    pub fn resolve(
        &self,
        caller: &Caller,
        base: &JobParams,
        params: &Value,
    ) -> Result<JobParams, Refusal> {
        let mut resolved = JobParams::merged(base, params)?;
        self.check_gates(caller, &resolved)?;
        bound_search(&caller.tier, &mut resolved, params)?;
        Ok(resolved)
    }

    /// Checks what `params` need from the tier (model family, diarization,
    /// BGM separation, translation) in the caller's token authorizer, with
    /// the tenant's current tier and epoch (see `auth::tokens`).
    pub fn check_gates(&self, caller: &Caller, params: &JobParams) -> Result<(), Refusal> {
        let needs = crate::billing::gates::needs(params);
        let tier = &caller.tier;
        match self
            .keys
            .authorize_gates(&caller.principal, tier, caller.tenant.tier_epoch, &needs)
        {
            Ok(()) => Ok(()),
            Err(GateError::Refused(TierGate::Model(model))) => Err(Refusal::ModelNotInTier {
                tier: tier.name.clone(),
                model,
                allowed: tier.models.join(", "),
            }),
            Err(GateError::Refused(TierGate::Feature(feature))) => Err(Refusal::FeatureNotInTier {
                tier: tier.name.clone(),
                feature,
            }),
            Err(GateError::Token(e)) => Err(e.into()),
        }
    }

    /// Admits a job for the caller: every rule above, then stores it
    /// `queued` with its first event and hands it to the actor system.
    pub async fn submit(&self, caller: &Caller, request: JobRequest<'_>) -> Result<Job, Refusal> {
        let tenant = caller.tenant_id();
        let tier = &caller.tier;
        let file = self
            .store
            .file(tenant, request.file_id)?
            .ok_or(Refusal::NotFound("file"))?;
        let base = match request.workflow_id {
            Some(id) => {
                self.store
                    .workflow(tenant, id)?
                    .ok_or(Refusal::NotFound("workflow"))?
                    .config
            }
            None => JobParams::defaults(&self.settings.models.default_model),
        };
        let params = self.resolve(caller, &base, request.params)?;
        // The length measured at upload against the tier of today; the
        // engine checks again while decoding, for files measured before
        // tiers had a maximum.
        if let Some(duration) = file
            .duration_s
            .filter(|d| *d > tier.max_audio_seconds as f64)
        {
            return Err(Refusal::AudioTooLong {
                tier: tier.name.clone(),
                duration,
                max_s: tier.max_audio_seconds,
            });
        }
        let limit = match (&tier.translation, params.translates()) {
            (Translation::Limited, true) => {
                let max_s = tier.translation_max_file_seconds.unwrap_or(0);
                let duration = file.duration_s.unwrap_or(f64::INFINITY);
                if duration > max_s as f64 {
                    return Err(Refusal::TranslationTooLong {
                        tier: tier.name.clone(),
                        duration,
                        max_s,
                    });
                }
                tier.translation_jobs_per_month
                    .map(|per_month| TranslationLimit { per_month })
            }
            _ => None,
        };
        self.check_installed(&params)?;
        let job = Job::queued(
            new_id("j"),
            caller.tenant.id.clone(),
            caller.principal.user_id.clone(),
            file.id,
            request.workflow_id.map(str::to_string),
            params,
        );
        let created = self
            .store
            .create_job_announced(
                tenant,
                &job,
                EventType::Queued,
                NewJob {
                    limit,
                    max_open: tier.max_queued_jobs,
                    callback: request.callback,
                },
                self.jobs.announcer(),
            )
            .await;
        let event = match created {
            Ok(event) => event,
            Err(StoreError::QueueFull { open, limit }) => {
                return Err(Refusal::QueueFull {
                    tier: tier.name.clone(),
                    open,
                    limit,
                })
            }
            Err(StoreError::LimitReached {
                used,
                limit,
                period,
            }) => {
                return Err(Refusal::TranslationQuota {
                    tier: tier.name.clone(),
                    used,
                    limit,
                    period,
                })
            }
            Err(e) => return Err(e.into()),
        };
        if job.params.translates() {
            metrics::counter!("murmur_usage_translation_jobs_total", "tier" => tier.name.clone())
                .increment(1);
        }
        self.jobs.submitted(&event);
        Ok(job)
    }

    /// Every model the job loads is installed here, or installable on
    /// demand.
    fn check_installed(&self, params: &JobParams) -> Result<(), Refusal> {
        if params.runs_whisper() && !model_available(self.settings, &params.model) {
            return Err(Refusal::ModelNotInstalled(params.model.clone()));
        }
        for (wanted, model, feature) in [
            (
                params.separates(),
                SEPARATION_MODEL,
                "background-music separation",
            ),
            (params.diarizes(), DIARIZATION_MODEL, "speaker diarization"),
        ] {
            if wanted && !model_available(self.settings, model) {
                return Err(Refusal::FeatureNotInstalled { feature, model });
            }
        }
        Ok(())
    }
}

/// The tier's bounds on the search (`max_beam_size`) and the batch
/// (`max_batch_size`): a `beam_size`, `best_of` or `batch_size` the request
/// names above them is refused; one it does not name (the default, or a
/// workflow saved on a higher tier) is lowered to the bound, so a job that
/// asks for nothing runs on every tier.
fn bound_search(
    tier: &crate::billing::Tier,
    params: &mut JobParams,
    asked: &Value,
) -> Result<(), Refusal> {
    if !params.runs_whisper() {
        return Ok(());
    }
    let max = tier.beam_limit();
    for (field, value) in [
        ("beam_size", &mut params.beam_size),
        ("best_of", &mut params.best_of),
    ] {
        if *value <= max {
            continue;
        }
        if asked.get(field).is_some() {
            return Err(Refusal::BeamTooWide {
                tier: tier.name.clone(),
                field,
                asked: *value,
                max,
            });
        }
        *value = max;
    }
    let max = tier.batch_limit();
    if params.batch_size > max {
        if asked.get("batch_size").is_some() {
            return Err(Refusal::BatchTooLarge {
                tier: tier.name.clone(),
                asked: params.batch_size,
                max,
            });
        }
        params.batch_size = max;
    }
    Ok(())
}

/// Whether jobs can run `model` here: installed, or installable on demand.
pub fn model_available(settings: &Settings, model: &str) -> bool {
    fetch::installed(&settings.models_dir(), model).is_some()
        || (settings.models.fetch_missing && fetch::find(model).is_some())
}
