//! A revision names one change in the store's history.

/// One change: `main` is the store revision of the write request (one per request or
/// transaction, as in etcd) and `sub` numbers the changes inside that request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// The store revision the change was made at.
    pub main: i64,
    /// The index of the change inside its request.
    pub sub: i64,
}

/// Length of [`Revision::to_bytes`].
pub const REVISION_BYTES: usize = 16;

impl Revision {
    /// A revision at `main`, change `sub`.
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// Big-endian encoding so that byte order is revision order in the backend.
    pub fn to_bytes(self) -> [u8; REVISION_BYTES] {
        let mut out = [0u8; REVISION_BYTES];
        out[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        out[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        out
    }

    /// Decodes [`Revision::to_bytes`]; `None` if `bytes` has the wrong length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != REVISION_BYTES {
            return None;
        }
        let main = u64::from_be_bytes(bytes[..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(bytes[8..].try_into().ok()?) as i64;
        Some(Self { main, sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_revision_order() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 3),
        ];
        for pair in revs.windows(2) {
            assert!(pair[0].to_bytes() < pair[1].to_bytes());
            assert_eq!(Revision::from_bytes(&pair[1].to_bytes()), Some(pair[1]));
        }
        assert_eq!(Revision::from_bytes(&[1, 2, 3]), None);
    }
}
