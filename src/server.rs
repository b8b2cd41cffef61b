//! `murmur serve`: open the store, load keys and tiers, start the actor
//! system (which resumes unfinished jobs), serve HTTP until a shutdown
//! signal, then stop the actors and flush.

use std::sync::Arc;

use anyhow::Context;
use murmur_actors::{Engine, System};

use crate::api::{self, AppState};
use crate::auth::TokenKeys;
use crate::billing::TierTable;
use crate::config::Settings;
use crate::jobs::StoreJobs;
use crate::store::Store;

/// Builds the shared state and starts the actor system.
pub async fn start(
    settings: Settings,
    engines: Vec<Arc<dyn Engine>>,
) -> anyhow::Result<(AppState, tokio::task::JoinHandle<()>)> {
    let data_dir = settings.store.data_dir.clone();
    let store = Store::open_with_master_key(&data_dir, Some(&settings.store.master_key_file))
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let keys = TokenKeys::load_or_create(&data_dir, &store)?;
    let tiers = Arc::new(TierTable::load(&settings.billing.tiers_file)?);
    // The recorder first: what the actors record as they start (each
    // worker's series at zero) would otherwise go nowhere.
    let metrics = crate::telemetry::metrics_handle();
    // Worker nodes may join once the pool watches for them.
    let remote_workers = murmur_actors::cluster::start_control(&settings.cluster).await?;
    let (jobs, root) = System::start_with(
        Arc::new(StoreJobs {
            store: store.clone(),
            tiers: tiers.clone(),
        }),
        engines,
        settings.jobs.clone(),
        remote_workers,
    )
    .await?;
    let outbound = crate::outbound::Outbound::new(&settings.outbound)?;
    // Webhook events stored but not applied before a crash.
    let replayed =
        crate::billing::revenuecat::replay(&store, &tiers, &settings.billing.revenuecat, &outbound)
            .await?;
    if replayed > 0 {
        tracing::info!(
            events = replayed,
            "applied RevenueCat events left from the last run"
        );
    }
    let trusted_proxies = api::client_ip::TrustedProxies::parse(&settings.server.trusted_proxies)
        .map_err(anyhow::Error::msg)?;
    let auth_limits = Arc::new(crate::auth::AuthLimits::new(
        crate::auth::limits::LimitSettings {
            max_concurrent_hashes: settings.auth.max_concurrent_hashes,
            login_attempts_per_minute_per_address: settings
                .auth
                .login_attempts_per_minute_per_address,
            login_failures_per_minute_per_account: settings
                .auth
                .login_failures_per_minute_per_account,
        },
        crate::auth::PasswordCost {
            memory_kib: settings.auth.argon2_memory_kib,
            iterations: settings.auth.argon2_iterations,
        },
    ));
    let state = AppState {
        settings: Arc::new(settings),
        store,
        keys: Arc::new(keys),
        tiers,
        jobs,
        metrics,
        operator_token: Arc::new(hex::encode(rand::random::<[u8; 32]>())),
        token_checks: Arc::new(tokio::sync::Semaphore::new(api::token_check_slots())),
        background: tokio_util::task::TaskTracker::new(),
        stopping: tokio_util::sync::CancellationToken::new(),
        auth_limits,
        outbound,
        trusted_proxies,
    };
    Ok((state, root))
}

/// Seals uploads and stems an older build wrote in clear, off the runtime,
/// stopping with the server (see `store::reseal`).
fn seal_clear_files_in_background(
    store: &Store,
    background: &tokio_util::task::TaskTracker,
    stopping: &tokio_util::sync::CancellationToken,
) {
    let (store, stopping) = (store.clone(), stopping.clone());
    background.spawn(async move {
        let done = tokio::task::spawn_blocking(move || {
            store.seal_clear_files(&|| stopping.is_cancelled())
        })
        .await;
        match done {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::info!(files = n, "sealed files written in clear by an older build")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "sealing files written in clear stopped"),
            Err(e) => tracing::error!(error = %e, "sealing files written in clear failed"),
        }
    });
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
        murmur_models::fetch::VAD_MODEL.to_string(),
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
    restrict_new_files();
    let listen = settings.server.listen;
    let engines = crate::engine::engines(&settings)?;
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
    crate::webhooks::spawn(
        store.clone(),
        state.outbound.clone(),
        state.settings.webhooks.clone(),
        &background,
        stop_sweeps.clone(),
    );
    seal_clear_files_in_background(&store, &background, &stop_sweeps);
    crate::retention::spawn(
        store.clone(),
        state.tiers.clone(),
        std::time::Duration::from_secs(state.settings.store.retention_sweep_seconds.max(1)),
        &background,
        stop_sweeps.clone(),
    );
    let limits = ConnectionLimits {
        header_read_timeout: std::time::Duration::from_millis(
            state.settings.server.header_read_timeout_ms.max(1),
        ),
        max_connections: state.settings.server.max_connections.max(1),
    };
    let routes = api::routes(state);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = http_server(routes, listen, limits, async {
        let _ = stop_rx.await;
    })
    .await
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

/// What one client may hold of the server: see `[server]` in the config.
struct ConnectionLimits {
    header_read_timeout: std::time::Duration,
    max_connections: usize,
}

/// A connection with its place among `max_connections`: the permit goes
/// back when the connection (or the WebSocket it was upgraded to) closes.
struct Admitted {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Admitted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Admitted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `routes` through hyper's connections (not `warp::serve`, which
/// has no header timeout and no connection cap): HTTP/1 (with upgrades to
/// WebSocket) and HTTP/2, at most `max_connections` at once, each closed if
/// a request's headers take longer than `header_read_timeout`. Accepting
/// waits for a free place, so excess connections queue in the kernel's
/// backlog instead of holding memory here. Answers the bound address and
/// the server, which ends after `stop` fires and open requests finish
/// (idle keep-alive connections are closed then).
async fn http_server(
    routes: warp::filters::BoxedFilter<(warp::reply::Response,)>,
    listen: std::net::SocketAddr,
    limits: ConnectionLimits,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    std::net::SocketAddr,
    impl std::future::Future<Output = ()> + Send,
)> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let places = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let service = hyper_util::service::TowerToHyperService::new(warp::service(routes));
    let mut connections = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    connections
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    connections.http2().timer(TokioTimer::new());
    Ok((addr, async move {
        let open = hyper_util::server::graceful::GracefulShutdown::new();
        let mut stop = std::pin::pin!(stop);
        loop {
            let permit = tokio::select! {
                permit = places.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = &mut stop => break,
            };
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    // Out of file descriptors and the like: wait, then go
                    // on (an error here must not end the whole server).
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut stop => break,
            };
            let remote = api::RemoteAddr(remote);
            let service = service.clone();
            let per_request = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(remote);
                    hyper::service::Service::call(&service, req)
                },
            );
            let io = TokioIo::new(Admitted {
                stream,
                _permit: permit,
            });
            let conn = connections
                .serve_connection_with_upgrades(io, per_request)
                .into_owned();
            let conn = open.watch(conn);
            tokio::spawn(async move {
                // A client that hung up or sent garbage: its own business.
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        open.shutdown().await;
    }))
}

/// Makes everything the server creates from now on private to its user
/// (directories 0700, files 0600): the data dir holds password hashes, the
/// signing key and tenants' audio, and models and stems are written by
/// libraries that use default modes.
fn restrict_new_files() {
    #[cfg(unix)]
    // SAFETY: umask(2) only sets the process's file mode mask and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

pub async fn shutdown_signal() {
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
