//! Row ids: a short kind prefix and a ULID, so ids sort by creation time
//! (lists page by them) and say what they name in logs.

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_prefixed_and_increase() {
        let a = super::new_id("j");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::new_id("j");
        assert!(a.starts_with("j_") && a.len() == 28);
        assert!(a < b);
    }
}
