//! The lessor: every live lease, its deadline and its keys.
//!
//! Grants and revocations change the store (they are persisted, and a revocation deletes the
//! lease's keys in one revision), so they go through the writer; renewals only move a
//! deadline in memory, as in etcd, so a keep-alive costs no write.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::error::StoreError;

/// The shortest TTL granted; shorter requests are raised to it (etcd's default for a 100 ms
/// heartbeat and 1 s election timeout).
pub const MIN_TTL: i64 = 2;
/// The longest TTL etcd grants.
pub const MAX_TTL: i64 = 9_000_000_000;

/// One lease.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The granted TTL in seconds.
    pub ttl: i64,
    /// When the lease expires unless renewed.
    pub deadline: Instant,
    /// Keys attached to the lease.
    pub keys: BTreeSet<Vec<u8>>,
    /// Whether its revocation has been queued after expiry.
    revoking: bool,
}

/// What LeaseTimeToLive reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeToLive {
    /// Whole seconds left.
    pub remaining: i64,
    /// The granted TTL.
    pub granted: i64,
    /// Attached keys, in key order.
    pub keys: Vec<Vec<u8>>,
}

/// Every live lease.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: HashMap<i64, Lease>,
    /// The lease of each attached key (the store's index keeps no lease: a put needs only
    /// the live one, to detach it or keep it with `ignore_lease`).
    lease_of: HashMap<Vec<u8>, i64>,
}

fn deadline(now: Instant, ttl: i64) -> Instant {
    now + Duration::from_secs(ttl.clamp(0, MAX_TTL) as u64)
}

impl Lessor {
    /// Leases loaded from disk get their full TTL again, as etcd does on a leader change.
    pub fn restore(leases: impl IntoIterator<Item = (i64, i64)>, now: Instant) -> Self {
        let leases = leases
            .into_iter()
            .map(|(id, ttl)| {
                let lease = Lease {
                    ttl,
                    deadline: deadline(now, ttl),
                    keys: BTreeSet::new(),
                    revoking: false,
                };
                (id, lease)
            })
            .collect();
        Self {
            leases,
            lease_of: HashMap::new(),
        }
    }

    /// Whether lease `id` exists.
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Number of live leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there is no lease.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Grants a lease; `id == 0` picks an unused one. Returns the id and the TTL granted.
    pub fn grant(&mut self, id: i64, ttl: i64, now: Instant) -> Result<(i64, i64), StoreError> {
        if ttl > MAX_TTL {
            return Err(StoreError::LeaseTtlTooLarge);
        }
        let id = if id == 0 { self.unused_id() } else { id };
        if self.leases.contains_key(&id) {
            return Err(StoreError::LeaseExists);
        }
        let ttl = ttl.max(MIN_TTL);
        self.leases.insert(
            id,
            Lease {
                ttl,
                deadline: deadline(now, ttl),
                keys: BTreeSet::new(),
                revoking: false,
            },
        );
        Ok((id, ttl))
    }

    fn unused_id(&self) -> i64 {
        loop {
            let id = (rand::random::<u64>() >> 1) as i64;
            if id != 0 && !self.leases.contains_key(&id) {
                return id;
            }
        }
    }

    /// Attaches `key` to lease `id` (no-op for an unknown lease), detaching it from the
    /// lease it had.
    pub fn attach(&mut self, id: i64, key: &[u8]) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        lease.keys.insert(key.to_vec());
        if let Some(old) = self.lease_of.insert(key.to_vec(), id) {
            if old != id {
                if let Some(lease) = self.leases.get_mut(&old) {
                    lease.keys.remove(key);
                }
            }
        }
    }

    /// Detaches `key` from lease `id`.
    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.remove(key);
        }
        if self.lease_of.get(key) == Some(&id) {
            self.lease_of.remove(key);
        }
    }

    /// The live lease `key` is attached to (0 for none).
    pub fn lease_of(&self, key: &[u8]) -> i64 {
        self.lease_of.get(key).copied().unwrap_or(0)
    }

    /// The keys of lease `id`.
    pub fn keys(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        self.leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
    }

    /// Forgets lease `id` (its keys are no longer attached to it).
    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        for key in &lease.keys {
            if self.lease_of.get(key.as_slice()) == Some(&id) {
                self.lease_of.remove(key.as_slice());
            }
        }
        Some(lease)
    }

    /// Renews lease `id`; `None` if it does not exist or has already expired.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let lease = self.leases.get_mut(&id)?;
        if lease.deadline <= now {
            return None;
        }
        lease.deadline = deadline(now, lease.ttl);
        Some(lease.ttl)
    }

    /// What LeaseTimeToLive reports for lease `id`.
    pub fn time_to_live(&self, id: i64, now: Instant) -> Option<TimeToLive> {
        let lease = self.leases.get(&id)?;
        Some(TimeToLive {
            remaining: lease.deadline.saturating_duration_since(now).as_secs() as i64,
            granted: lease.ttl,
            keys: lease.keys.iter().cloned().collect(),
        })
    }

    /// Every lease id, sorted.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Leases past their deadline that are not being revoked yet; marks them as being revoked.
    pub fn take_expired(&mut self, now: Instant) -> Vec<i64> {
        let mut expired = Vec::new();
        for (id, lease) in &mut self.leases {
            if !lease.revoking && lease.deadline <= now {
                lease.revoking = true;
                expired.push(*id);
            }
        }
        expired
    }

    /// Lets a lease whose revocation failed be tried again.
    pub fn retry_expired(&mut self, id: i64) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.revoking = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_has_one_live_lease_which_detaching_or_removing_forgets() {
        let mut lessor = Lessor::default();
        let now = Instant::now();
        lessor.grant(1, 10, now).ok();
        lessor.grant(2, 10, now).ok();
        lessor.attach(1, b"k");
        assert_eq!(lessor.lease_of(b"k"), 1);
        lessor.attach(2, b"k");
        assert_eq!(lessor.lease_of(b"k"), 2);
        assert_eq!(lessor.keys(1), Some(vec![]), "moved off its old lease");
        lessor.detach(1, b"k");
        assert_eq!(
            lessor.lease_of(b"k"),
            2,
            "detaching another lease changes nothing"
        );
        lessor.detach(2, b"k");
        assert_eq!(lessor.lease_of(b"k"), 0);
        lessor.attach(3, b"k");
        assert_eq!(
            lessor.lease_of(b"k"),
            0,
            "an unknown lease attaches nothing"
        );
        lessor.attach(1, b"k");
        lessor.remove(1);
        assert_eq!(lessor.lease_of(b"k"), 0);
    }

    #[test]
    fn grant_raises_short_ttls_and_refuses_long_ones() {
        let mut lessor = Lessor::default();
        let now = Instant::now();
        assert_eq!(lessor.grant(7, 1, now).ok(), Some((7, MIN_TTL)));
        assert!(matches!(
            lessor.grant(7, 10, now),
            Err(StoreError::LeaseExists)
        ));
        assert!(matches!(
            lessor.grant(8, MAX_TTL + 1, now),
            Err(StoreError::LeaseTtlTooLarge)
        ));
        let (id, ttl) = lessor.grant(0, 30, now).expect("grant");
        assert!(id > 0 && id != 7);
        assert_eq!(ttl, 30);
    }

    #[test]
    fn renewal_moves_the_deadline_and_expiry_is_reported_once() {
        let mut lessor = Lessor::default();
        let t0 = Instant::now();
        lessor.grant(1, 10, t0).expect("grant");
        lessor.attach(1, b"k");
        let t9 = t0 + Duration::from_secs(9);
        assert_eq!(lessor.renew(1, t9), Some(10));
        let t15 = t0 + Duration::from_secs(15);
        assert!(
            lessor.take_expired(t15).is_empty(),
            "renewed at 9 s, so alive at 15 s"
        );
        let ttl = lessor.time_to_live(1, t15).expect("lease");
        assert_eq!(
            (ttl.remaining, ttl.granted, ttl.keys),
            (4, 10, vec![b"k".to_vec()])
        );
        let t20 = t0 + Duration::from_secs(20);
        assert_eq!(lessor.take_expired(t20), vec![1]);
        assert!(lessor.take_expired(t20).is_empty());
        assert_eq!(
            lessor.renew(1, t20),
            None,
            "an expired lease cannot be renewed"
        );
    }
}
