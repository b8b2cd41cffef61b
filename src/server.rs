//! `murmur serve`: open the store, load keys and tiers, start the actor
//! system (which resumes unfinished jobs), serve HTTP until a shutdown
//! signal, then stop the actors and flush.

use std::sync::Arc;

use anyhow::Context;
use murmur_actors::model_engine::{ModelEngine, ModelEngineConfig};
use murmur_actors::{Engine, System};

use crate::api::{self, AppState};
use crate::auth::TokenKeys;
use crate::billing::TierTable;
use crate::config::Settings;
use crate::jobs::StoreJobs;
use crate::store::Store;

/// The engines of the inference pool: `models.workers` workers sharing one
/// engine (and its loaded models) on the configured device.
pub fn engines(settings: &Settings) -> anyhow::Result<Vec<Arc<dyn Engine>>> {
    let device = murmur_models::device::device_from_str(&settings.models.device)
        .with_context(|| format!("models.device = {:?}", settings.models.device))?;
    let engine: Arc<dyn Engine> = Arc::new(ModelEngine::new(
        ModelEngineConfig {
            models_dir: settings.models_dir(),
            cache_dir: settings.cache_dir(),
            max_loaded_models: settings.models.max_loaded_models,
            fetch_missing: settings.models.fetch_missing,
        },
        device,
    ));
    Ok(vec![engine; settings.models.workers.max(1)])
}

/// Builds the shared state and starts the actor system.
pub async fn start(
    settings: Settings,
    engines: Vec<Arc<dyn Engine>>,
) -> anyhow::Result<(AppState, tokio::task::JoinHandle<()>)> {
    let data_dir = settings.store.data_dir.clone();
    let store = Store::open(&data_dir)
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let keys = TokenKeys::load_or_create(&data_dir)?;
    let tiers = Arc::new(TierTable::load(&settings.billing.tiers_file)?);
    let (jobs, root) = System::start(
        Arc::new(StoreJobs {
            store: store.clone(),
            tiers: tiers.clone(),
        }),
        engines,
        settings.jobs.clone(),
    )
    .await?;
    // Webhook events stored but not applied before a crash.
    let replayed =
        crate::billing::revenuecat::replay(&store, &tiers, &settings.billing.revenuecat).await?;
    if replayed > 0 {
        tracing::info!(
            events = replayed,
            "applied RevenueCat events left from the last run"
        );
    }
    let state = AppState {
        settings: Arc::new(settings),
        store,
        keys: Arc::new(keys),
        tiers,
        jobs,
        metrics: crate::telemetry::metrics_handle(),
        operator_token: Arc::new(hex::encode(rand::random::<[u8; 32]>())),
        token_checks: Arc::new(tokio::sync::Semaphore::new(api::token_check_slots())),
        background: tokio_util::task::TaskTracker::new(),
        stopping: tokio_util::sync::CancellationToken::new(),
    };
    Ok((state, root))
}

/// Where `murmur admin` finds a running server: its loopback URL and the
/// operator token.
pub fn operator_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("operator.json")
}

/// Writes [`operator_file`] with mode 0600 (owner only), replacing any
/// left by an earlier run.
fn write_operator_file(
    data_dir: &std::path::Path,
    addr: std::net::SocketAddr,
    token: &str,
) -> anyhow::Result<()> {
    use std::io::Write;
    let ip = if addr.ip().is_unspecified() {
        match addr {
            std::net::SocketAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        }
    } else {
        addr.ip()
    };
    let url = format!("http://{}", std::net::SocketAddr::new(ip, addr.port()));
    let body = serde_json::json!({"url": url, "token": token, "pid": std::process::id()});
    let path = operator_file(data_dir);
    let tmp = data_dir.join(".operator.json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(body.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Installs the default model and the VAD in the background, so the first
/// job does not wait for a download.
fn prefetch_default_models(settings: &Settings, tasks: &tokio_util::task::TaskTracker) {
    if !settings.models.fetch_missing {
        return;
    }
    let models_dir = settings.models_dir();
    let cache_dir = settings.cache_dir();
    let names = [
        settings.models.default_model.clone(),
        "silero-vad".to_string(),
    ];
    tasks.spawn_blocking(move || {
        for name in names {
            if murmur_models::fetch::installed(&models_dir, &name).is_some() {
                continue;
            }
            tracing::info!(model = %name, "fetching model on first use");
            if let Err(e) =
                murmur_models::fetch::install(&name, &models_dir, &cache_dir, &mut |_| {})
            {
                tracing::warn!(model = %name, error = %e, "model fetch failed; jobs will retry it");
            }
        }
    });
}

/// Serves until SIGINT or SIGTERM (or the actor tree dies), then stops the
/// actors (running jobs keep their checkpoints) and flushes the store.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listen = settings.server.listen;
    let engines = engines(&settings)?;
    let (state, mut root) = start(settings, engines).await?;
    let background = state.background.clone();
    let stop_sweeps = state.stopping.clone();
    prefetch_default_models(&state.settings, &background);
    let store = state.store.clone();
    let jobs = state.jobs.clone();
    let data_dir = state.settings.store.data_dir.clone();
    let operator_token = state.operator_token.clone();
    crate::billing::revenuecat::spawn_expiry_sweep(
        store.clone(),
        state.tiers.clone(),
        std::time::Duration::from_secs(state.settings.billing.expiry_sweep_seconds.max(1)),
        &background,
        stop_sweeps.clone(),
    );
    crate::retention::spawn(
        store.clone(),
        state.tiers.clone(),
        std::time::Duration::from_secs(state.settings.store.retention_sweep_seconds.max(1)),
        &background,
        stop_sweeps.clone(),
    );
    let routes = api::routes(state);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = warp::serve(routes)
        .try_bind_with_graceful_shutdown(listen, async {
            let _ = stop_rx.await;
        })
        .with_context(|| format!("cannot listen on {listen}"))?;
    write_operator_file(&data_dir, addr, &operator_token).context("writing the operator file")?;
    // Scripts and tests wait for this line to learn the port.
    println!("murmur listening on http://{addr}");
    tracing::info!(%addr, "murmur listening");
    let server = tokio::spawn(server);
    let tree_died = tokio::select! {
        _ = shutdown_signal() => false,
        _ = &mut root => true,
    };
    let _ = stop_tx.send(());
    let _ = server.await;
    // Background work ends before the store's last flush: sweeps stop at
    // their next tick, requests' tasks finish. A model download may take
    // longer; it writes no store rows, so it is left after a bound.
    stop_sweeps.cancel();
    background.close();
    if tokio::time::timeout(std::time::Duration::from_secs(30), background.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running after 30 s; stopping without them");
    }
    let _ = std::fs::remove_file(operator_file(&data_dir));
    jobs.shutdown().await;
    store
        .flush()
        .await
        .context("flushing the store at shutdown")?;
    if tree_died {
        anyhow::bail!("the job system stopped unexpectedly; restart Murmur to resume every job");
    }
    tracing::info!("murmur stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
