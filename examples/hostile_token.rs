//! Prints a valid token with a join-bomb block appended (no key needed):
//! `hostile_token TOKEN [FACTS]`. Used by `scripts/abuse` to show that the
//! server refuses it at once instead of evaluating it.

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(token) = args.next() else {
        eprintln!("usage: hostile_token TOKEN [FACTS]");
        std::process::exit(2);
    };
    let facts = args.next().and_then(|f| f.parse().ok()).unwrap_or(70);
    match murmur::auth::forge::append_join_bomb(&token, facts) {
        Ok(t) => println!("{t}"),
        Err(e) => {
            eprintln!("hostile_token: {e}");
            std::process::exit(1);
        }
    }
}
