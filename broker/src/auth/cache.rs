//! Verifications that succeeded, so that devices reconnecting (a storm
//! after an outage, a node's clients moving in a rollout) are not all
//! hashed again: PBKDF2 at 100,000 iterations costs tens of milliseconds.
//!
//! An entry is a keyed hash (HMAC-SHA256 under a key drawn at start-up)
//! of the user name, the password and the stored hash it matched: nothing
//! that could be reversed or compared offline is kept, and a changed
//! password file entry no longer matches. Entries live `cache_ttl_secs`;
//! at most `cache_max_entries` are kept (a full cache drops its expired
//! entries, then admits no more until some expire).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use sha2::Sha256;

use super::password_hash::PasswordHash;

pub type CacheKey = [u8; 32];

pub struct VerifiedCache {
    secret: [u8; 32],
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<CacheKey, Instant>>,
}

impl VerifiedCache {
    /// A cache keeping entries `ttl` (zero: off), at most `max_entries`.
    pub fn new(ttl: Duration, max_entries: usize) -> VerifiedCache {
        let mut secret = [0u8; 32];
        // Without randomness the key is still unknown outside the process
        // image, but say so: entries would be comparable across restarts.
        if super::password_hash::fill_random(&mut secret).is_err() {
            tracing::warn!("no random source for the verification cache's key: the cache is off");
            return VerifiedCache {
                secret,
                ttl: Duration::ZERO,
                max_entries: 0,
                entries: Mutex::default(),
            };
        }
        VerifiedCache {
            secret,
            ttl,
            max_entries,
            entries: Mutex::default(),
        }
    }

    pub fn key(&self, username: &str, password: &[u8], stored: &PasswordHash) -> CacheKey {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return [0; 32];
        };
        // Lengths first: no two different triples feed the same bytes.
        for part in [username.as_bytes(), password, stored.encode().as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `key` verified within the TTL.
    pub fn holds(&self, key: &CacheKey) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock();
        match entries.get(key) {
            Some(expires) if *expires > now => true,
            Some(_) => {
                entries.remove(key);
                false
            }
            None => false,
        }
    }

    pub fn insert(&self, key: CacheKey) {
        if self.ttl.is_zero() || self.max_entries == 0 {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.len() >= self.max_entries {
            entries.retain(|_, expires| *expires > now);
            if entries.len() >= self.max_entries {
                return;
            }
        }
        entries.insert(key, now + self.ttl);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> PasswordHash {
        PasswordHash::new_pbkdf2(b"pw", 1).unwrap()
    }

    #[test]
    fn an_entry_is_held_for_its_ttl_only_for_the_same_triple() {
        let cache = VerifiedCache::new(Duration::from_millis(50), 10);
        let stored = stored();
        let key = cache.key("alice", b"pw", &stored);
        assert!(!cache.holds(&key));
        cache.insert(key);
        assert!(cache.holds(&key));
        assert!(!cache.holds(&cache.key("alice", b"pw2", &stored)));
        assert!(!cache.holds(&cache.key("alicE", b"pw", &stored)));
        assert!(!cache.holds(&cache.key(
            "alice",
            b"pw",
            &super::super::password_hash::PasswordHash::new_pbkdf2(b"pw", 1).unwrap()
        )));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.holds(&key), "expired");
    }

    #[test]
    fn a_full_cache_admits_no_more() {
        let cache = VerifiedCache::new(Duration::from_secs(60), 2);
        let stored = stored();
        for user in ["a", "b", "c"] {
            cache.insert(cache.key(user, b"pw", &stored));
        }
        assert_eq!(cache.len(), 2);
        assert!(!cache.holds(&cache.key("c", b"pw", &stored)));
    }

    #[test]
    fn keys_differ_between_caches() {
        let stored = stored();
        let (one, two) = (
            VerifiedCache::new(Duration::from_secs(1), 1),
            VerifiedCache::new(Duration::from_secs(1), 1),
        );
        assert_ne!(one.key("a", b"pw", &stored), two.key("a", b"pw", &stored));
    }
}
