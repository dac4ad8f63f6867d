//! Leases: TTLs that keys attach to, renewed by keep-alives and revoked on expiry.

pub mod lessor;

pub use lessor::{Lessor, MAX_TTL, MIN_TTL};
