//! Why an actor of the tree fails: what its supervisor hears (a tenant
//! supervisor retries a job with the message; the orchestrator stops the
//! tree). Store failures travel as the store's own [`RepoError`].
//!
//! [`RepoError`]: crate::repo::RepoError

/// An actor's own reasons to fail.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActorError {
    /// The job an actor was started for is not in the store.
    #[error("job {0} vanished")]
    JobVanished(String),
    /// The engine failed transiently: the job actor fails so its tenant
    /// supervisor retries the job, recording this message.
    #[error("{0}")]
    Transient(String),
    /// A worker's engine panicked: the pool replaces the worker.
    #[error("engine panicked: {0}")]
    EnginePanicked(String),
    /// A child the tree cannot run without (the pool) failed.
    #[error("a core actor failed: {0}")]
    CoreActorFailed(String),
}
