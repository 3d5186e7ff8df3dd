//! Upload quotas (issue #17, point 2): the bytes of unfinished uploads one user (`uploads.user_quota`)
//! and the users of one tenant together (`uploads.tenant_quota`) may hold at once; a creation beyond
//! either is refused with 413.
//!
//! The check runs on a spool thread, never on a worker: the creation waits on a ticket (as an append
//! does) while [`check`] scans the upload records of the replicated store. A scan rather than running
//! held-bytes counters because the store is the one truth every node shares: records arrive from
//! peers, expire, and turn into tombstones in places this module does not see, and counters kept
//! beside it would drift. The cost: the store's map is walked whole (it has no index by kind), under
//! the ledger's lock, once per creation that a quota applies to — nothing on a worker, but creations
//! with quotas are serialized on one node at the pace of that walk. A per-kind index in the store (or
//! counters fed by its watcher) is the step after this if that pace ever matters.
//!
//! What an upload holds is its declared length, or (IETF, length not known yet) the bytes it has. Two
//! creations of one user on this node cannot both slip under the cap: the check and the reservation
//! it leaves are one step under the ledger's lock, and the reservation counts until the upload's
//! record is in the store (or the creation ended); from then on the record counts, as long as it lives. Creations on two nodes at once can: the quota is
//! exact per node and eventually consistent across the cluster (docs/UPLOADS.md).

use super::state::{Upload, UploadId};
use crate::store::{Kind, Store};
use parking_lot::Mutex;
use std::sync::Arc;

/// Which cap a creation would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Over {
    #[error("over the user's upload quota (uploads.user_quota)")]
    User,
    #[error("over the tenant's upload quota (uploads.tenant_quota)")]
    Tenant,
}

/// What a creation asks for, and the caps that apply (0: none).
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub id: UploadId,
    pub user: String,
    pub tenant: String,
    pub bytes: u64,
    pub user_quota: u64,
    pub tenant_quota: u64,
}

impl Claim {
    /// Whether any cap applies to this claim (else the check is skipped, and the creation never waits
    /// for it).
    pub(crate) fn limited(&self) -> bool {
        (self.user_quota > 0 && !self.user.is_empty())
            || (self.tenant_quota > 0 && !self.tenant.is_empty())
    }
}

#[derive(Debug)]
struct Reserved {
    id: UploadId,
    user: String,
    tenant: String,
    bytes: u64,
}

/// This node's creations that passed the check and whose record may not be in the store yet.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    reserved: Mutex<Vec<Reserved>>,
}

/// A passed check's bytes, counted by later checks until dropped (when the creation's request ends).
#[derive(Debug)]
pub(crate) struct Reservation {
    id: UploadId,
    ledger: Arc<Ledger>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.ledger.reserved.lock().retain(|r| r.id != self.id);
    }
}

/// Bytes an upload holds against a quota.
fn held(u: &Upload) -> u64 {
    u.length.unwrap_or(u.offset).max(u.offset)
}

/// Checks `claim` against the live uploads in `store` and this node's reservations; reserves its bytes
/// when it fits. Runs on a spool thread (it scans the store).
pub(crate) fn check(
    store: &Store,
    ledger: &Arc<Ledger>,
    claim: &Claim,
    now: u32,
) -> Result<Reservation, Over> {
    let mut reserved = ledger.reserved.lock();
    let (mut user, mut tenant) = (0u64, 0u64);
    let reader = store.reader();
    let mut count = |u_user: &str, u_tenant: &str, bytes: u64| {
        if !claim.user.is_empty() && u_user == claim.user {
            user = user.saturating_add(bytes);
        }
        if !claim.tenant.is_empty() && u_tenant == claim.tenant {
            tenant = tenant.saturating_add(bytes);
        }
    };
    for record in reader.iter(Some(Kind::Upload)) {
        if !crate::store::table::live(record, now) {
            continue;
        }
        if let Some(u) = record.value.as_deref().and_then(Upload::decode) {
            count(&u.user, &u.tenant, held(&u));
        }
    }
    // A reservation whose record is in the store was counted above already — or, once that record is
    // a tombstone (forwarded, deleted) or expired, holds nothing any more.
    for r in reserved.iter() {
        if reader.get_raw(Kind::Upload, &r.id).is_none() {
            count(&r.user, &r.tenant, r.bytes);
        }
    }
    drop(reader);
    let over = |held: u64, quota: u64| quota > 0 && held.saturating_add(claim.bytes) > quota;
    if !claim.user.is_empty() && over(user, claim.user_quota) {
        return Err(Over::User);
    }
    if !claim.tenant.is_empty() && over(tenant, claim.tenant_quota) {
        return Err(Over::Tenant);
    }
    reserved.push(Reserved {
        id: claim.id,
        user: claim.user.clone(),
        tenant: claim.tenant.clone(),
        bytes: claim.bytes,
    });
    Ok(Reservation {
        id: claim.id,
        ledger: ledger.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::state::{self, Proto};

    fn upload(user: &str, tenant: &str, length: Option<u64>, offset: u64) -> Upload {
        Upload {
            proto: Proto::Tus,
            user: user.into(),
            session: String::new(),
            route: "r".into(),
            host: "h".into(),
            path: "/".into(),
            metadata: String::new(),
            length,
            offset,
            tag: 0,
            created: 100,
            expires: 1000,
            identity: String::new(),
            tenant: tenant.into(),
        }
    }

    fn put(store: &Store, id: u8, u: &Upload) {
        let record = state::record(Kind::Upload, &[id; 16], Some(Arc::from(u.encode())), 1000);
        store.apply(record);
    }

    fn claim(id: u8, user: &str, tenant: &str, bytes: u64) -> Claim {
        Claim {
            id: [id; 16],
            user: user.into(),
            tenant: tenant.into(),
            bytes,
            user_quota: 100,
            tenant_quota: 150,
        }
    }

    #[test]
    fn the_caps_count_declared_lengths_and_reservations() {
        let store = Store::new();
        let ledger = Arc::new(Ledger::default());
        put(&store, 1, &upload("ann", "acme", Some(60), 10));
        // IETF without a length yet: what it has.
        put(&store, 2, &upload("bob", "acme", None, 30));
        assert_eq!(
            check(&store, &ledger, &claim(9, "ann", "acme", 41), 200).unwrap_err(),
            Over::User
        );
        let held = check(&store, &ledger, &claim(9, "ann", "acme", 40), 200).unwrap();
        // ann now holds 100 (60 + the reservation); the tenant 130.
        assert_eq!(
            check(&store, &ledger, &claim(10, "ann", "acme", 1), 200).unwrap_err(),
            Over::User
        );
        assert_eq!(
            check(&store, &ledger, &claim(10, "cy", "acme", 21), 200).unwrap_err(),
            Over::Tenant
        );
        // Another tenant is not touched; an expired upload holds nothing.
        assert!(check(&store, &ledger, &claim(11, "dee", "other", 100), 200).is_ok());
        // At 2000 both records expired: ann holds only the reservation (40).
        assert!(check(&store, &ledger, &claim(12, "ann", "acme", 60), 2000).is_ok());
        // The reservation's record arrives: counted once, not twice.
        put(&store, 9, &upload("ann", "acme", Some(40), 0));
        assert!(check(&store, &ledger, &claim(13, "cy", "acme", 20), 200).is_ok());
        // Forwarded or deleted (a tombstone) while its creation's request still runs: nothing held.
        let mut gone = state::record(Kind::Upload, &[9; 16], None, 1000);
        gone.version.hlc = 1;
        store.apply(gone);
        assert!(check(&store, &ledger, &claim(14, "ann", "acme", 40), 200).is_ok());
        drop(held);
    }

    #[test]
    fn a_dropped_reservation_makes_room() {
        let store = Store::new();
        let ledger = Arc::new(Ledger::default());
        let first = check(&store, &ledger, &claim(1, "ann", "", 100), 200).unwrap();
        assert!(check(&store, &ledger, &claim(2, "ann", "", 1), 200).is_err());
        drop(first);
        assert!(check(&store, &ledger, &claim(2, "ann", "", 1), 200).is_ok());
    }
}
