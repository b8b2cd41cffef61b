//! An upload whose request has not finished with it. [`PendingUpload`]
//! deletes its file when dropped: at once if no job was submitted on it,
//! otherwise once that job ends. So a client that hangs up anywhere between
//! the file's last byte and the answer leaves no upload behind, and the
//! routes that keep no upload (OpenAI's, Whisper-WebUI's) lose it also
//! when the request ends before the job does. `/v1/files` keeps its upload
//! with [`PendingUpload::keep`].

use std::time::Duration;

use serde_json::Value;

use super::jobs::submit_job;
use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::store::{FileRecord, Job, TenantId};

/// How often a dropped upload's job is read until it ends.
const JOB_POLL: Duration = Duration::from_millis(500);

/// A stored upload, deleted when dropped unless kept (see the module).
pub struct PendingUpload {
    state: AppState,
    tenant: TenantId,
    file: FileRecord,
    /// The job submitted on the file: a drop waits for it to end.
    job_id: Option<String>,
    armed: bool,
}

impl PendingUpload {
    pub fn new(state: &AppState, tenant: &TenantId, file: FileRecord) -> Self {
        Self {
            state: state.clone(),
            tenant: tenant.clone(),
            file,
            job_id: None,
            armed: true,
        }
    }

    /// The upload stays, as a tenant's file.
    pub fn keep(mut self) -> FileRecord {
        self.armed = false;
        self.file.clone()
    }

    /// Submits a job on the file, with the same gates as `/v1/jobs`. The
    /// submission runs on a task of its own, so a request dropped meanwhile
    /// neither cuts it in half nor deletes the file under a job just
    /// stored: the upload then goes when that job ends. A refused job
    /// deletes the file before the refusal is answered.
    pub async fn submit(
        mut self,
        caller: &Caller,
        params: &Value,
    ) -> Result<(Job, Self), ApiError> {
        let (caller, params) = (caller.clone(), params.clone());
        let state = self.state.clone();
        let background = self.state.background.clone();
        let submission = background.spawn(async move {
            match submit_job(&state, &caller, &self.file.id, None, &params, None).await {
                Ok(job) => {
                    self.job_id = Some(job.id.clone());
                    Ok((job, self))
                }
                Err(e) => {
                    self.delete().await;
                    Err(e)
                }
            }
        });
        submission.await.map_err(ApiError::internal)?
    }

    /// Deletes the file now (its request is done with it).
    pub async fn delete(&mut self) {
        self.armed = false;
        if let Err(e) = self
            .state
            .store
            .delete_file(&self.tenant, &self.file.id)
            .await
        {
            tracing::warn!(error = %e, file = %self.file.id, "could not remove an upload");
        }
    }
}

impl Drop for PendingUpload {
    /// The deletion runs on the server's background tracker; it stops at
    /// shutdown (a file whose job still runs is then left to the tier's
    /// retention).
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (state, tenant) = (self.state.clone(), self.tenant.clone());
        let (file_id, job_id) = (self.file.id.clone(), self.job_id.clone());
        self.state.background.spawn(async move {
            while let Some(job_id) = &job_id {
                match state.store.job(&tenant, job_id) {
                    Ok(Some(j)) if !j.status.is_finished() => {}
                    _ => break,
                }
                tokio::select! {
                    _ = tokio::time::sleep(JOB_POLL) => {}
                    _ = state.stopping.cancelled() => return,
                }
            }
            if let Err(e) = state.store.delete_file(&tenant, &file_id).await {
                tracing::warn!(error = %e, file = %file_id, "could not remove an upload");
            }
        });
    }
}
