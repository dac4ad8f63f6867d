//! Users and roles as etcd's `authpb` encodes them, so they are stored, snapshotted and
//! exported in etcd's own encoding; what a permission allows.

/// What a permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermType {
    /// Range, watch, compare.
    Read,
    /// Put, delete.
    Write,
    /// Both.
    ReadWrite,
}

impl PermType {
    /// etcd's `authpb.Permission.Type` number.
    pub fn number(self) -> i32 {
        match self {
            Self::Read => 0,
            Self::Write => 1,
            Self::ReadWrite => 2,
        }
    }

    /// From etcd's number (anything unknown is refused by the caller).
    pub fn from_number(n: i32) -> Option<Self> {
        match n {
            0 => Some(Self::Read),
            1 => Some(Self::Write),
            2 => Some(Self::ReadWrite),
            _ => None,
        }
    }

    /// Whether it allows `wanted` (`Read` or `Write`).
    pub fn allows(self, wanted: PermType) -> bool {
        self == PermType::ReadWrite || self == wanted
    }
}

pub use crate::proto::authpb::{Permission, Role, User, UserAddOptions};

impl User {
    /// Whether it signs in only with a client certificate.
    pub fn no_password(&self) -> bool {
        self.options.as_ref().is_some_and(|o| o.no_password)
    }
}
