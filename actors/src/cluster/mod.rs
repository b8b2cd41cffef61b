//! Inference workers on other machines, through ractor_cluster.
//!
//! ```text
//! control node (murmur serve)             worker node (murmur worker --join)
//!  NodeServer  <---- TCP (TLS), cookie ----  NodeServer
//!  InferencePool -- ToWorker ------------->  Slot (one per models.workers)
//!  Hub  <--------- ToControl --------------  Slot
//! ```
//!
//! A worker node connects to the control node; ractor_cluster checks the
//! shared cookie (and, with TLS, both sides' certificates against the
//! cluster's CA) and then keeps the two nodes' process groups in step. The
//! worker's slots join [`WORKER_GROUP`]; the control node's pool watches
//! that group and dispatches to its members as to its local workers. The
//! control node's hub (the pool's `Hub` actor) joins [`HUB_GROUP`], where slots send their
//! reports.
//!
//! A run's audio is pulled by the slot from the control node in chunks of
//! at most [`CHUNK_BYTES`], one outstanding at a time, so memory on both
//! sides stays bounded whatever the file's length. No shared disk and no
//! tenant key: the control node opens the (sealed) upload and sends the
//! bytes over the session, which TLS encrypts when configured.
//!
//! When a worker node goes away (killed, disconnected, partitioned),
//! ractor_cluster removes its slots from the group; the pool hears it and
//! tells the jobs they ran on it to retry from their last checkpoint. A
//! worker node reconnects by itself, and its slots rejoin.
//!
//! What stays on the control node: the store, the HTTP API, the job actors.
//! A job that writes files beside its result (a separation's stems) runs
//! anywhere: the control node fetches the files, in chunks, before the run
//! is reported done (see [`slot`]).

pub(crate) mod slot;
mod tls;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::engine::Engine;
use wire::{ToControl, WorkerInfo};

/// The process group of every remote worker slot.
pub const WORKER_GROUP: &str = "murmur.workers";
/// The process group of the control node's hub.
pub const HUB_GROUP: &str = "murmur.hub";
/// The largest audio chunk a slot asks for (ractor_cluster refuses frames
/// above 16 MiB).
pub const CHUNK_BYTES: u32 = 1 << 20;
/// How often a slot tells the control node that its run is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// The shortest `cluster.silence_secs` allowed: a few heartbeats.
const MIN_SILENCE: Duration = Duration::from_secs(5);

/// `[cluster]` in the service's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClusterSettings {
    /// Where the control node accepts worker nodes (`0.0.0.0:7946`);
    /// empty: no worker node can join.
    pub listen: String,
    /// The secret every node of the cluster shares; required when `listen`
    /// is set or a worker joins.
    pub cookie: String,
    /// This node's name in the cluster; empty: the host name and process id.
    pub node_name: String,
    /// PEM files for TLS between nodes: this node's certificate chain, its
    /// private key and the CA that signed every node's certificate. All
    /// three, or none (plain TCP: for one machine or a private network).
    pub tls_cert: String,
    pub tls_key: String,
    pub tls_ca: String,
    /// The name a worker expects in the control node's certificate; empty:
    /// the host of `--join`.
    pub tls_server_name: String,
    /// A remote run whose slot says nothing for this long (no report, no
    /// heartbeat: the node hangs, or its network does) is given up and its
    /// job retried elsewhere; the slot gets no more work until it answers
    /// again. At least 5.
    pub silence_secs: u64,
    /// A remote run whose engine reports nothing for this long (no stage,
    /// progress or checkpoint, while the node's heartbeat goes on: the
    /// engine hangs in a live process) is given up the same way, and the
    /// slot takes no work until it says the run has ended. Every stage
    /// reports at least at its start and end, transcription after every
    /// window: set it above the longest stage a job may have without a
    /// report (VAD or decoding of the longest file a tier allows). At
    /// least `silence_secs`.
    pub stall_secs: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            listen: String::new(),
            cookie: String::new(),
            node_name: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_ca: String::new(),
            tls_server_name: String::new(),
            silence_secs: 15,
            stall_secs: 600,
        }
    }
}

/// What the control node's pool knows of the worker nodes it accepts.
#[derive(Debug, Clone, Copy)]
pub struct RemoteWorkers {
    /// How long a remote run may stay silent (`cluster.silence_secs`).
    pub silence: Duration,
    /// How long a remote run's engine may go without a report
    /// (`cluster.stall_secs`).
    pub stall: Duration,
}

/// Why a node could not start or join.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the cluster node could not start: {0}")]
    Spawn(#[from] ractor::SpawnErr),
}

impl ClusterSettings {
    fn check_cookie(&self) -> Result<(), ClusterError> {
        if self.cookie.trim().len() < 16 {
            return Err(ClusterError::Config(
                "cluster.cookie must be set, at least 16 characters, the same on every node \
                 (MURMUR__CLUSTER__COOKIE)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn name(&self, role: &str) -> String {
        if !self.node_name.trim().is_empty() {
            return self.node_name.trim().to_string();
        }
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        format!("{role}-{host}-{}", std::process::id())
    }
}

/// Starts the control node's listener, when `listen` is set: answers
/// what the pool needs to take worker nodes in, or `None` when none can
/// join.
pub async fn start_control(
    settings: &ClusterSettings,
) -> Result<Option<RemoteWorkers>, ClusterError> {
    if settings.listen.trim().is_empty() {
        return Ok(None);
    }
    settings.check_cookie()?;
    let silence = Duration::from_secs(settings.silence_secs);
    if silence < MIN_SILENCE {
        return Err(ClusterError::Config(format!(
            "cluster.silence_secs = {}: at least {} (a slot's heartbeat comes every {} s)",
            settings.silence_secs,
            MIN_SILENCE.as_secs(),
            HEARTBEAT.as_secs()
        )));
    }
    let stall = Duration::from_secs(settings.stall_secs);
    if stall < silence {
        return Err(ClusterError::Config(format!(
            "cluster.stall_secs = {}: at least cluster.silence_secs ({})",
            settings.stall_secs, settings.silence_secs
        )));
    }
    let addr: SocketAddr = settings.listen.trim().parse().map_err(|e| {
        ClusterError::Config(format!("cluster.listen = {:?}: {e}", settings.listen))
    })?;
    let encryption = tls::acceptor(settings)?.map(ractor_cluster::IncomingEncryptionMode::Tls);
    let server = NodeServer::new(
        addr.port(),
        settings.cookie.trim().to_string(),
        settings.name("control"),
        addr.ip().to_string(),
        encryption,
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr(addr.ip());
    Actor::spawn(Some("murmur.cluster".into()), server, ()).await?;
    let tls = if settings.tls_cert.trim().is_empty() {
        "off"
    } else {
        "on"
    };
    tracing::info!(%addr, tls, "accepting worker nodes");
    Ok(Some(RemoteWorkers { silence, stall }))
}

/// A worker node: what it joins with and what it runs.
pub struct WorkerNode {
    /// The control node's cluster address (`host:port`).
    pub join: String,
    pub settings: ClusterSettings,
    /// One engine per slot (slots on one device share one engine).
    pub engines: Vec<Arc<dyn Engine>>,
    /// Where runs' audio is spooled while they run.
    pub spool_dir: PathBuf,
}

/// Session events the join loop waits on.
enum SessionEvent {
    Authenticated,
    Disconnected,
}

struct Events(mpsc::UnboundedSender<SessionEvent>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _: ractor_cluster::node::NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, _: ractor_cluster::node::NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Disconnected);
    }
    fn node_session_authenticated(&self, _: ractor_cluster::node::NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Authenticated);
    }
}

/// Runs a worker node until `shutdown` resolves: joins the control node,
/// offers its slots, and joins again whenever the session ends.
pub async fn run_worker(
    node: WorkerNode,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClusterError> {
    node.settings.check_cookie()?;
    if node.engines.is_empty() {
        return Err(ClusterError::Config(
            "a worker node needs models.workers of at least 1".into(),
        ));
    }
    let join_host = node
        .join
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
        .ok_or_else(|| {
            ClusterError::Config(format!("--join {:?}: expected HOST:PORT", node.join))
        })?;
    let connector = tls::connector(&node.settings)?;
    let server_name = if node.settings.tls_server_name.trim().is_empty() {
        join_host.clone()
    } else {
        node.settings.tls_server_name.trim().to_string()
    };
    let name = node.settings.name("worker");
    // This node accepts no one: it listens on loopback only because
    // ractor_cluster's node server always listens.
    let server = NodeServer::new(
        0,
        node.settings.cookie.trim().to_string(),
        name.clone(),
        "127.0.0.1".into(),
        None,
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr(std::net::IpAddr::from([127, 0, 0, 1]));
    let (server, _) = Actor::spawn(None, server, ()).await?;
    let (tx, mut events) = mpsc::unbounded_channel();
    let _ = server.cast(NodeServerMessage::SubscribeToEvents {
        id: "murmur.worker".into(),
        subscription: Box::new(Events(tx)),
    });

    let mut cells = Vec::new();
    for (i, engine) in node.engines.iter().enumerate() {
        let info = WorkerInfo {
            node: name.clone(),
            device: engine.device(),
            slot: i as u32,
            compute_type: engine.compute_type(),
            models: Vec::new(),
            busy: false,
        };
        let (slot, _) = Actor::spawn(
            None,
            slot::Slot,
            slot::SlotArgs {
                engine: engine.clone(),
                info,
                spool_dir: node.spool_dir.clone(),
            },
        )
        .await?;
        cells.push(slot.get_cell());
    }
    ractor::pg::join(WORKER_GROUP.to_string(), cells);

    let join = async {
        let mut wait = Duration::from_millis(250);
        // Ends only with an error: otherwise joins again for ever.
        loop {
            let connected = match &connector {
                Some(c) => {
                    let name = rustls_pki_types::ServerName::try_from(server_name.clone())
                        .map_err(|e| {
                            ClusterError::Tls(format!("server name {server_name:?}: {e}"))
                        })?;
                    ractor_cluster::client_connect_enc(&server, node.join.as_str(), c.clone(), name)
                        .await
                }
                None => ractor_cluster::client_connect(&server, node.join.as_str()).await,
            };
            match connected {
                Err(e) => {
                    tracing::warn!(join = %node.join, error = %e, "cannot reach the control node; trying again")
                }
                Ok(()) => {
                    let mut authenticated = false;
                    while let Some(event) = events.recv().await {
                        match event {
                            SessionEvent::Authenticated => {
                                authenticated = true;
                                wait = Duration::from_millis(250);
                                tracing::info!(join = %node.join, node = %name, slots = node.engines.len(), "joined the control node");
                            }
                            SessionEvent::Disconnected => break,
                        }
                    }
                    if authenticated {
                        tracing::warn!(join = %node.join, "the session with the control node ended; joining again");
                    } else {
                        tracing::error!(join = %node.join, "the control node refused this node: check cluster.cookie and the TLS certificates");
                    }
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    };
    tokio::select! {
        r = join => {
            let r: Result<std::convert::Infallible, ClusterError> = r;
            r?;
        }
        () = shutdown => {}
    }
    server.stop(None);
    Ok(())
}

/// The control node's hub, as a worker node sees it (a remote actor),
/// once the session has shared the process groups.
pub(crate) fn hub() -> Option<ActorRef<ToControl>> {
    ractor::pg::get_members(&HUB_GROUP.to_string())
        .into_iter()
        .next()
        .map(ActorRef::from)
}
