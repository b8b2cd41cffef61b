//! Password hashing with Argon2id. Hashing is deliberately slow, so callers
//! on the async runtime run these through `spawn_blocking`.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordVerifier, Version};

/// The cost settings, from `[auth]` in the config.
#[derive(Debug, Clone, Copy)]
pub struct PasswordCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

fn hasher(cost: PasswordCost) -> Argon2<'static> {
    let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
        .unwrap_or_else(|_| Params::default());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A PHC string (`$argon2id$v=19$...`) for storage.
pub fn hash(password: &str, cost: PasswordCost) -> String {
    let salt = SaltString::generate(&mut OsRng);
    hasher(cost)
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with valid params cannot fail")
        .to_string()
}

/// Whether `password` matches the stored PHC string. The cost is read from
/// the string itself, so older hashes keep working after a cost change.
pub fn verify(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let cost = PasswordCost {
            memory_kib: 1024,
            iterations: 1,
        };
        let a = hash("correct horse", cost);
        let b = hash("correct horse", cost);
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$"));
        assert!(verify("correct horse", &a));
        assert!(!verify("wrong horse", &a));
        assert!(!verify("correct horse", "not a phc string"));
    }
}
