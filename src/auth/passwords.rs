//! Password hashing with Argon2id. Hashing is deliberately slow, so callers
//! on the async runtime run these through `spawn_blocking`.

use std::cell::RefCell;

use argon2::password_hash::{rand_core::OsRng, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version, ARGON2ID_IDENT};

/// The cost settings, from `[auth]` in the config.
#[derive(Debug, Clone, Copy)]
pub struct PasswordCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

thread_local! {
    /// This thread's Argon2 work memory (19 MiB at the default cost),
    /// reused by every hash the thread computes. A fresh block per hash
    /// left the freed memory with the allocator: 64 parallel logins on two
    /// hashing threads still grew the server by ~230 MiB.
    static WORK: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn hasher(cost: PasswordCost) -> Argon2<'static> {
    let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
        .unwrap_or_else(|_| Params::default());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Argon2 of `password` and `salt` into `out`, in this thread's memory.
fn raw_hash(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    WORK.with(|work| {
        let mut work = work.borrow_mut();
        let need = argon.params().block_count();
        if work.len() < need {
            work.resize(need, Block::default());
        }
        argon.hash_password_into_with_memory(password, salt, out, &mut work[..need])
    })
}

/// A PHC string (`$argon2id$v=19$...`) for storage.
pub fn hash(password: &str, cost: PasswordCost) -> String {
    let salt = SaltString::generate(&mut OsRng);
    let argon = hasher(cost);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_buf)
        .expect("a generated salt decodes");
    let mut out = [0u8; 32];
    raw_hash(&argon, password.as_bytes(), salt_bytes, &mut out)
        .expect("argon2 hashing with valid params cannot fail");
    PasswordHash {
        algorithm: ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params()).expect("argon2 params encode"),
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).expect("a 32-byte output is valid")),
    }
    .to_string()
}

/// Whether `password` matches the stored PHC string (Argon2id). The cost
/// is read from the string itself, so older hashes keep working after a
/// cost change. The comparison is constant-time.
pub fn verify(password: &str, stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    if parsed.algorithm != ARGON2ID_IDENT {
        return false;
    }
    let (Ok(params), Some(salt), Some(expected)) =
        (Params::try_from(&parsed), parsed.salt, parsed.hash)
    else {
        return false;
    };
    let Ok(version) = Version::try_from(parsed.version.unwrap_or(0x13)) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(Algorithm::Argon2id, version, params);
    let mut out = vec![0u8; expected.len()];
    raw_hash(&argon, password.as_bytes(), salt, &mut out).is_ok()
        && Output::new(&out).is_ok_and(|o| o == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes made by the `argon2` crate's own PHC path (as stored before
    /// this module reused its memory) still verify, and ours verify there.
    #[test]
    fn phc_strings_interoperate_with_the_crates_own_hasher() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let cost = PasswordCost {
            memory_kib: 1024,
            iterations: 2,
        };
        let salt = SaltString::generate(&mut OsRng);
        let theirs = hasher(cost)
            .hash_password(b"old password", &salt)
            .unwrap()
            .to_string();
        assert!(verify("old password", &theirs));
        assert!(!verify("old passwords", &theirs));
        let ours = hash("new password", cost);
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"new password", &parsed)
            .is_ok());
    }

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
