//! What an attacker can do to a token without any key, for the tests and
//! `scripts/abuse` that prove the server refuses it.
//!
//! A biscuit holder can append a block; the block reported against Murmur
//! held about 70 facts and a 4-way join, which took 36-47 s to evaluate per
//! request because biscuit only checks its time limit between rounds.

use biscuit_auth::builder::{fact, int, BlockBuilder};
use biscuit_auth::macros::rule;
use biscuit_auth::UnverifiedBiscuit;

/// `token` with a block of `facts` integer facts and a 4-way join rule
/// appended, as anyone holding the token can.
pub fn append_join_bomb(token: &str, facts: i64) -> Result<String, biscuit_auth::error::Token> {
    let mut block = BlockBuilder::new();
    for i in 0..facts {
        block = block.fact(fact("n", &[int(i)]))?;
    }
    let block = block.rule(rule!("j($a, $b, $c, $d) <- n($a), n($b), n($c), n($d)"))?;
    UnverifiedBiscuit::from_base64(token.trim())?
        .append(block)?
        .to_base64()
}
