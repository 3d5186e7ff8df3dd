//! The stateful TLS session cache (TLS 1.2 session ids), shared by all workers without a lock.

use rustls::server::StoresServerSessions;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A bounded, lock-free session store (papaya). When full, an arbitrary entry is evicted: sessions are a
/// performance hint, and a client whose session is gone simply does a full handshake.
pub struct SessionCache {
    map: papaya::HashMap<Vec<u8>, Vec<u8>>,
    len: AtomicUsize,
    capacity: usize,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("len", &self.len.load(Ordering::Relaxed))
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl SessionCache {
    pub fn new(capacity: usize) -> Self {
        SessionCache {
            map: papaya::HashMap::new(),
            len: AtomicUsize::new(0),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let map = self.map.pin();
        if self.len.load(Ordering::Relaxed) >= self.capacity {
            if let Some(victim) = map.keys().next().cloned() {
                if map.remove(&victim).is_some() {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        if map.insert(key, value).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.pin().get(key).cloned()
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let removed = self.map.pin().remove(key).cloned();
        if removed.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    fn can_cache(&self) -> bool {
        self.capacity > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_take_removes() {
        let c = SessionCache::new(2);
        assert!(c.put(b"a".to_vec(), b"1".to_vec()));
        assert!(c.put(b"b".to_vec(), b"2".to_vec()));
        assert!(c.put(b"c".to_vec(), b"3".to_vec()));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(b"c").as_deref(), Some(&b"3"[..]));
        assert_eq!(c.take(b"c").as_deref(), Some(&b"3"[..]));
        assert!(c.get(b"c").is_none());
        assert_eq!(c.len(), 1);
        assert!(!SessionCache::new(0).can_cache());
    }
}
