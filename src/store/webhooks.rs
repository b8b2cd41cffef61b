//! Webhook endpoints, job callbacks and the durable outbox of deliveries.
//!
//! A job event that endpoints subscribe to is turned into outbox rows in
//! the same transaction that writes the event (see `Store::transition_job`):
//! once a state change is durable, so is every delivery it owes, and a
//! crash cannot lose one. The delivery worker (`crate::webhooks`) takes due
//! rows from `outbox_due` (ordered by due time), sends them, and removes or
//! reschedules them with the attempt written to the endpoint's delivery
//! log, again in one transaction. A crash after a receiver answered and
//! before that transaction means one more delivery with the same
//! `webhook-id`: delivery is at least once, and receivers deduplicate by
//! that id (the Standard Webhooks contract).
//!
//! Limits: the endpoints are read just before the transaction, so an
//! endpoint created while an event is being written may miss that event;
//! one deleted meanwhile is skipped when its delivery comes due.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sled::transaction::TransactionalTree;
use sled::Transactional;

use super::keyring::RowSeal;
use super::{scoped_key, tx_error, Event, EventType, Job, Store, StoreError, TenantId, TxResult};

/// The job events a webhook can subscribe to, as named in deliveries.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "job.queued",
    "job.started",
    "job.completed",
    "job.failed",
    "job.cancelled",
];

/// The delivered name of an event kind, when deliveries announce it.
pub fn webhook_event_name(kind: EventType) -> Option<&'static str> {
    Some(match kind {
        EventType::Queued => "job.queued",
        EventType::Started => "job.started",
        EventType::Completed => "job.completed",
        EventType::Failed => "job.failed",
        EventType::Cancelled => "job.cancelled",
        _ => return None,
    })
}

/// A tenant's registered endpoint. Sealed at rest (it holds the secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Webhook {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub url: String,
    /// Subscribed names from [`WEBHOOK_EVENTS`].
    pub events: Vec<String>,
    pub description: Option<String>,
    /// `whsec_` + base64 of the signing key; shown once, at creation.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

/// A job's own `callback_url` and the secret its deliveries are signed
/// with (answered once, when the job is created).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobCallback {
    pub url: String,
    pub secret: String,
}

/// Where a delivery goes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryTarget {
    Webhook(String),
    Callback(String),
}

/// One message owed to one endpoint: an outbox row. Sealed at rest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    /// The `webhook-id` header: the same on every attempt.
    pub id: String,
    pub tenant_id: String,
    pub target: DeliveryTarget,
    /// Where and how it is signed, as they were when the event happened
    /// (a webhook deleted since is skipped; see the module docs).
    pub url: String,
    pub secret: String,
    pub event_type: String,
    pub job_id: String,
    /// The body, exactly as signed and sent.
    pub payload: String,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
}

/// One attempt, as the endpoint's delivery log shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeliveryAttempt {
    pub id: String,
    pub delivery_id: String,
    pub event_type: String,
    pub job_id: String,
    pub attempt: u32,
    /// The receiver's status code, when it answered.
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// `delivered`, `retrying` or `failed` (given up).
    pub outcome: String,
    pub duration_ms: u64,
    pub at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The webhook body for `event` of `job` (Standard Webhooks' shape:
/// `type`, `timestamp`, `data`). `None` for events not delivered.
pub fn event_payload(job: &Job, event: &Event) -> Option<(&'static str, String)> {
    let name = webhook_event_name(event.kind)?;
    let body = serde_json::json!({
        "type": name,
        "timestamp": event.at,
        "data": {
            "job_id": job.id,
            "status": job.status,
            "job_type": job.job_type,
            "file_id": job.file_id,
            "workflow_id": job.workflow_id,
            "seq": event.seq,
            "attempt": event.attempt,
            "error": job.error,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
        }
    });
    Some((name, body.to_string()))
}

/// Key of a row in `outbox_due`: due time (ms, big-endian) then the
/// outbox key, so a range scan from the start finds what is due.
fn due_key(at: DateTime<Utc>, outbox_key: &[u8]) -> Vec<u8> {
    let ms = at.timestamp_millis().max(0) as u64;
    let mut key = ms.to_be_bytes().to_vec();
    key.extend_from_slice(outbox_key);
    key
}

/// Key of an attempt in the delivery log: per endpoint, in time order.
fn log_key(tenant: &str, endpoint: &str, attempt_id: &str) -> Vec<u8> {
    format!("{tenant}/{endpoint}/{attempt_id}").into_bytes()
}

/// What `transition` needs to write deliveries: the endpoints subscribed
/// to the event, read before its transaction.
pub(super) struct Subscribers {
    pub webhooks: Vec<Webhook>,
    /// Delivery ids made up front: a transaction may run more than once.
    pub ids: Vec<String>,
}

/// Writes the outbox rows `event` owes (webhooks subscribed to it and the
/// job's callback), inside `transition`'s transaction. Answers how many.
#[allow(clippy::too_many_arguments)]
pub(super) fn enqueue(
    tenant: &TenantId,
    job: &Job,
    event: &Event,
    subscribers: &Subscribers,
    callbacks: &TransactionalTree,
    outbox: &TransactionalTree,
    due: &TransactionalTree,
    seal: &RowSeal,
) -> TxResult<usize> {
    let Some((name, payload)) = event_payload(job, event) else {
        return Ok(0);
    };
    let job_key = scoped_key(tenant, &job.id);
    let callback: Option<JobCallback> = match callbacks.get(&job_key)? {
        Some(b) => Some(
            seal.decode(&job_key, &b)
                .map_err(sled::transaction::ConflictableTransactionError::Abort)?,
        ),
        None => None,
    };
    let targets = subscribers
        .webhooks
        .iter()
        .filter(|w| w.events.iter().any(|e| e == name))
        .map(|w| (DeliveryTarget::Webhook(w.id.clone()), &w.url, &w.secret))
        .chain(
            callback
                .iter()
                .map(|c| (DeliveryTarget::Callback(job.id.clone()), &c.url, &c.secret)),
        );
    let now = Utc::now();
    let mut n = 0;
    for ((target, url, secret), id) in targets.zip(&subscribers.ids) {
        let delivery = Delivery {
            id: id.clone(),
            tenant_id: tenant.as_str().to_string(),
            target,
            url: url.clone(),
            secret: secret.clone(),
            event_type: name.to_string(),
            job_id: job.id.clone(),
            payload: payload.clone(),
            attempts: 0,
            created_at: now,
            next_attempt_at: now,
        };
        let key = scoped_key(tenant, id);
        outbox.insert(key.as_slice(), seal.encode(&key, &delivery))?;
        due.insert(due_key(now, &key), &[])?;
        n += 1;
    }
    Ok(n)
}

impl Store {
    /// Endpoints subscribed to `kind` events of `tenant`, with delivery ids
    /// for them and a job callback (`None` when nothing can be owed).
    pub(super) fn subscribers(
        &self,
        tenant: &TenantId,
        kind: EventType,
    ) -> Result<Option<Subscribers>, StoreError> {
        let Some(name) = webhook_event_name(kind) else {
            return Ok(None);
        };
        let mut webhooks = Vec::new();
        self.webhooks.for_each(tenant, |w: Webhook| {
            if w.events.iter().any(|e| e == name) {
                webhooks.push(w);
            }
        })?;
        // One id per webhook, and one for a callback the job may have.
        let ids = (0..=webhooks.len())
            .map(|_| crate::ids::new_id("msg"))
            .collect();
        Ok(Some(Subscribers { webhooks, ids }))
    }

    /// Wakes the delivery worker (new rows are due now).
    pub fn outbox_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.outbox_signal.clone()
    }

    // ---- endpoints ---------------------------------------------------------

    pub async fn put_webhook(&self, tenant: &TenantId, hook: &Webhook) -> Result<(), StoreError> {
        self.webhooks.put(tenant, &hook.id, hook)?;
        self.flush().await
    }

    pub fn webhook(&self, tenant: &TenantId, id: &str) -> Result<Option<Webhook>, StoreError> {
        self.webhooks.get(tenant, id)
    }

    pub fn list_webhooks(
        &self,
        tenant: &TenantId,
        page: &super::PageRequest,
    ) -> Result<super::Page<Webhook>, StoreError> {
        self.webhooks.list(tenant, page, |_| true)
    }

    pub fn count_webhooks(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let mut n = 0;
        self.webhooks.for_each(tenant, |_| n += 1)?;
        Ok(n)
    }

    /// Removes an endpoint and its delivery log. Deliveries it still owed
    /// are dropped when they come due.
    pub async fn delete_webhook(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let found = self.webhooks.remove(tenant, id)?.is_some();
        if found {
            let prefix = log_key(tenant.as_str(), id, "");
            for key in self.delivery_log.scan_prefix(&prefix).keys() {
                self.delivery_log.remove(key?)?;
            }
            self.flush().await?;
        }
        Ok(found)
    }

    /// The newest `limit` attempts to one of the tenant's endpoints,
    /// newest first.
    pub fn delivery_attempts(
        &self,
        tenant: &TenantId,
        endpoint: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryAttempt>, StoreError> {
        let prefix = log_key(tenant.as_str(), endpoint, "");
        let seal = self.webhooks.opener(tenant)?;
        let mut out = Vec::new();
        for item in self.delivery_log.scan_prefix(&prefix).rev().take(limit) {
            let (key, bytes) = item?;
            out.push(seal.decode(&key, &bytes)?);
        }
        Ok(out)
    }

    // ---- the outbox ----------------------------------------------------------

    /// Outbox rows due at `now`, soonest first, at most `limit`. Index
    /// entries whose row is gone (delivered, tenant deleted) are removed.
    pub fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let end = due_key(now, &[0xff]);
        let mut out = Vec::new();
        for item in self.outbox_due.range(..end) {
            let (key, _) = item?;
            let outbox_key = &key[8..];
            let Some(bytes) = self.outbox.get(outbox_key)? else {
                self.outbox_due.remove(&key)?;
                continue;
            };
            let delivery: Delivery = match self
                .keyring
                .rows_for_key(outbox_key)
                .and_then(|seal| seal.decode(outbox_key, &bytes))
            {
                Ok(d) => d,
                Err(e) => {
                    // Unreadable (its tenant's key is gone): nothing can
                    // be sent, and it must not block the queue.
                    tracing::warn!(error = %e, "dropping an unreadable outbox row");
                    self.outbox.remove(outbox_key)?;
                    self.outbox_due.remove(&key)?;
                    continue;
                }
            };
            // A row rescheduled later than this index entry says.
            if due_key(delivery.next_attempt_at, outbox_key) != key.as_ref() {
                self.outbox_due.remove(&key)?;
                continue;
            }
            out.push(delivery);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// When the next outbox row comes due, if any.
    pub fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(match self.outbox_due.first()? {
            Some((key, _)) => {
                let ms = u64::from_be_bytes(key[..8].try_into().unwrap_or([0; 8]));
                DateTime::<Utc>::from_timestamp_millis(ms as i64)
            }
            None => None,
        })
    }

    /// Records an attempt of `delivery`: with `next` the row is kept and
    /// due again then, without it the row leaves the outbox (delivered or
    /// given up). The endpoint's log keeps its newest `log_limit` attempts.
    ///
    /// Not flushed here: the worker flushes once per batch. A record lost
    /// to a crash before that only means the message is sent again, which
    /// at-least-once delivery allows; one fsync per attempt would cap
    /// deliveries at the disk's flush rate.
    pub fn record_delivery(
        &self,
        delivery: &Delivery,
        attempt: &DeliveryAttempt,
        next: Option<DateTime<Utc>>,
        log_limit: usize,
    ) -> Result<(), StoreError> {
        let tenant = TenantId::trusted(&delivery.tenant_id);
        let key = scoped_key(&tenant, &delivery.id);
        let seal = self.webhooks.seal(&tenant)?;
        let endpoint = match &delivery.target {
            DeliveryTarget::Webhook(id) => id.clone(),
            DeliveryTarget::Callback(job) => job.clone(),
        };
        let log = log_key(tenant.as_str(), &endpoint, &attempt.id);
        // A deleted job's callback is still served, but its log went with
        // the job: write none that nothing would ever remove.
        let keep_log = match &delivery.target {
            DeliveryTarget::Webhook(_) => true,
            DeliveryTarget::Callback(job) => {
                self.jobs.tree().contains_key(scoped_key(&tenant, job))?
            }
        };
        let old_due = due_key(delivery.next_attempt_at, &key);
        (&self.outbox, &self.outbox_due, &self.delivery_log)
            .transaction(|(outbox, due, logs)| {
                if outbox.get(&key)?.is_none() {
                    // Deleted meanwhile (tenant gone): write nothing.
                    return Ok(());
                }
                due.remove(old_due.as_slice())?;
                match next {
                    Some(at) => {
                        let mut d = delivery.clone();
                        d.attempts = attempt.attempt;
                        d.next_attempt_at = at;
                        outbox.insert(key.as_slice(), seal.encode(&key, &d))?;
                        due.insert(due_key(at, &key), &[])?;
                    }
                    None => {
                        outbox.remove(key.as_slice())?;
                    }
                }
                if keep_log {
                    logs.insert(log.as_slice(), seal.encode(&log, attempt))?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        // Bound the log: drop the oldest beyond the limit.
        let prefix = log_key(tenant.as_str(), &endpoint, "");
        let keys: Vec<sled::IVec> = self
            .delivery_log
            .scan_prefix(&prefix)
            .keys()
            .collect::<Result<_, _>>()?;
        for old in keys.iter().take(keys.len().saturating_sub(log_limit)) {
            self.delivery_log.remove(old)?;
        }
        Ok(())
    }

    /// Drops a delivery whose endpoint is gone, without an attempt (not
    /// flushed, as [`Store::record_delivery`]).
    pub fn drop_delivery(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let tenant = TenantId::trusted(&delivery.tenant_id);
        let key = scoped_key(&tenant, &delivery.id);
        self.outbox.remove(&key)?;
        self.outbox_due
            .remove(due_key(delivery.next_attempt_at, &key))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewJob;
    use murmur_actors::job::JobStatus;
    use murmur_actors::params::JobParams;

    fn hook(tenant: &TenantId, id: &str, events: &[&str]) -> Webhook {
        Webhook {
            id: id.into(),
            tenant_id: tenant.as_str().into(),
            user_id: "u1".into(),
            url: format!("https://{id}.example/hook"),
            events: events.iter().map(|e| e.to_string()).collect(),
            description: None,
            secret: "whsec_AAAA".into(),
            created_at: Utc::now(),
        }
    }

    fn job(tenant: &TenantId, id: &str) -> Job {
        super::super::tests::job(tenant, id, JobParams::defaults("base"))
    }

    /// Deliveries are written with the event that owes them, to the
    /// subscribed endpoints of the job's own tenant only, sealed; events
    /// nobody subscribes to owe nothing; a delivered row leaves the outbox.
    #[tokio::test]
    async fn events_owe_deliveries_to_their_own_tenants_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (TenantId::trusted("ta"), TenantId::trusted("tb"));
        store
            .put_webhook(&a, &hook(&a, "wh_all", WEBHOOK_EVENTS))
            .await
            .unwrap();
        store
            .put_webhook(&a, &hook(&a, "wh_done", &["job.completed"]))
            .await
            .unwrap();
        store
            .put_webhook(&b, &hook(&b, "wh_b", WEBHOOK_EVENTS))
            .await
            .unwrap();
        let callback = JobCallback {
            url: "https://cb.example/".into(),
            secret: "whsec_BBBB".into(),
        };
        store
            .create_job_announced(
                &a,
                &job(&a, "j1"),
                EventType::Queued,
                NewJob {
                    callback: Some(&callback),
                    ..NewJob::default()
                },
                Box::new(|_| {}),
            )
            .await
            .unwrap();
        let due = store.due_deliveries(Utc::now(), 100).unwrap();
        let mut targets: Vec<_> = due.iter().map(|d| d.target.clone()).collect();
        targets.sort_by_key(|t| format!("{t:?}"));
        assert_eq!(
            targets,
            [
                DeliveryTarget::Callback("j1".into()),
                DeliveryTarget::Webhook("wh_all".into()),
            ]
        );
        assert!(due
            .iter()
            .all(|d| d.tenant_id == "ta" && d.event_type == "job.queued"));
        // Sealed at rest: no URL or payload in the clear.
        for item in store.outbox.iter() {
            let (_, raw) = item.unwrap();
            let text = String::from_utf8_lossy(&raw);
            assert!(!text.contains("example") && !text.contains("job.queued"));
        }
        // A progress event owes nothing.
        store
            .transition_job(&a, "j1", None, EventType::Progress, |j| {
                j.progress = 0.5;
                true
            })
            .await
            .unwrap();
        assert_eq!(store.due_deliveries(Utc::now(), 100).unwrap().len(), 2);
        // Completion goes to both of A's endpoints and the callback.
        store
            .transition_job(&a, "j1", None, EventType::Completed, |j| {
                j.status = JobStatus::Completed;
                true
            })
            .await
            .unwrap();
        let due = store.due_deliveries(Utc::now(), 100).unwrap();
        assert_eq!(due.len(), 5, "{due:#?}");
        assert!(due.iter().all(|d| d.tenant_id == "ta"));
        // Recording a delivered attempt removes the row and logs it.
        let d = &due[0];
        let attempt = DeliveryAttempt {
            id: "att_1".into(),
            delivery_id: d.id.clone(),
            event_type: d.event_type.clone(),
            job_id: d.job_id.clone(),
            attempt: 1,
            status_code: Some(204),
            error: None,
            outcome: "delivered".into(),
            duration_ms: 3,
            at: Utc::now(),
            next_attempt_at: None,
        };
        store.record_delivery(d, &attempt, None, 10).unwrap();
        assert_eq!(store.due_deliveries(Utc::now(), 100).unwrap().len(), 4);
        // Rescheduling moves a row out of what is due now.
        let later = Utc::now() + chrono::Duration::hours(1);
        let r = &due[1];
        store
            .record_delivery(
                r,
                &DeliveryAttempt {
                    id: "att_2".into(),
                    ..attempt.clone()
                },
                Some(later),
                10,
            )
            .unwrap();
        assert_eq!(store.due_deliveries(Utc::now(), 100).unwrap().len(), 3);
        assert!(store.next_delivery_due().unwrap().is_some());
        // Tenant B's endpoint was never owed anything.
        assert!(store
            .due_deliveries(later + chrono::Duration::hours(1), 100)
            .unwrap()
            .iter()
            .all(|d| d.tenant_id == "ta"));
    }
}
