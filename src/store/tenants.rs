//! Tenants and their users' rows, subscriptions and the RevenueCat
//! events that change them.

use super::*;

/// What a subscription change decided: the tier to move to (`None` keeps
/// the tenant's tier) and a word for the logs and the event's record.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionChange {
    pub tier: Option<String>,
    pub outcome: String,
}

impl Store {
    // ---- tenants and users ------------------------------------------------

    /// Creates a tenant with its first user in one transaction; fails with
    /// `Conflict` if the email is taken.
    pub async fn create_tenant(&self, tenant: &Tenant, owner: &User) -> Result<(), StoreError> {
        let email = owner.email.to_lowercase();
        let tid = TenantId::trusted(&tenant.id);
        // The tenant's data key is made with it.
        let (data_key, key_record) = self.keyring.new_tenant_key(&tenant.id);
        (
            &self.tenants,
            &self.emails,
            self.users.tree(),
            self.keyring.tree(),
        )
            .transaction(|(tenants, emails, users, keys)| {
                if emails.get(email.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(StoreError::Conflict(
                        "a user with this email already exists".into(),
                    )));
                }
                tenants.insert(tenant.id.as_bytes(), encode(tenant))?;
                let key = scoped_key(&tid, &owner.id);
                emails.insert(email.as_bytes(), key.clone())?;
                users.insert(key, encode(owner))?;
                keys.insert(tenant.id.as_bytes(), key_record.as_slice())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.keyring.remember(&tenant.id, data_key);
        self.flush().await
    }

    pub fn tenant(&self, tenant: &TenantId) -> Result<Tenant, StoreError> {
        let bytes = self
            .tenants
            .get(tenant.as_str())?
            .ok_or(StoreError::NotFound)?;
        decode(tenant.as_str().as_bytes(), &bytes)
    }

    /// Looks a tenant up by an id an operator typed (admin CLI, benchmarks).
    pub fn tenant_for_operator(&self, id: &str) -> Result<(TenantId, Tenant), StoreError> {
        let tid = TenantId::trusted(id);
        let tenant = self.tenant(&tid)?;
        Ok((tid, tenant))
    }

    /// Moves a tenant to `tier` by an operator's decision, bumping its tier
    /// epoch. The tier no longer ends on its own (no expiry); later
    /// RevenueCat events still apply.
    pub async fn set_tier(&self, tenant: &TenantId, tier: &str) -> Result<Tenant, StoreError> {
        let now = chrono::Utc::now();
        let (_, after, _) = self
            .change_subscription(tenant, None, |_, sub| {
                sub.source = Some("admin".into());
                sub.expires_at_ms = None;
                sub.billing_issue = false;
                sub.updated_at = Some(now);
                SubscriptionChange {
                    tier: Some(tier.to_string()),
                    outcome: "set by an operator".into(),
                }
            })
            .await?;
        Ok(after)
    }

    // ---- subscriptions and billing events --------------------------------

    pub fn subscription(&self, tenant: &TenantId) -> Result<Option<Subscription>, StoreError> {
        match self.subscriptions.get(tenant.as_str())? {
            Some(bytes) => decode(tenant.as_str().as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Applies `decide` to a tenant's subscription and, when it names a
    /// different tier, moves the tenant (bumping its tier epoch), in one
    /// transaction that also marks `event_id` applied; flushed before it
    /// returns. Answers the tenant before and after, and the outcome.
    pub async fn change_subscription(
        &self,
        tenant: &TenantId,
        event_id: Option<&str>,
        decide: impl Fn(&Tenant, &mut Subscription) -> SubscriptionChange,
    ) -> Result<(Tenant, Tenant, String), StoreError> {
        let key = tenant.as_str().as_bytes();
        let outcome = (&self.tenants, &self.subscriptions, &self.billing_events)
            .transaction(|(tenants, subs, events)| {
                let Some(bytes) = tenants.get(key)? else {
                    return Err(ConflictableTransactionError::Abort(StoreError::NotFound));
                };
                let before: Tenant =
                    decode(key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                let mut sub: Subscription = match subs.get(key)? {
                    Some(b) => decode(key, &b).map_err(ConflictableTransactionError::Abort)?,
                    None => Subscription::default(),
                };
                let change = decide(&before, &mut sub);
                let mut after = before.clone();
                if let Some(tier) = change
                    .tier
                    .as_ref()
                    .filter(|t| **t != before.subscription_tier)
                {
                    after.subscription_tier = tier.clone();
                    after.tier_epoch += 1;
                }
                after.subscription_id = sub.product_id.clone().or(after.subscription_id);
                if after != before {
                    tenants.insert(key, encode(&after))?;
                }
                subs.insert(key, encode(&sub))?;
                if let Some(id) = event_id {
                    if let Some(b) = events.get(id.as_bytes())? {
                        let mut ev: BillingEvent = decode(id.as_bytes(), &b)
                            .map_err(ConflictableTransactionError::Abort)?;
                        ev.processed = true;
                        ev.outcome = Some(change.outcome.clone());
                        events.insert(id.as_bytes(), encode(&ev))?;
                    }
                }
                Ok((before, after, change.outcome))
            })
            .map_err(tx_error)?;
        self.flush().await?;
        Ok(outcome)
    }

    /// Records a webhook event unless one with its id is already there,
    /// and flushes: once this answers `true` a crash cannot lose it.
    /// `false` means a replay.
    pub async fn record_billing_event(&self, event: &BillingEvent) -> Result<bool, StoreError> {
        let fresh = self
            .billing_events
            .compare_and_swap(event.id.as_bytes(), None::<&[u8]>, Some(encode(event)))?
            .is_ok();
        if fresh {
            self.flush().await?;
        }
        Ok(fresh)
    }

    pub fn billing_event(&self, id: &str) -> Result<Option<BillingEvent>, StoreError> {
        match self.billing_events.get(id.as_bytes())? {
            Some(b) => decode(id.as_bytes(), &b).map(Some),
            None => Ok(None),
        }
    }

    /// Marks an event that changed no tenant (a test, a sandbox event, an
    /// unknown user) as applied.
    pub async fn finish_billing_event(&self, id: &str, outcome: &str) -> Result<(), StoreError> {
        self.billing_events.update_and_fetch(id.as_bytes(), |old| {
            let mut ev: BillingEvent = serde_json::from_slice(old?).ok()?;
            ev.processed = true;
            ev.outcome = Some(outcome.to_string());
            Some(encode(&ev))
        })?;
        self.flush().await
    }

    /// Events received but not applied yet (a crash came between), oldest
    /// first by their own timestamp.
    pub fn unprocessed_billing_events(&self) -> Result<Vec<BillingEvent>, StoreError> {
        let mut out = Vec::new();
        for item in self.billing_events.iter() {
            let (key, bytes) = item?;
            let ev: BillingEvent = decode(&key, &bytes)?;
            if !ev.processed {
                out.push(ev);
            }
        }
        out.sort_by_key(|e| e.event["event_timestamp_ms"].as_i64().unwrap_or(0));
        Ok(out)
    }

    /// Tenants whose paid tier ended before `now_ms` by its expiry time.
    pub fn lapsed_subscriptions(&self, now_ms: i64) -> Result<Vec<TenantId>, StoreError> {
        let mut out = Vec::new();
        for item in self.subscriptions.iter() {
            let (key, bytes) = item?;
            let sub: Subscription = decode(&key, &bytes)?;
            if sub.expires_at_ms.is_some_and(|e| e <= now_ms) {
                out.push(TenantId::trusted(
                    String::from_utf8_lossy(&key).into_owned(),
                ));
            }
        }
        Ok(out)
    }
}
