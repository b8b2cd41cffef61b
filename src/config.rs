//! Settings: embedded defaults, then `config/default.toml` in the working
//! directory, then `--config FILE`, then `MURMUR__SECTION__KEY` variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use murmur_models::whisper::{ComputeType, UnknownComputeType};
use serde::Deserialize;

/// The defaults, embedded so the binary runs with no file at all.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// Every setting of the service. Cheap to clone; read once at start.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub store: StoreSettings,
    pub auth: AuthSettings,
    pub models: ModelSettings,
    pub jobs: murmur_actors::SystemConfig,
    pub billing: BillingSettings,
    pub outbound: crate::outbound::OutboundSettings,
    pub webhooks: WebhookSettings,
    /// Worker nodes on other machines (`[cluster]`).
    #[serde(default)]
    pub cluster: murmur_actors::ClusterSettings,
}

/// `[webhooks]`: endpoints per tenant and how deliveries are retried.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// Endpoints one tenant may register.
    pub max_per_tenant: usize,
    /// First retry delay (ms); doubles per attempt up to `retry_max_ms`,
    /// each delay jittered to between half and all of it.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// A delivery not accepted this long after its event is given up.
    pub give_up_after_hours: u64,
    /// Longest a receiver may take to answer one attempt (ms).
    pub delivery_timeout_ms: u64,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Attempts kept per endpoint for `GET /v1/webhooks/{id}/deliveries`.
    pub log_per_endpoint: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_json_bytes: u64,
    /// Serve the dashboard from this folder instead of the copy embedded at
    /// build time (for working on `web/` without rebuilding). Empty: embedded.
    #[serde(default)]
    pub web_dir: String,
    /// A connection must send a request's headers within this many ms.
    pub header_read_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Most events one WebSocket subscription replays; the rest is paged
    /// (`replay_truncated`).
    #[serde(default = "default_ws_replay_page")]
    pub ws_replay_page: usize,
    /// Origins whose pages may read answers (CORS); empty: none. A list in
    /// TOML, or one comma-separated string (for the environment).
    #[serde(default, deserialize_with = "list_or_commas")]
    pub cors_allowed_origins: Vec<String>,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For`
    /// names the client for rate limiting; empty: none.
    #[serde(default, deserialize_with = "list_or_commas")]
    pub trusted_proxies: Vec<String>,
}

/// A list of strings given as a list or as one comma-separated string.
pub(crate) fn list_or_commas<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Given::deserialize(d)? {
        Given::List(list) => list,
        Given::Text(text) => text
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    })
}

fn default_ws_replay_page() -> usize {
    1000
}

#[derive(Debug, Clone, Deserialize)]
pub struct StoreSettings {
    pub data_dir: PathBuf,
    /// Seconds between runs of the retention sweep (tiers' `retention_days`).
    #[serde(default = "default_retention_sweep_seconds")]
    pub retention_sweep_seconds: u64,
    /// The master key's file (64 hex digits); empty: `<data_dir>/master_key`.
    /// `MURMUR_MASTER_KEY` overrides it.
    #[serde(default)]
    pub master_key_file: PathBuf,
}

fn default_retention_sweep_seconds() -> u64 {
    3600
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub token_ttl_hours: i64,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    /// Argon2 runs at once (each holds `argon2_memory_kib`); 0: one per core.
    pub max_concurrent_hashes: usize,
    pub login_attempts_per_minute_per_address: u32,
    pub login_failures_per_minute_per_account: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSettings {
    /// Empty means `<data_dir>/models`; see [`Settings::models_dir`].
    pub dir: String,
    pub device: String,
    /// `int8`, `f16`, `f32` or `default`; see [`Settings::compute_type`].
    pub compute_type: String,
    /// Under `int8` on a CPU with AVX-512 VNNI, the encoder's linear layers
    /// in int8 too (docs/models.md, "The encoder in int8").
    pub int8_encoder: bool,
    pub default_model: String,
    pub workers: usize,
    pub max_loaded_models: usize,
    pub fetch_missing: bool,
    /// Empty means the registry cache default; see [`Settings::cache_dir`].
    pub cache_dir: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BillingSettings {
    pub tiers_file: String,
    /// How often paid tiers whose expiry passed are moved back, in seconds.
    pub expiry_sweep_seconds: u64,
    pub revenuecat: RevenueCatSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RevenueCatSettings {
    pub webhook_secret: String,
    pub allow_sandbox: bool,
    /// Ask RevenueCat's REST API after each event and trust its answer.
    pub rest_sync: bool,
    pub rest_base_url: String,
    pub rest_api_key: String,
    pub rest_timeout_ms: u64,
}

impl Settings {
    /// Reads the layered settings. `file` is the `--config` argument, which
    /// must exist when given; `config/default.toml` is optional.
    pub fn load(file: Option<&Path>) -> Result<Settings, config::ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::with_name("config/default.toml").required(false));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        builder
            .add_source(
                config::Environment::with_prefix("MURMUR")
                    .prefix_separator("__")
                    .separator("__"),
            )
            .build()?
            .try_deserialize()
    }

    pub fn cache_dir(&self) -> PathBuf {
        if self.models.cache_dir.is_empty() {
            murmur_models::registry::cache_dir()
        } else {
            PathBuf::from(&self.models.cache_dir)
        }
    }

    pub fn models_dir(&self) -> PathBuf {
        if self.models.dir.is_empty() {
            self.store.data_dir.join("models")
        } else {
            PathBuf::from(&self.models.dir)
        }
    }

    /// `models.compute_type` for `device`: `default` is the device's
    /// (`int8` on a CPU, `f16` on a GPU; see docs/models.md, "Compute types").
    pub fn compute_type(
        &self,
        device: &murmur_models::device::Device,
    ) -> Result<ComputeType, UnknownComputeType> {
        ComputeType::resolve(&self.models.compute_type, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse() {
        let s: Settings = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("embedded defaults must parse");
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.store.data_dir, PathBuf::from("./data"));
        assert_eq!(s.models_dir(), PathBuf::from("./data/models"));
        assert_eq!(s.models.default_model, "base");
    }
}
