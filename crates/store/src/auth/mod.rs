//! Authentication and role-based access control, as etcd 3.5 does them: users with bcrypt
//! passwords (or client certificates), roles holding key-range permissions, the root role,
//! simple tokens, and the checks each request passes when authentication is on.

mod error;
pub mod model;
mod perms;
mod store;
mod token;

pub use error::AuthError;
pub use model::PermType;
pub use perms::UserPermissions;
pub use store::{AuthStore, Caller, DEFAULT_BCRYPT_COST, ROOT};
pub use token::DEFAULT_TTL as DEFAULT_TOKEN_TTL;
