//! The actor tree (ractor) that runs jobs; see docs/ARCHITECTURE.md:
//!
//! ```text
//! Orchestrator (root)     recovers unfinished jobs at start, routes jobs
//!  |- TenantSupervisor(t) a tenant's FIFO queue and concurrency limit;
//!  |   '- JobActor(j)     runs one job, checkpoints, emits events
//!  '- InferencePool       workers that run the models, fair shares by tier
//!      |- Worker(i)       a local worker: one request at a time
//!      '- Hub             with worker nodes: where their slots report
//! ```
//!
//! Worker nodes (`murmur worker --join`) run [`cluster::slot`]s the pool
//! dispatches to as to its local workers (see [`cluster`]).
//!
//! Beside the tree, the [`EventBus`] (shared state, not an actor) hands each
//! durable event to its tenant's and its job's live subscribers.
//!
//! The crate knows nothing of HTTP; it reaches durable state only through
//! the [`JobStore`] trait, and the models only through the [`Engine`] trait,
//! so either side can move to another machine later.

pub mod bus;
pub mod cluster;
mod config;
mod ctx;
pub mod engine;
mod error;
pub mod job;
mod job_actor;
mod orchestrator;
pub mod params;
pub mod pool;
pub mod repo;
pub mod sealed;
mod system;
mod tenant;

pub use bus::EventBus;
pub use cluster::{ClusterError, ClusterSettings};
pub use engine::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
pub use pool::{PoolView, RunningView, WorkerView};
pub use repo::{JobStore, RepoError, TenantLimits};
pub use system::{StartError, System, SystemConfig};
