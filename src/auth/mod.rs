//! Who is calling: password hashing, biscuit tokens, API keys, roles.

pub mod forge;
pub mod limits;
pub mod passwords;
pub mod tokens;

pub use limits::AuthLimits;
pub use passwords::PasswordCost;
pub use tokens::{Operation, Principal, TokenError, TokenKeys, OPERATIONS, SCOPES};

use crate::billing::Tier;
use crate::store::{Tenant, TenantId};

/// A verified caller with its tenant's current row and tier.
#[derive(Clone)]
pub struct Caller {
    pub principal: Principal,
    pub tenant: Tenant,
    /// The tenant's tier now (the store's, not the token's, when they differ).
    pub tier: Tier,
}

impl Caller {
    pub fn tenant_id(&self) -> &TenantId {
        &self.principal.tenant
    }
}
