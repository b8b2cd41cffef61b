//! Who is calling: password hashing, biscuit tokens, API keys, roles.

pub mod forge;
pub mod limits;
pub mod passwords;
pub mod tokens;

pub use limits::AuthLimits;
pub use passwords::PasswordCost;
pub use tokens::{Operation, Principal, TokenError, TokenKeys, OPERATIONS, SCOPES};
