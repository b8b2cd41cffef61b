use super::*;
use crate::billing::gates::TierGate;
use crate::billing::Tier;
use crate::store::Store;
use biscuit_auth::builder::BlockBuilder;

const READ: Operation = Operation {
    name: "files:read",
    min_role: Role::Viewer,
};
const WRITE: Operation = Operation {
    name: "files:write",
    min_role: Role::Member,
};

fn tier(name: &str) -> Tier {
    crate::billing::TierTable::load("")
        .unwrap()
        .get(name)
        .unwrap()
        .clone()
}

fn basic() -> Tier {
    tier("basic")
}

#[test]
fn capabilities_follow_the_current_tier_epoch() {
    use crate::billing::Capability;
    let (_d, keys) = new_keys();
    let t = TenantId::trusted("t1");
    let future = Utc::now() + chrono::Duration::hours(1);
    let premium = tier("premium");
    let token = keys
        .mint_login("u1", &t, Role::Owner, &premium, 3, future)
        .unwrap();
    let p = keys.verify(&token, READ, minted).unwrap();
    assert!(p.states_capabilities);
    let diarize = [TierGate::Feature(Capability::Diarization)];
    let small = [TierGate::Model("small.en".into())];
    // Current: the token's own facts answer.
    assert!(keys.authorize_gates(&p, &premium, 3, &diarize).is_ok());
    assert!(keys.authorize_gates(&p, &premium, 3, &small).is_ok());
    // The tenant moved to basic since (epoch 4): re-derived, refused.
    let refused = keys.authorize_gates(&p, &basic(), 4, &[small[0].clone(), diarize[0].clone()]);
    assert!(matches!(refused, Err(GateError::Refused(TierGate::Model(m))) if m == "small.en"));
    assert!(matches!(
        keys.authorize_gates(&p, &basic(), 4, &diarize),
        Err(GateError::Refused(TierGate::Feature(
            Capability::Diarization
        )))
    ));
    // A basic token after an upgrade gains at once.
    let old = keys
        .mint_login("u1", &t, Role::Owner, &basic(), 0, future)
        .unwrap();
    let p = keys.verify(&old, READ, minted).unwrap();
    assert!(keys.authorize_gates(&p, &basic(), 0, &diarize).is_err());
    assert!(keys.authorize_gates(&p, &premium, 1, &diarize).is_ok());
}

/// Every scope block counts as minted (the store's check, stubbed for
/// tests that are not about it).
fn minted(_: &[u8]) -> Result<bool, TokenError> {
    Ok(true)
}

fn new_keys() -> (tempfile::TempDir, TokenKeys) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    let keys = TokenKeys::load_or_create(dir.path(), &store).unwrap();
    (dir, keys)
}

#[test]
fn root_key_persists_with_private_mode() {
    let (dir, keys) = new_keys();
    let t = TenantId::trusted("t1");
    let token = keys
        .mint_login(
            "u1",
            &t,
            Role::Member,
            &basic(),
            0,
            Utc::now() + chrono::Duration::hours(1),
        )
        .unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    let again = TokenKeys::load_or_create(dir.path(), &store).unwrap();
    let p = again.verify(&token, READ, minted).unwrap();
    // Sealed: the file does not hold the key in clear.
    let text = std::fs::read_to_string(dir.path().join("root_key")).unwrap();
    assert!(text.starts_with("sealed:"), "{text}");
    assert!(!text.contains(&keys.root.private().to_bytes_hex()));
    assert_eq!((p.user_id.as_str(), p.tenant.as_str()), ("u1", "t1"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("root_key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn expired_forged_and_low_role_tokens_are_refused() {
    let (_d, keys) = new_keys();
    let (_d2, other) = new_keys();
    let t = TenantId::trusted("t1");
    let past = Utc::now() - chrono::Duration::seconds(5);
    let expired = keys
        .mint_login("u1", &t, Role::Owner, &basic(), 0, past)
        .unwrap();
    assert!(matches!(
        keys.verify(&expired, READ, minted),
        Err(TokenError::Expired)
    ));
    let future = Utc::now() + chrono::Duration::hours(1);
    let foreign = other
        .mint_login("u1", &t, Role::Owner, &basic(), 0, future)
        .unwrap();
    assert!(matches!(
        keys.verify(&foreign, READ, minted),
        Err(TokenError::Invalid)
    ));
    let viewer = keys
        .mint_login("u1", &t, Role::Viewer, &basic(), 0, future)
        .unwrap();
    assert!(keys.verify(&viewer, READ, minted).is_ok());
    assert!(matches!(
        keys.verify(&viewer, WRITE, minted),
        Err(TokenError::Denied)
    ));
    let truncated = &viewer[..viewer.len() / 2];
    assert!(matches!(
        keys.verify(truncated, READ, minted),
        Err(TokenError::Invalid)
    ));
}

#[test]
fn api_key_scopes_and_expiry_attenuate() {
    let (_d, keys) = new_keys();
    let t = TenantId::trusted("t1");
    let (read_only, ids) = keys
        .mint_api_key(
            "k1",
            "u1",
            &t,
            Role::Owner,
            &basic(),
            0,
            &["read".into()],
            None,
        )
        .unwrap();
    assert_eq!(ids.len(), 2);
    let p = keys.verify(&read_only, READ, minted).unwrap();
    assert_eq!(p.api_key_id.as_deref(), Some("k1"));
    assert!(matches!(
        keys.verify(&read_only, WRITE, minted),
        Err(TokenError::Denied)
    ));
    let past = Utc::now() - chrono::Duration::seconds(1);
    let (expired, _) = keys
        .mint_api_key("k2", "u1", &t, Role::Owner, &basic(), 0, &[], Some(past))
        .unwrap();
    assert!(matches!(
        keys.verify(&expired, READ, minted),
        Err(TokenError::Expired)
    ));
}

#[test]
fn only_minted_shapes_reach_the_authorizer() {
    let (_d, keys) = new_keys();
    let t = TenantId::trusted("t1");
    let future = Utc::now() + chrono::Duration::hours(1);
    let login = keys
        .mint_login("u1", &t, Role::Owner, &basic(), 0, future)
        .unwrap();
    assert_eq!(
        keys.check_shape(&login).unwrap().shape(),
        &TokenShape::Login
    );
    // A login token with any block appended, hostile or harmless.
    let parsed = Biscuit::from_base64(&login, keys.root.public()).unwrap();
    let hostile = crate::auth::forge::append_join_bomb(&login, 70).unwrap();
    let started = std::time::Instant::now();
    let refused = keys.verify(&hostile, READ, |_| Ok(false));
    assert!(
        matches!(refused, Err(TokenError::Attenuated)),
        "{refused:?}"
    );
    // Shape refusal does no Datalog: far below one evaluation round of
    // the join (tens of seconds); generous for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(1));
    let narrowed = parsed
        .append(BlockBuilder::new().check(rule_check()).unwrap())
        .unwrap()
        .to_base64()
        .unwrap();
    assert!(matches!(
        keys.verify(&narrowed, READ, |_| Ok(false)),
        Err(TokenError::Attenuated)
    ));

    // An API key passes only with the scope block the store recorded.
    let (key, ids) = keys
        .mint_api_key("k1", "u1", &t, Role::Owner, &basic(), 0, &[], None)
        .unwrap();
    let scope_block = hex::decode(&ids[1]).unwrap();
    let recorded = |id: &[u8]| Ok(id == scope_block.as_slice());
    assert_eq!(
        keys.verify(&key, READ, recorded)
            .unwrap()
            .api_key_id
            .as_deref(),
        Some("k1")
    );
    assert!(matches!(
        keys.verify(&key, READ, |_| Ok(false)),
        Err(TokenError::Attenuated)
    ));
    // A third block on a real key is refused before the store is asked.
    let three = crate::auth::forge::append_join_bomb(&key, 70).unwrap();
    assert!(matches!(
        keys.verify(&three, READ, |_| panic!("store asked for a 3-block token")),
        Err(TokenError::Attenuated)
    ));
    // Oversized input is refused before decoding.
    let huge = "A".repeat(MAX_TOKEN_BYTES + 1);
    assert!(matches!(keys.check_shape(&huge), Err(TokenError::TooLarge)));
}

#[test]
fn minted_tokens_fit_the_size_bound_with_room() {
    let (_d, keys) = new_keys();
    let t = TenantId::trusted("t_01HZX3K4M5N6P7Q8R9S0T1V2W3");
    let future = Utc::now() + chrono::Duration::hours(1);
    let enterprise = tier("enterprise");
    let login = keys
        .mint_login(
            "u_01HZX3K4M5N6P7Q8R9S0T1V2W3",
            &t,
            Role::Owner,
            &enterprise,
            9,
            future,
        )
        .unwrap();
    let (key, _) = keys
        .mint_api_key(
            "k_01HZX3K4M5N6P7Q8R9S0T1V2W3",
            "u_01HZX3K4M5N6P7Q8R9S0T1V2W3",
            &t,
            Role::Owner,
            &enterprise,
            9,
            &[],
            Some(future),
        )
        .unwrap();
    assert!(
        login.len() * 2 < MAX_TOKEN_BYTES,
        "login token {}",
        login.len()
    );
    assert!(key.len() * 2 < MAX_TOKEN_BYTES, "API key {}", key.len());
}

#[test]
fn login_tokens_say_when_they_were_issued() {
    let (_d, keys) = new_keys();
    let t = TenantId::trusted("t1");
    let before = Utc::now() - chrono::Duration::seconds(1);
    let login = keys
        .mint_login(
            "u1",
            &t,
            Role::Owner,
            &basic(),
            0,
            Utc::now() + chrono::Duration::hours(1),
        )
        .unwrap();
    let issued = keys
        .verify(&login, READ, minted)
        .unwrap()
        .issued_at
        .unwrap();
    assert!(issued >= before && issued <= Utc::now() + chrono::Duration::seconds(1));
}

fn rule_check() -> biscuit_auth::builder::Check {
    biscuit_auth::macros::check!("check if operation(\"files:read\")")
}

#[test]
fn only_answers_that_stay_true_are_remembered() {
    let (_d, keys) = new_keys();
    let t = TenantId::trusted("t1");
    let hour = Utc::now() + chrono::Duration::hours(1);
    let viewer = keys
        .mint_login("u1", &t, Role::Viewer, &basic(), 0, hour)
        .unwrap();
    assert!(keys.remembered(&viewer, READ, minted).is_none());
    let p = keys.verify(&viewer, READ, minted).unwrap();
    assert_eq!(keys.verified.len(), 1);
    let again = keys
        .remembered(&viewer, READ, minted)
        .expect("remembered")
        .unwrap();
    assert_eq!(
        (again.user_id, again.role, again.revocation_ids),
        (p.user_id, p.role, p.revocation_ids)
    );
    // Per operation: a viewer's read says nothing about a write.
    assert!(keys.remembered(&viewer, WRITE, minted).is_none());
    assert!(matches!(
        keys.verify(&viewer, WRITE, minted),
        Err(TokenError::Denied)
    ));
    assert_eq!(keys.verified.len(), 1, "a refusal is not remembered");
    // An altered token is another key: checked, and refused.
    let mut altered = viewer.clone().into_bytes();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    assert!(keys.remembered(&altered, READ, minted).is_none());
    assert!(keys.verify(&altered, READ, minted).is_err());

    // Another spelling of the same signed token (an unknown protobuf
    // field appended, which the decoder skips) is never remembered,
    // whether or not it verifies: one token must not fill the memo.
    use base64::Engine as _;
    let url = base64::engine::general_purpose::URL_SAFE;
    let mut bytes = url.decode(viewer.trim()).unwrap();
    bytes.extend_from_slice(&[0x78, 0x01]); // field 15, varint 1
    let respelled = url.encode(&bytes);
    assert_ne!(respelled, viewer);
    let _ = keys.verify(&respelled, READ, minted);
    assert!(keys.remembered(&respelled, READ, minted).is_none());
    assert_eq!(keys.verified.len(), 1);

    // A token that ends within the minute is checked every time, so it is
    // refused from the second it expires.
    let soon = Utc::now() + chrono::Duration::seconds(2);
    let short = keys
        .mint_login("u1", &t, Role::Owner, &basic(), 0, soon)
        .unwrap();
    assert!(keys.verify(&short, READ, minted).is_ok());
    assert!(keys.remembered(&short, READ, minted).is_none());
    assert_eq!(keys.verified.len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(3100));
    assert!(matches!(
        keys.verify(&short, READ, minted),
        Err(TokenError::Expired)
    ));
}

#[test]
fn passed_gates_are_remembered_per_token_tier_and_needs() {
    use crate::billing::Capability;
    let (_d, keys) = new_keys();
    let t = TenantId::trusted("t1");
    let hour = Utc::now() + chrono::Duration::hours(1);
    let premium = tier("premium");
    let token = keys
        .mint_login("u1", &t, Role::Owner, &premium, 2, hour)
        .unwrap();
    let p = keys.verify(&token, READ, minted).unwrap();
    let diarize = [TierGate::Feature(Capability::Diarization)];
    assert!(keys.authorize_gates(&p, &premium, 2, &diarize).is_ok());
    assert!(keys.authorize_gates(&p, &premium, 2, &diarize).is_ok());
    assert_eq!(keys.gates_passed.len(), 1);
    // The tenant moved to basic: another key, refused, and not remembered.
    assert!(matches!(
        keys.authorize_gates(&p, &basic(), 3, &diarize),
        Err(GateError::Refused(_))
    ));
    assert_eq!(keys.gates_passed.len(), 1);
    // The same tier name and epoch with other contents (the tiers file
    // changed) is another key too.
    let mut shrunk = premium.clone();
    shrunk.diarization = false;
    shrunk.models = vec!["tiny".into()];
    let small = [TierGate::Model("small.en".into())];
    assert!(keys.authorize_gates(&p, &premium, 5, &small).is_ok());
    assert!(matches!(
        keys.authorize_gates(&p, &shrunk, 5, &small),
        Err(GateError::Refused(_))
    ));
    // A token that expires within the minute: checked each time.
    let soon = Utc::now() + chrono::Duration::seconds(2);
    let short = keys
        .mint_login("u1", &t, Role::Owner, &premium, 2, soon)
        .unwrap();
    let ps = keys.verify(&short, READ, minted).unwrap();
    let before = keys.gates_passed.len();
    assert!(keys.authorize_gates(&ps, &premium, 2, &diarize).is_ok());
    assert_eq!(keys.gates_passed.len(), before);
    std::thread::sleep(std::time::Duration::from_millis(3100));
    assert!(matches!(
        keys.authorize_gates(&ps, &premium, 2, &diarize),
        Err(GateError::Token(TokenError::Expired))
    ));
}
