//! The retention sweep: every `store.retention_sweep_seconds`, each
//! tenant's finished jobs (results, event logs, stems) and uploads older
//! than its current tier's `retention_days` are deleted. Tiers without
//! `retention_days` keep everything until the tenant deletes it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::billing::TierTable;
use crate::store::Store;

/// One pass over every tenant; answers jobs and files deleted.
pub async fn sweep_once(store: &Store, tiers: &TierTable) -> (usize, usize) {
    let tenants = match store.tenant_ids() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "retention sweep cannot list tenants");
            return (0, 0);
        }
    };
    let (mut jobs, mut files) = (0, 0);
    for id in tenants {
        let Ok(tenant) = store.tenant(&id) else {
            continue;
        };
        let tier = tiers.get_or_default(&tenant.subscription_tier);
        let Some(days) = tier.retention_days else {
            continue;
        };
        let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
        match store.expire(&id, cutoff).await {
            Ok((j, f)) => {
                if j + f > 0 {
                    tracing::info!(tenant = %id, jobs = j, files = f, days, "retention: deleted");
                }
                jobs += j;
                files += f;
            }
            Err(e) => tracing::warn!(tenant = %id, error = %e, "retention sweep failed"),
        }
    }
    (jobs, files)
}

/// Runs [`sweep_once`] every `every` on `tasks` until `stop`.
pub fn spawn(
    store: Store,
    tiers: Arc<TierTable>,
    every: Duration,
    tasks: &TaskTracker,
    stop: CancellationToken,
) {
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            sweep_once(&store, &tiers).await;
        }
    });
}
