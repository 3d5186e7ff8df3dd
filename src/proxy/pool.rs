//! Each worker's idle backend connections, per backend, reused most-recent first.

use crate::balance::BackendId;

/// Slab keys of idle upstream connections, indexed by backend id. Per worker, so no lock; vectors keep
/// their capacity, so pushing and popping allocates nothing in steady state.
#[derive(Debug, Default)]
pub(crate) struct UpstreamPool {
    idle: Vec<Vec<usize>>,
    /// Connections being established ahead of need (warm TLS), per backend.
    warming: Vec<usize>,
    max_per_backend: usize,
}

impl UpstreamPool {
    pub(crate) fn new(max_per_backend: usize) -> Self {
        UpstreamPool {
            idle: Vec::new(),
            warming: Vec::new(),
            max_per_backend,
        }
    }

    /// Makes room for backend ids below `bound`.
    pub(crate) fn ensure(&mut self, bound: usize) {
        if self.idle.len() < bound {
            self.idle.resize_with(bound, Vec::new);
            self.warming.resize(bound, 0);
        }
    }

    /// Parks a connection; `false` when the backend's pool is full (the caller closes it).
    pub(crate) fn put(&mut self, backend: BackendId, key: usize) -> bool {
        self.ensure(backend + 1);
        let list = &mut self.idle[backend];
        if list.len() >= self.max_per_backend {
            return false;
        }
        list.push(key);
        true
    }

    /// The most recently parked connection to `backend` (warmest, least likely to have been closed).
    pub(crate) fn take(&mut self, backend: BackendId) -> Option<usize> {
        self.idle.get_mut(backend)?.pop()
    }

    /// Moves the first parked connection to `backend` that satisfies `pred` to the top, so the next
    /// `take` returns it (a session's own SSL context). Returns whether one was found.
    pub(crate) fn promote(&mut self, backend: BackendId, pred: impl Fn(usize) -> bool) -> bool {
        let Some(list) = self.idle.get_mut(backend) else {
            return false;
        };
        match list.iter().position(|&k| pred(k)) {
            Some(i) => {
                let key = list.remove(i);
                list.push(key);
                true
            }
            None => false,
        }
    }

    /// Forgets a connection that closed while parked.
    pub(crate) fn remove(&mut self, backend: BackendId, key: usize) {
        if let Some(list) = self.idle.get_mut(backend) {
            if let Some(i) = list.iter().position(|&k| k == key) {
                list.swap_remove(i);
            }
        }
    }

    /// Takes out every parked connection to a backend `keep` refuses (a reload removed or drained it), for
    /// the caller to close.
    pub(crate) fn drain_unless(&mut self, keep: impl Fn(BackendId) -> bool) -> Vec<usize> {
        let mut out = Vec::new();
        for (id, list) in self.idle.iter_mut().enumerate() {
            if !list.is_empty() && !keep(id) {
                out.append(list);
            }
        }
        out
    }

    /// Every parked connection, for shutdown.
    pub(crate) fn drain_all(&mut self) -> Vec<usize> {
        self.idle.iter_mut().flat_map(|l| l.drain(..)).collect()
    }

    /// Idle connections to `backend`.
    pub(crate) fn idle_count(&self, backend: BackendId) -> usize {
        self.idle.get(backend).map_or(0, Vec::len)
    }

    /// Warm connections to `backend` still connecting or handshaking.
    pub(crate) fn warming_count(&self, backend: BackendId) -> usize {
        self.warming.get(backend).copied().unwrap_or(0)
    }

    pub(crate) fn warming_started(&mut self, backend: BackendId) {
        self.ensure(backend + 1);
        self.warming[backend] += 1;
    }

    pub(crate) fn warming_done(&mut self, backend: BackendId) {
        if let Some(n) = self.warming.get_mut(backend) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_in_first_out_and_bounded() {
        let mut p = UpstreamPool::new(2);
        assert!(p.put(3, 10));
        assert!(p.put(3, 11));
        assert!(!p.put(3, 12), "full");
        assert_eq!(p.take(3), Some(11));
        p.remove(3, 10);
        assert_eq!(p.take(3), None);
        assert_eq!(p.take(99), None);
    }

    #[test]
    fn drain_unless_takes_out_other_backends_connections() {
        let mut p = UpstreamPool::new(4);
        p.put(0, 1);
        p.put(1, 2);
        p.put(1, 3);
        p.put(2, 4);
        let mut gone = p.drain_unless(|id| id != 1);
        gone.sort();
        assert_eq!(gone, vec![2, 3]);
        assert_eq!((p.take(0), p.take(1), p.take(2)), (Some(1), None, Some(4)));
    }
}
