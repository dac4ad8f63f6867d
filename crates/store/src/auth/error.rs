//! etcd's authentication errors: the same messages and gRPC codes, since clients recognise
//! them by their text (to sign in again after `invalid auth token`, for one).

use tonic::Code;

/// Why an authentication or authorization step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `auth enable` without a root user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// `auth enable` with a root user that lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// The user exists.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// No user (no token, or an empty name).
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// No such user.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// The role exists.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// No such role.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// Wrong user or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A grant without a permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// Not allowed.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// Revoking a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// Revoking a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticate while authentication is off.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// An unknown or expired token.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// A change that would lock everyone out, or an invalid permission range.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// A password given for a user that signs in only with a certificate.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// The backend failed.
    #[error("etcdserver: {0}")]
    Backend(String),
}

impl AuthError {
    /// The gRPC code etcd answers with.
    pub fn code(&self) -> Code {
        match self {
            Self::RootUserNotExist
            | Self::RootRoleNotExist
            | Self::UserAlreadyExist
            | Self::UserNotFound
            | Self::RoleAlreadyExist
            | Self::RoleNotFound
            | Self::RoleNotGranted
            | Self::PermissionNotGranted
            | Self::AuthNotEnabled => Code::FailedPrecondition,
            Self::UserEmpty
            | Self::RoleEmpty
            | Self::AuthFailed
            | Self::PermissionNotGiven
            | Self::InvalidAuthMgmt => Code::InvalidArgument,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::InvalidAuthToken => Code::Unauthenticated,
            Self::NoPasswordUser => Code::Unknown,
            Self::Backend(_) => Code::Internal,
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}
