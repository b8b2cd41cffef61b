//! A worker node whose engine hangs: it reports the transcribe stage of
//! the first request it gets, then never returns, whatever the cancel flag
//! says, while the node itself stays alive and its slot keeps sending
//! heartbeats. `tests/cluster.rs` starts it as a process of its own to
//! show that the control node gives such a run up after
//! `cluster.stall_secs` and holds the slot back.
//!
//! `hung_worker HOST:PORT NAME SPOOL_DIR`, with the cluster's cookie in
//! `MURMUR__CLUSTER__COOKIE`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use murmur_actors::cluster::{run_worker, ClusterSettings, WorkerNode};
use murmur_actors::engine::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use murmur_actors::job::JobStage;

struct Hung;

impl Engine for Hung {
    fn run(
        &self,
        _request: &WorkRequest,
        sink: &mut dyn WorkSink,
        _cancel: &AtomicBool,
    ) -> Result<WorkOutput, WorkError> {
        sink.stage(JobStage::Decode);
        sink.stage(JobStage::Transcribe);
        sink.progress(0.1);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    // It says it holds the model, so the pool would pick it first.
    fn loaded_models(&self) -> Vec<String> {
        vec!["tiny.en".to_string()]
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(join), Some(name), Some(spool_dir)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: hung_worker HOST:PORT NAME SPOOL_DIR");
        std::process::exit(2);
    };
    let settings = ClusterSettings {
        cookie: std::env::var("MURMUR__CLUSTER__COOKIE").unwrap_or_default(),
        node_name: name,
        ..ClusterSettings::default()
    };
    let node = WorkerNode {
        join,
        settings,
        engines: vec![Arc::new(Hung)],
        spool_dir: spool_dir.into(),
    };
    if let Err(e) = run_worker(node, std::future::pending()).await {
        eprintln!("hung_worker: {e}");
        std::process::exit(1);
    }
}
