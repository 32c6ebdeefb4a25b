//! `Config::parse` on arbitrary UTF-8: never a panic; an error names what is wrong.

use crate::config::Config;

/// One input of the target (what `fuzz_target!` runs).
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text) {
        Ok(config) => {
            // What start-up relies on after a successful parse.
            assert!(config.token_cache_size > 0);
            for mount in [&config.mounts.transit, &config.mounts.kv, &config.mounts.database] {
                assert!(crate::service::validate::mount(mount).is_ok(), "mount {mount:?} accepted");
            }
            assert!(config.batch.max_items > 0 && config.batch.max_in_flight > 0 && config.batch.max_queue > 0);
            assert!(config.limits.max_item_bytes > 0 && config.limits.max_batch_items > 0);
            // A tokio semaphore of this many permits can be built (it panics past usize::MAX >> 3).
            assert!((1..=usize::MAX >> 3).contains(&config.limits.max_concurrent_calls));
            // One item (base64 plus JSON overhead) fits a Vault request, computed without overflow.
            let item = config.limits.max_item_bytes.checked_mul(4).map(|b| b / 3 + 1024);
            assert!(
                item.is_some_and(|b| b <= config.batch.max_bytes),
                "limits.max_item_bytes = {} accepted with batch.max_bytes = {}",
                config.limits.max_item_bytes,
                config.batch.max_bytes
            );
            for rule in &config.callers {
                assert!(!rule.role.trim().is_empty() && !rule.claim.is_empty());
                assert!(rule.equals.is_some() != rule.prefix.is_some());
            }
            assert!(matches!(config.log.format.as_str(), "human" | "json"));
        }
        Err(message) => assert!(!message.trim().is_empty(), "empty error for {text:?}"),
    }
}
