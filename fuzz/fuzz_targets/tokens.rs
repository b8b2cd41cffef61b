//! Token checking on hostile strings: [`TokenKeys::check_shape`] and
//! [`TokenKeys::verify`] on arbitrary text, and on a valid login token and a
//! valid API key mutated the way an attacker would (bit flips and byte
//! changes in the decoded token, truncation, appended bytes, changed base64
//! characters).
//!
//! Properties: no panic; no slow input (libFuzzer's `-timeout`); a token that
//! verifies after mutation is still the principal it was minted for (same
//! user, tenant, role and API key), never another one.

#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use murmur::auth::{Operation, Principal, TokenKeys};
use murmur::billing::TierTable;
use murmur::store::{Role, TenantId};

struct Setup {
    _dir: tempfile::TempDir,
    keys: TokenKeys,
    login: String,
    api_key: String,
    /// Revocation id of the API key's scope block: the store's "minted" set.
    scope_block: Vec<u8>,
}

const OP: Operation = Operation {
    name: "jobs:read",
    min_role: Role::Viewer,
};

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        // The signing key is sealed by the store's master key.
        let store = murmur::store::Store::open(&dir.path().join("data")).expect("store");
        let keys = TokenKeys::load_or_create(dir.path(), &store).expect("root key");
        let tiers = TierTable::load("").expect("embedded tiers");
        let tier = tiers.get("basic").expect("basic tier").clone();
        let tenant = TenantId::for_operator("t_fuzz");
        let later = chrono::Utc::now() + chrono::Duration::days(1);
        let login = keys
            .mint_login("u_fuzz", &tenant, Role::Member, &tier, 1, later)
            .expect("mint login");
        let (api_key, ids) = keys
            .mint_api_key(
                "k_fuzz",
                "u_fuzz",
                &tenant,
                Role::Member,
                &tier,
                1,
                &["jobs".to_string()],
                Some(later),
            )
            .expect("mint key");
        let scope_block = hex_decode(ids.last().expect("scope block id"));
        Setup {
            _dir: dir,
            keys,
            login,
            api_key,
            scope_block,
        }
    })
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Verifies `token` with the store's minted-key check stubbed by `setup`.
fn verify(setup: &Setup, token: &str) -> Option<Principal> {
    let _ = setup.keys.check_shape(token);
    setup
        .keys
        .verify(token, OP, |id| Ok(id == setup.scope_block.as_slice()))
        .ok()
}

/// Applies the edits `ops` describes to `token` (base64 of the biscuit).
fn mutate(token: &str, ops: &[u8]) -> String {
    let mut raw = URL_SAFE.decode(token).expect("minted token is base64");
    let mut text_edits: Vec<(usize, u8)> = Vec::new();
    let mut appended_text = String::new();
    let mut chunks = ops.chunks_exact(3);
    for c in &mut chunks {
        let pos = usize::from(u16::from_le_bytes([c[1], c[2]]));
        match c[0] % 6 {
            0 if !raw.is_empty() => {
                let i = pos % raw.len();
                raw[i] ^= 1 << (c[0] >> 5);
            }
            1 if !raw.is_empty() => {
                let i = pos % raw.len();
                raw[i] = c[2];
            }
            2 => raw.push(c[1]),
            3 => raw.truncate(pos % (raw.len() + 1)),
            4 => text_edits.push((pos, c[1])),
            _ => appended_text.push(char::from(c[1] & 0x7f)),
        }
    }
    raw.extend_from_slice(chunks.remainder());
    let mut text = URL_SAFE.encode(&raw).into_bytes();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=";
    for (pos, b) in text_edits {
        if !text.is_empty() {
            let i = pos % text.len();
            text[i] = ALPHABET[usize::from(b) % ALPHABET.len()];
        }
    }
    let mut text = String::from_utf8(text).expect("ASCII");
    text.push_str(&appended_text);
    text
}

fn same_principal(a: &Principal, b: &Principal) -> bool {
    a.user_id == b.user_id
        && a.tenant.as_str() == b.tenant.as_str()
        && a.role == b.role
        && a.api_key_id == b.api_key_id
        && a.token_tier == b.token_tier
        && a.tier_epoch == b.tier_epoch
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            // Arbitrary text: must be refused (nothing but our own mint
            // verifies) without panicking.
            let text = String::from_utf8_lossy(rest);
            if let Some(p) = verify(setup, &text) {
                // Only a byte-exact copy of a minted token can get here.
                let genuine = [&setup.login, &setup.api_key]
                    .iter()
                    .any(|t| t.as_str() == text.trim());
                assert!(genuine, "arbitrary text verified as {}", p.user_id);
            }
        }
        m => {
            let original = if m == 1 { &setup.login } else { &setup.api_key };
            let expected = verify(setup, original).expect("the minted token verifies");
            let mutated = mutate(original, rest);
            if let Some(p) = verify(setup, &mutated) {
                assert!(
                    same_principal(&p, &expected),
                    "a mutated token verified as another principal: {:?} {:?} {:?} {:?}",
                    p.user_id,
                    p.tenant.as_str(),
                    p.role,
                    p.api_key_id
                );
            }
        }
    }
});
