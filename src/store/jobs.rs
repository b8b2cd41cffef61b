//! Jobs: their rows, the transitions that change them with their event,
//! usage metering and open-job count in one transaction, the event log,
//! and the tenant's usage as metered.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::*;

/// A translation limit to hold a new job to: at most `limit` translation
/// jobs in the job's month.
#[derive(Debug, Clone, Copy)]
pub struct TranslationLimit {
    pub per_month: u64,
}

/// What a new job's transaction checks and writes besides its row
/// (see [`Store::create_job`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct NewJob<'a> {
    /// At most this many translation jobs in the job's month.
    pub limit: Option<TranslationLimit>,
    /// At most this many of the tenant's jobs queued or running.
    pub max_open: Option<u64>,
    /// The job's `callback_url`, written in the same transaction, so its
    /// first event is already owed to it.
    pub callback: Option<&'a JobCallback>,
}

fn is_translation(job: &Job) -> bool {
    job.params.translates()
}

/// Counts a job's change in its tenant's usage (see `transition_job`).
pub(super) fn meter(
    tenant: &TenantId,
    before: Option<&Job>,
    after: &Job,
    limit: Option<TranslationLimit>,
    usage: &sled::transaction::TransactionalTree,
    files: &sled::transaction::TransactionalTree,
    seal: &keyring::RowSeal,
) -> TxResult<()> {
    let was_open = before.is_none_or(|j| !j.status.is_finished());
    let update =
        |period: String, f: &dyn Fn(&mut Usage) -> Result<(), StoreError>| -> TxResult<()> {
            let key = scoped_key(tenant, &period);
            let mut u: Usage = match usage.get(&key)? {
                Some(b) => decode(&key, &b).map_err(ConflictableTransactionError::Abort)?,
                None => Usage::default(),
            };
            f(&mut u).map_err(ConflictableTransactionError::Abort)?;
            usage.insert(key, encode(&u))?;
            Ok(())
        };
    if before.is_none() && is_translation(after) {
        let period = usage_period(after.created_at);
        let p = period.clone();
        update(period, &|u| {
            if let Some(limit) = limit {
                if u.translation_jobs >= limit.per_month {
                    return Err(StoreError::LimitReached {
                        used: u.translation_jobs,
                        limit: limit.per_month,
                        period: p.clone(),
                    });
                }
            }
            u.translation_jobs += 1;
            Ok(())
        })?;
    }
    // Only a job's first arrival at `completed` counts.
    if !was_open || after.status != JobStatus::Completed {
        return Ok(());
    }
    // What the engine decoded for this job is what was processed; the
    // length measured at upload stands in for a result that does not say.
    let decoded = after
        .result
        .as_ref()
        .and_then(|r| r.get("duration_s")?.as_f64());
    let seconds = match decoded {
        Some(s) => s,
        None => {
            let file_key = scoped_key(tenant, &after.file_id);
            match files.get(&file_key)? {
                Some(b) => seal
                    .decode::<FileRecord>(&file_key, &b)
                    .ok()
                    .and_then(|f| f.duration_s),
                None => None,
            }
            .unwrap_or(0.0)
        }
    };
    let period = usage_period(after.finished_at.unwrap_or_else(chrono::Utc::now));
    let kind = after.job_type.clone();
    update(period, &|u| {
        u.audio_seconds += seconds;
        u.jobs += 1;
        *u.jobs_by_kind.entry(kind.clone()).or_default() += 1;
        Ok(())
    })
}

/// Keeps a tenant's count of queued or running jobs with a job's change
/// (see `transition`), refusing a new open job beyond `max_open`.
fn count_open(
    tenant: &TenantId,
    before: Option<&Job>,
    after: &Job,
    max_open: Option<u64>,
    open_jobs: &sled::transaction::TransactionalTree,
) -> TxResult<()> {
    let was_open = before.is_some_and(|j| !j.status.is_finished());
    let is_open = !after.status.is_finished();
    if was_open == is_open {
        return Ok(());
    }
    let key = tenant.as_str().as_bytes();
    let open = match open_jobs.get(key)? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
        None => 0,
    };
    let open = if is_open {
        if let Some(limit) = max_open.filter(|&l| before.is_none() && open >= l) {
            return Err(ConflictableTransactionError::Abort(StoreError::QueueFull {
                open,
                limit,
            }));
        }
        open + 1
    } else {
        open.saturating_sub(1)
    };
    open_jobs.insert(key, &open.to_be_bytes())?;
    Ok(())
}

impl Store {
    // ---- usage -------------------------------------------------------------

    /// A tenant's usage in `period` (`YYYY-MM`); zero when nothing was used.
    pub fn usage(&self, tenant: &TenantId, period: &str) -> Result<Usage, StoreError> {
        let key = scoped_key(tenant, period);
        match self.usage.get(&key)? {
            Some(b) => decode(&key, &b),
            None => Ok(Usage::default()),
        }
    }

    // ---- jobs ------------------------------------------------------------

    pub fn job(&self, tenant: &TenantId, id: &str) -> Result<Option<Job>, StoreError> {
        self.jobs.get(tenant, id)
    }

    pub fn list_jobs(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
        status: Option<JobStatus>,
    ) -> Result<Page<Job>, StoreError> {
        self.jobs
            .list(tenant, page, |j| status.is_none_or(|s| j.status == s))
    }

    /// Creates a job together with the first entry of its event log. A
    /// translation job is counted in its month's usage in the same
    /// transaction, and refused with `LimitReached` when `limit` is full;
    /// any job is refused with `QueueFull` when the tenant already has
    /// `max_open` jobs queued or running.
    pub async fn create_job(
        &self,
        tenant: &TenantId,
        job: &Job,
        kind: EventType,
        limit: Option<TranslationLimit>,
        max_open: Option<u64>,
    ) -> Result<Event, StoreError> {
        let rules = NewJob {
            limit,
            max_open,
            callback: None,
        };
        self.create_job_announced(tenant, job, kind, rules, Box::new(|_| {}))
            .await
    }

    /// [`Store::create_job`] under `rules`, calling `announce` with the
    /// job's first event on the flushing thread once it is durable, before
    /// this answers (see `commit`): the service announces `queued` there,
    /// as the job actors announce their events, rather than after this
    /// caller's task is woken again, which under load waits behind every
    /// other ready task.
    pub async fn create_job_announced(
        &self,
        tenant: &TenantId,
        job: &Job,
        kind: EventType,
        rules: NewJob<'_>,
        announce: Box<dyn FnOnce(Event) + Send>,
    ) -> Result<Event, StoreError> {
        let created = self
            .flushed_transition(
                tenant,
                &job.id,
                Some(job.clone()),
                kind,
                rules,
                |_| true,
                Some(announce),
            )
            .await?;
        created.map(|(_, event)| event).ok_or(StoreError::NotFound)
    }

    /// Changes a job and appends the event that announces the change, in
    /// one transaction, flushed before it returns: a state change is durable
    /// before anyone hears of it, and the log has no gaps. `change` answers
    /// `false` to leave the job alone (no event then). `insert` creates the
    /// row when it does not exist yet.
    ///
    /// Usage is metered here, in the same transaction: a job that
    /// completes adds its audio seconds and counts as a job of its kind in
    /// the month it completes. (Translation jobs count when created, see
    /// `create_job`.)
    pub async fn transition_job(
        &self,
        tenant: &TenantId,
        id: &str,
        insert: Option<Job>,
        kind: EventType,
        change: impl FnMut(&mut Job) -> bool,
    ) -> Result<Option<(Job, Event)>, StoreError> {
        self.flushed_transition(tenant, id, insert, kind, NewJob::default(), change, None)
            .await
    }

    /// [`Store::commit_transition`], then a flush (when something was
    /// written) before it answers; `announce`, if any, is called with the
    /// event on the flushing thread once the flush succeeds.
    #[allow(clippy::too_many_arguments)]
    async fn flushed_transition(
        &self,
        tenant: &TenantId,
        id: &str,
        insert: Option<Job>,
        kind: EventType,
        rules: NewJob<'_>,
        change: impl FnMut(&mut Job) -> bool,
        announce: Option<Box<dyn FnOnce(Event) + Send>>,
    ) -> Result<Option<(Job, Event)>, StoreError> {
        let (outcome, enqueued) =
            self.commit_transition(tenant, id, insert, kind, rules, change)?;
        let Some((_, event)) = &outcome else {
            return Ok(None);
        };
        if let Some(announce) = announce {
            let durable = event.clone();
            self.commit.then(Box::new(move |flushed| {
                if flushed.is_ok() {
                    announce(durable);
                }
            }));
        }
        self.flush().await?;
        if enqueued > 0 {
            self.outbox_signal.notify_one();
        }
        Ok(outcome)
    }

    /// [`Store::transition_job`] of an existing job without waiting for
    /// the flush: answers once the change is committed (readers see it; a
    /// crash may still lose it) and calls `then` with its event once a
    /// flush has made it durable, after the callbacks registered before it
    /// (see `commit`). The job actors announce events this way.
    pub fn transition_job_then(
        &self,
        tenant: &TenantId,
        id: &str,
        kind: EventType,
        change: impl FnMut(&mut Job) -> bool,
        then: Box<dyn FnOnce(Result<Event, StoreError>) + Send>,
    ) -> Result<Option<Job>, StoreError> {
        let (outcome, enqueued) =
            self.commit_transition(tenant, id, None, kind, NewJob::default(), change)?;
        let Some((job, event)) = outcome else {
            return Ok(None);
        };
        let signal = (enqueued > 0).then(|| self.outbox_signal.clone());
        self.commit.then(Box::new(move |durable| match durable {
            Ok(()) => {
                if let Some(signal) = signal {
                    signal.notify_one();
                }
                then(Ok(event));
            }
            Err(why) => then(Err(StoreError::Io(std::io::Error::other(why.to_string())))),
        }));
        Ok(Some(job))
    }

    /// The transaction of [`Store::transition_job`], not flushed; answers its
    /// outcome and how many webhook deliveries it wrote.
    fn commit_transition(
        &self,
        tenant: &TenantId,
        id: &str,
        insert: Option<Job>,
        kind: EventType,
        NewJob {
            limit,
            max_open,
            callback,
        }: NewJob<'_>,
        change: impl FnMut(&mut Job) -> bool,
    ) -> Result<(Option<(Job, Event)>, usize), StoreError> {
        let key = scoped_key(tenant, id);
        let seal = self.jobs.seal(tenant)?;
        // Deliveries the event owes go in its transaction (see `webhooks`).
        let subscribers = self.subscribers(tenant, kind)?;
        // sled retries transactions through an `Fn`: lend it the closure.
        let change = std::cell::RefCell::new(change);
        // How many deliveries the transaction (its last run) wrote.
        let enqueued = std::cell::Cell::new(0);
        // Nine trees: as many as sled's transactions take.
        let outcome = (
            self.jobs.tree(),
            &self.event_seq,
            &self.events,
            &self.usage,
            self.files.tree(),
            &self.open_jobs,
            &self.job_callbacks,
            &self.outbox,
            &self.outbox_due,
        )
            .transaction(|(jobs, seqs, events, usage, files, open, cbs, out, due)| {
                let before: Option<Job> = match jobs.get(&key)? {
                    Some(bytes) => Some(
                        seal.decode(&key, &bytes)
                            .map_err(ConflictableTransactionError::Abort)?,
                    ),
                    None => None,
                };
                let mut job: Job = match (&before, &insert) {
                    (Some(job), _) | (None, Some(job)) => job.clone(),
                    (None, None) => return Ok(None),
                };
                if !(change.borrow_mut())(&mut job) {
                    return Ok(None);
                }
                meter(tenant, before.as_ref(), &job, limit, usage, files, &seal)?;
                count_open(tenant, before.as_ref(), &job, max_open, open)?;
                let seq = match seqs.get(&key)? {
                    Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])) + 1,
                    None => 1,
                };
                let mut event = Event::of(&job, kind);
                event.seq = seq;
                event.attempt = matches!(kind, EventType::Started | EventType::Retrying)
                    .then_some(job.attempts);
                jobs.insert(key.as_slice(), seal.encode(&key, &job))?;
                seqs.insert(key.as_slice(), &seq.to_be_bytes())?;
                let event_key = event_key(tenant, id, seq);
                events.insert(event_key.as_slice(), seal.encode(&event_key, &event))?;
                if let Some(cb) = callback.filter(|_| before.is_none()) {
                    cbs.insert(key.as_slice(), seal.encode(&key, cb))?;
                }
                enqueued.set(0);
                if let Some(subscribers) = &subscribers {
                    enqueued.set(webhooks::enqueue(
                        tenant,
                        &job,
                        &event,
                        subscribers,
                        cbs,
                        out,
                        due,
                        &seal,
                    )?);
                }
                Ok(Some((job, event)))
            })
            .map_err(tx_error)?;
        Ok((outcome, enqueued.get()))
    }

    /// Events of a job with `seq > after`, oldest first, at most `limit`.
    pub fn events_after(
        &self,
        tenant: &TenantId,
        job_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let start = event_key(tenant, job_id, after.saturating_add(1));
        let end = event_key(tenant, job_id, u64::MAX);
        let seal = self.jobs.opener(tenant)?;
        let mut out = Vec::new();
        for item in self.events.range(start..=end).take(limit) {
            let (key, bytes) = item?;
            let mut event: Event = seal.decode(&key, &bytes)?;
            event.tenant_id = tenant.as_str().to_string();
            out.push(event);
        }
        Ok(out)
    }

    /// Counts every tenant's queued or running jobs afresh (at open), so
    /// the counts kept by `transition` start right whatever came before.
    pub(super) fn recount_open_jobs(&self) -> Result<(), StoreError> {
        let mut counts: std::collections::HashMap<String, u64> = Default::default();
        for job in self.unfinished_jobs()? {
            *counts.entry(job.tenant_id).or_default() += 1;
        }
        self.open_jobs.clear()?;
        for (tenant, n) in counts {
            self.open_jobs.insert(tenant.as_bytes(), &n.to_be_bytes())?;
        }
        Ok(())
    }

    /// Queued or running jobs of a tenant, as counted for its queue bound.
    pub fn open_jobs(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        Ok(match self.open_jobs.get(tenant.as_str())? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
            None => 0,
        })
    }

    /// Every queued or running job of every tenant, oldest first (start-up
    /// recovery only).
    pub fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        for item in self.jobs.tree().iter() {
            let (key, bytes) = item?;
            let job: Job = self.keyring.rows_for_key(&key)?.decode(&key, &bytes)?;
            if !job.status.is_finished() {
                jobs.push(job);
            }
        }
        jobs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(jobs)
    }

    /// Ids of one tenant's queued and running jobs, in one scan.
    pub fn unfinished_job_ids(&self, tenant: &TenantId) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        self.jobs.for_each(tenant, |j| {
            if !j.status.is_finished() {
                ids.push(j.id);
            }
        })?;
        Ok(ids)
    }

    /// Applies `change` to a job atomically (compare-and-swap) and flushes.
    /// `change` may run more than once under contention and returns `false`
    /// to leave the job as it is. Answers the job as stored afterwards.
    pub async fn update_job(
        &self,
        tenant: &TenantId,
        id: &str,
        change: impl FnMut(&mut Job) -> bool,
    ) -> Result<Option<Job>, StoreError> {
        let job = self.jobs.update(tenant, id, change)?;
        self.flush().await?;
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::job;
    use super::*;
    use chrono::Utc;
    use murmur_actors::params::JobParams;

    /// A new job's first event is announced once, before its creation
    /// answers, and it is the event written; a refused job announces nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_created_job_is_announced_before_creation_answers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = TenantId::trusted("t1");
        let heard = Arc::new(std::sync::Mutex::new(Vec::<Event>::new()));
        let announce = |heard: &Arc<std::sync::Mutex<Vec<Event>>>| {
            let heard = heard.clone();
            Box::new(move |e: Event| heard.lock().unwrap().push(e)) as Box<dyn FnOnce(Event) + Send>
        };
        let params = JobParams::defaults("base");
        let rules = NewJob {
            max_open: Some(1),
            ..NewJob::default()
        };
        let event = store
            .create_job_announced(
                &t,
                &job(&t, "j1", params.clone()),
                EventType::Queued,
                rules,
                announce(&heard),
            )
            .await
            .unwrap();
        {
            let heard = heard.lock().unwrap();
            assert_eq!(heard.len(), 1);
            assert_eq!((heard[0].seq, heard[0].kind), (1, EventType::Queued));
            assert_eq!(heard[0].job_id, "j1");
            assert_eq!(heard[0].at, event.at);
        }
        let refused = store
            .create_job_announced(
                &t,
                &job(&t, "j2", params),
                EventType::Queued,
                rules,
                announce(&heard),
            )
            .await;
        assert!(matches!(refused, Err(StoreError::QueueFull { .. })));
        // A later flush runs every callback due: none was left for j2.
        store.flush().await.unwrap();
        assert_eq!(heard.lock().unwrap().len(), 1);
    }

    /// A file recorded with a header's 1 s whose job decoded 700 s counts
    /// 700 s: usage follows what the engine decoded.
    #[tokio::test]
    async fn usage_is_metered_from_the_decoded_length() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = TenantId::trusted("t1");
        let file = FileRecord {
            id: "f1".into(),
            name: "old.flac".into(),
            path: "files/t1/f1".into(),
            size: 10,
            duration_s: Some(1.0),
            content_type: None,
            user_id: "u1".into(),
            tenant_id: "t1".into(),
            created_at: Utc::now(),
        };
        store.put_file(&t, &file).await.unwrap();
        let vad = JobParams::merged(
            &JobParams::defaults("base"),
            &serde_json::json!({"job_type": "vad"}),
        )
        .unwrap();
        store
            .create_job(&t, &job(&t, "j1", vad), EventType::Queued, None, None)
            .await
            .unwrap();
        store
            .transition_job(&t, "j1", None, EventType::Completed, |j| {
                j.status = JobStatus::Completed;
                j.finished_at = Some(Utc::now());
                j.result = Some(serde_json::json!({"duration_s": 700.0, "speech": []}));
                true
            })
            .await
            .unwrap();
        let u = store.usage(&t, &usage_period(Utc::now())).unwrap();
        assert_eq!(u.audio_seconds, 700.0);
    }

    #[tokio::test]
    async fn usage_is_metered_with_the_jobs_it_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = TenantId::trusted("t1");
        let file = FileRecord {
            id: "f1".into(),
            name: "a.wav".into(),
            path: "files/t1/f1".into(),
            size: 10,
            duration_s: Some(2.5),
            content_type: None,
            user_id: "u1".into(),
            tenant_id: "t1".into(),
            created_at: Utc::now(),
        };
        store.put_file(&t, &file).await.unwrap();
        let base = JobParams::defaults("base");
        let translate =
            JobParams::merged(&base, &serde_json::json!({"task": "translate"})).unwrap();
        let limit = Some(TranslationLimit { per_month: 1 });
        store
            .create_job(
                &t,
                &job(&t, "j1", translate.clone()),
                EventType::Queued,
                limit,
                None,
            )
            .await
            .unwrap();
        let refused = store
            .create_job(
                &t,
                &job(&t, "j2", translate),
                EventType::Queued,
                limit,
                None,
            )
            .await;
        assert!(matches!(
            refused,
            Err(StoreError::LimitReached {
                used: 1,
                limit: 1,
                ..
            })
        ));
        assert!(store.job(&t, "j2").unwrap().is_none(), "nothing written");
        // Completing counts once, however often it is reported.
        for _ in 0..2 {
            store
                .transition_job(&t, "j1", None, EventType::Completed, |j| {
                    j.status = JobStatus::Completed;
                    j.finished_at = Some(Utc::now());
                    true
                })
                .await
                .unwrap();
        }
        let u = store.usage(&t, &usage_period(Utc::now())).unwrap();
        assert_eq!(u.translation_jobs, 1);
        assert_eq!(u.jobs, 1);
        assert_eq!(u.jobs_by_kind.get("transcription"), Some(&1));
        assert!((u.audio_seconds - 2.5).abs() < 1e-9);
        let other = store
            .usage(&TenantId::trusted("t2"), &usage_period(Utc::now()))
            .unwrap();
        assert_eq!(other, Usage::default());
    }

    #[tokio::test]
    async fn open_jobs_are_bounded_per_tenant_and_recounted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (TenantId::trusted("ta"), TenantId::trusted("tb"));
        let params = JobParams::defaults("base");
        for i in 0..2 {
            store
                .create_job(
                    &a,
                    &job(&a, &format!("j{i}"), params.clone()),
                    EventType::Queued,
                    None,
                    Some(2),
                )
                .await
                .unwrap();
        }
        let refused = store
            .create_job(
                &a,
                &job(&a, "j2", params.clone()),
                EventType::Queued,
                None,
                Some(2),
            )
            .await;
        assert!(matches!(
            refused,
            Err(StoreError::QueueFull { open: 2, limit: 2 })
        ));
        assert!(store.job(&a, "j2").unwrap().is_none(), "nothing written");
        // Another tenant's queue is its own.
        store
            .create_job(
                &b,
                &job(&b, "j0", params.clone()),
                EventType::Queued,
                None,
                Some(2),
            )
            .await
            .unwrap();
        // A job that ends makes room.
        store
            .transition_job(&a, "j0", None, EventType::Cancelled, |j| {
                j.status = JobStatus::Cancelled;
                true
            })
            .await
            .unwrap();
        assert_eq!(store.open_jobs(&a).unwrap(), 1);
        store
            .create_job(&a, &job(&a, "j2", params), EventType::Queued, None, Some(2))
            .await
            .unwrap();
        assert_eq!(store.open_jobs(&a).unwrap(), 2);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.open_jobs(&a).unwrap(), 2);
        assert_eq!(store.open_jobs(&b).unwrap(), 1);
    }
}
