//! The auth store: users, roles, the enabled flag and the auth revision, kept in memory and
//! in the backend's `auth` table (so they survive restarts and travel in snapshots), and
//! every check etcd makes with them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use prost::Message;
use redb::{ReadableDatabase, ReadableTable};

use super::error::AuthError;
use super::model::{PermType, Permission, Role, User, UserAddOptions};
use super::perms::UserPermissions;
use super::token::SimpleTokens;
use crate::mvcc::backend::{
    AUTH, AUTH_ROLE_PREFIX, AUTH_USER_PREFIX, META, META_AUTH_ENABLED, META_AUTH_REVISION,
};
use crate::mvcc::kvstore::MvccStore;

/// The root user and role: the root role passes every check.
pub const ROOT: &str = "root";
/// etcd's `--bcrypt-cost` default.
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: anyone may do anything.
    Anyone,
    /// Authentication is on and the request names no user (no token, no certificate).
    Nobody,
    /// A user (by token or by client certificate common name).
    User(String),
}

#[derive(Default)]
struct State {
    enabled: bool,
    revision: i64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Each user's merged permissions, computed on first use after a change.
    permissions: HashMap<String, Arc<UserPermissions>>,
}

impl State {
    fn has_root_role(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }
}

/// What a change does to the backend.
enum Change {
    PutUser(User),
    DeleteUser(String),
    PutRole(Role),
    DeleteRole(String),
}

/// Users, roles and tokens of one store.
pub struct AuthStore {
    state: RwLock<State>,
    tokens: SimpleTokens,
    store: MvccStore,
    bcrypt_cost: u32,
}

fn backend(e: impl std::fmt::Display) -> AuthError {
    AuthError::Backend(e.to_string())
}

fn user_key(name: &str) -> String {
    format!("{AUTH_USER_PREFIX}{name}")
}

fn role_key(name: &str) -> String {
    format!("{AUTH_ROLE_PREFIX}{name}")
}

/// etcd's check of a permission's range: a key, a range ending after it, or open ended.
fn valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || range_end > key)
}

impl AuthStore {
    /// Loads the auth state of `store`, tokens valid for `token_ttl`, passwords hashed at
    /// `bcrypt_cost` (4 to 31; anything else is etcd's default, 10).
    pub fn open(
        store: MvccStore,
        token_ttl: std::time::Duration,
        bcrypt_cost: u32,
    ) -> Result<Self, AuthError> {
        let mut state = State {
            revision: 1,
            ..State::default()
        };
        store.with_database(|db| -> Result<(), AuthError> {
            let txn = db.begin_read().map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            state.enabled = meta
                .get(META_AUTH_ENABLED)
                .map_err(backend)?
                .is_some_and(|v| v.value() == 1);
            if let Some(rev) = meta.get(META_AUTH_REVISION).map_err(backend)? {
                state.revision = rev.value();
            }
            let table = txn.open_table(AUTH).map_err(backend)?;
            for row in table.iter().map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                let key = k.value();
                if let Some(name) = key.strip_prefix(AUTH_USER_PREFIX) {
                    let user = User::decode(v.value()).map_err(backend)?;
                    state.users.insert(name.to_string(), user);
                } else if let Some(name) = key.strip_prefix(AUTH_ROLE_PREFIX) {
                    let role = Role::decode(v.value()).map_err(backend)?;
                    state.roles.insert(name.to_string(), role);
                }
            }
            Ok(())
        })?;
        let ttl = if token_ttl.is_zero() {
            super::token::DEFAULT_TTL
        } else {
            token_ttl
        };
        Ok(Self {
            state: RwLock::new(state),
            tokens: SimpleTokens::new(ttl),
            store,
            bcrypt_cost: if (4..=31).contains(&bcrypt_cost) {
                bcrypt_cost
            } else {
                DEFAULT_BCRYPT_COST
            },
        })
    }

    /// Whether authentication is on.
    pub fn is_enabled(&self) -> bool {
        self.state.read().enabled
    }

    /// The auth revision (1 for a new store; each change of users, roles or permissions,
    /// and each `auth disable`, adds one).
    pub fn revision(&self) -> i64 {
        self.state.read().revision
    }

    /// Writes `changes` and the flags in one backend transaction, then applies them in
    /// memory. Called with the state locked for writing. `enabled` None keeps the flag;
    /// `bump` adds one to the auth revision.
    fn commit(
        &self,
        state: &mut State,
        changes: Vec<Change>,
        enabled: Option<bool>,
        bump: bool,
    ) -> Result<(), AuthError> {
        let enabled = enabled.unwrap_or(state.enabled);
        let revision = state.revision + i64::from(bump);
        self.store.with_database(|db| -> Result<(), AuthError> {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut table = txn.open_table(AUTH).map_err(backend)?;
                for change in &changes {
                    match change {
                        Change::PutUser(user) => {
                            let name = String::from_utf8_lossy(&user.name);
                            table
                                .insert(user_key(&name).as_str(), user.encode_to_vec().as_slice())
                                .map_err(backend)?;
                        }
                        Change::DeleteUser(name) => {
                            table.remove(user_key(name).as_str()).map_err(backend)?;
                        }
                        Change::PutRole(role) => {
                            let name = String::from_utf8_lossy(&role.name);
                            table
                                .insert(role_key(&name).as_str(), role.encode_to_vec().as_slice())
                                .map_err(backend)?;
                        }
                        Change::DeleteRole(name) => {
                            table.remove(role_key(name).as_str()).map_err(backend)?;
                        }
                    }
                }
                let mut meta = txn.open_table(META).map_err(backend)?;
                meta.insert(META_AUTH_ENABLED, i64::from(enabled))
                    .map_err(backend)?;
                meta.insert(META_AUTH_REVISION, revision).map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })?;
        for change in changes {
            match change {
                Change::PutUser(user) => {
                    state
                        .users
                        .insert(String::from_utf8_lossy(&user.name).into_owned(), user);
                }
                Change::DeleteUser(name) => {
                    state.users.remove(&name);
                }
                Change::PutRole(role) => {
                    state
                        .roles
                        .insert(String::from_utf8_lossy(&role.name).into_owned(), role);
                }
                Change::DeleteRole(name) => {
                    state.roles.remove(&name);
                }
            }
        }
        state.enabled = enabled;
        state.revision = revision;
        state.permissions.clear();
        Ok(())
    }

    /// Who sent a request that carries `token` (gRPC metadata) or a client certificate
    /// with common name `common_name`. A token decides when there is one; a bad one is an
    /// error, never a fallback to the certificate.
    pub fn caller(
        &self,
        token: Option<&str>,
        common_name: Option<&str>,
    ) -> Result<Caller, AuthError> {
        if !self.is_enabled() {
            return Ok(Caller::Anyone);
        }
        if let Some(token) = token {
            return self
                .tokens
                .user_of(token)
                .map(Caller::User)
                .ok_or(AuthError::InvalidAuthToken);
        }
        Ok(match common_name {
            Some(name) => Caller::User(name.to_string()),
            None => Caller::Nobody,
        })
    }

    /// Whether `caller` may do `wanted` (`Read` or `Write`) on `key`, or on `[key,
    /// range_end)`.
    pub fn check(
        &self,
        caller: &Caller,
        wanted: PermType,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let name = match caller {
            Caller::Anyone => return Ok(()),
            Caller::Nobody => {
                return if self.is_enabled() {
                    Err(AuthError::UserEmpty)
                } else {
                    Ok(())
                }
            }
            Caller::User(name) => name,
        };
        let permissions = {
            let state = self.state.read();
            if !state.enabled {
                return Ok(());
            }
            let Some(user) = state.users.get(name) else {
                return Err(AuthError::PermissionDenied);
            };
            if user.roles.iter().any(|r| r == ROOT) {
                return Ok(());
            }
            match state.permissions.get(name) {
                Some(p) => p.clone(),
                None => {
                    let computed = Arc::new(UserPermissions::of(
                        user.roles.iter().filter_map(|r| state.roles.get(r)),
                    ));
                    drop(state);
                    self.state
                        .write()
                        .permissions
                        .insert(name.clone(), computed.clone());
                    computed
                }
            }
        };
        if permissions.allows(wanted, key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether `caller` is an administrator (has the root role).
    pub fn check_admin(&self, caller: &Caller) -> Result<(), AuthError> {
        let state = self.state.read();
        Self::admin(&state, caller)
    }

    fn admin(state: &State, caller: &Caller) -> Result<(), AuthError> {
        if !state.enabled {
            return Ok(());
        }
        match caller {
            Caller::Anyone => Ok(()),
            Caller::Nobody => Err(AuthError::UserEmpty),
            Caller::User(name) if name.is_empty() => Err(AuthError::UserEmpty),
            Caller::User(name) => match state.users.get(name) {
                None => Err(AuthError::UserNotFound),
                Some(u) if u.roles.iter().any(|r| r == ROOT) => Ok(()),
                Some(_) => Err(AuthError::PermissionDenied),
            },
        }
    }

    /// Whether `caller` passes every check (authentication off, or the root role).
    pub fn is_root(&self, caller: &Caller) -> bool {
        match caller {
            Caller::Anyone => true,
            Caller::Nobody => !self.is_enabled(),
            Caller::User(name) => {
                let state = self.state.read();
                !state.enabled || state.has_root_role(name)
            }
        }
    }

    /// `auth enable`: refused without a root user that has the root role.
    pub fn enable(&self, caller: &Caller) -> Result<(), AuthError> {
        let mut state = self.state.write();
        if state.enabled {
            return Self::admin(&state, caller);
        }
        if !state.users.contains_key(ROOT) {
            return Err(AuthError::RootUserNotExist);
        }
        if !state.has_root_role(ROOT) {
            return Err(AuthError::RootRoleNotExist);
        }
        self.commit(&mut state, Vec::new(), Some(true), false)
    }

    /// `auth disable`: signs everyone out.
    pub fn disable(&self, caller: &Caller) -> Result<(), AuthError> {
        let mut state = self.state.write();
        Self::admin(&state, caller)?;
        if !state.enabled {
            return Ok(());
        }
        self.commit(&mut state, Vec::new(), Some(false), true)?;
        self.tokens.revoke_all();
        Ok(())
    }

    /// `auth status`: whether it is on, and the auth revision.
    pub fn status(&self, caller: &Caller) -> Result<(bool, i64), AuthError> {
        let state = self.state.read();
        Self::admin(&state, caller)?;
        Ok((state.enabled, state.revision))
    }

    /// Signs a user in with a password; returns a token.
    pub fn authenticate(&self, name: &str, password: &str) -> Result<String, AuthError> {
        let hash = {
            let state = self.state.read();
            if !state.enabled {
                return Err(AuthError::AuthNotEnabled);
            }
            let user = state.users.get(name).ok_or(AuthError::AuthFailed)?;
            if user.no_password() {
                return Err(AuthError::NoPasswordUser);
            }
            String::from_utf8_lossy(&user.password).into_owned()
        };
        if !bcrypt::verify(password, &hash).unwrap_or(false) {
            return Err(AuthError::AuthFailed);
        }
        Ok(self.tokens.issue(name))
    }

    /// The bcrypt hash of `password` (etcd's `$2a$` form).
    pub fn hash_password(&self, password: &str) -> Result<Vec<u8>, AuthError> {
        let hashed = bcrypt::hash_with_result(password, self.bcrypt_cost).map_err(backend)?;
        Ok(hashed
            .format_for_version(bcrypt::Version::TwoA)
            .into_bytes())
    }

    /// `user add`. `password_hash` is the bcrypt hash (None for a no-password user).
    pub fn user_add(
        &self,
        caller: &Caller,
        name: &str,
        password_hash: Option<Vec<u8>>,
    ) -> Result<(), AuthError> {
        let mut state = self.state.write();
        Self::admin(&state, caller)?;
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if state.users.contains_key(name) {
            return Err(AuthError::UserAlreadyExist);
        }
        let user = User {
            name: name.as_bytes().to_vec(),
            password: password_hash.clone().unwrap_or_default(),
            roles: Vec::new(),
            options: Some(UserAddOptions {
                no_password: password_hash.is_none(),
            }),
        };
        self.commit(&mut state, vec![Change::PutUser(user)], None, true)
    }

    /// `user delete`: also signs the user out.
    pub fn user_delete(&self, caller: &Caller, name: &str) -> Result<(), AuthError> {
        let mut state = self.state.write();
        Self::admin(&state, caller)?;
        if name == ROOT && state.enabled {
            return Err(AuthError::InvalidAuthMgmt);
        }
        if !state.users.contains_key(name) {
            return Err(AuthError::UserNotFound);
        }
        self.commit(
            &mut state,
            vec![Change::DeleteUser(name.to_string())],
            None,
            true,
        )?;
        self.tokens.revoke_user(name);
        Ok(())
    }

    /// `user passwd`: also signs the user out.
    pub fn user_change_password(
        &self,
        caller: &Caller,
        name: &str,
        password_hash: Vec<u8>,
    ) -> Result<(), AuthError> {
        let mut state = self.state.write();
        Self::admin(&state, caller)?;
        let mut user = state
            .users
            .get(name)
            .cloned()
            .ok_or(AuthError::UserNotFound)?;
        if !user.no_password() {
            user.password = password_hash;
        }
        self.commit(&mut state, vec![Change::PutUser(user)], None, true)?;
        self.tokens.revoke_user(name);
        Ok(())
    }

    /// `user grant-role` (granting it again changes nothing).
    pub fn user_grant_role(
        &self,
        caller: &Caller,
        name: &str,
        role: &str,
    ) -> Result<(), AuthError> {
        let mut state = self.state.write();
        Self::admin(&state, caller)?;
        let mut user = state
            .users
            .get(name)
            .cloned()
            .ok_or(AuthError::UserNotFound)?;
        if role != ROOT && !state.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        if user.roles.iter().any(|r| r == role) {
            return Ok(());
        }
        user.roles.push(role.to_string());
        user.roles.sort();
        self.commit(&mut state, vec![Change::PutUser(user)], None, true)
    }

    /// `user revoke-role`.
    pub fn user_revoke_role(
        &self,
        caller: &Caller,
        name: &str,
        role: &str,
    ) -> Result<(), AuthError> {
        let mut state = self.state.write();
        Self::admin(&state, caller)?;
        if name == ROOT && role == ROOT && state.enabled {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let mut user = state
            .users
            .get(name)
            .cloned()
            .ok_or(AuthError::UserNotFound)?;
        let before = user.roles.len();
        user.roles.retain(|r| r != role);
        if user.roles.len() == before {
            return Err(AuthError::RoleNotGranted);
        }
        self.commit(&mut state, vec![Change::PutUser(user)], None, true)
    }

    /// `user get`: its roles, sorted. A user may read itself.
    pub fn user_get(&self, caller: &Caller, name: &str) -> Result<Vec<String>, AuthError> {
        let state = self.state.read();
        if let Err(e) = Self::admin(&state, caller) {
            if *caller != Caller::User(name.to_string()) {
                return Err(e);
            }
        }
        state
            .users
            .get(name)
            .map(|u| u.roles.clone())
            .ok_or(AuthError::UserNotFound)
    }

    /// `user list`, sorted.
    pub fn user_list(&self, caller: &Caller) -> Result<Vec<String>, AuthError> {
        let state = self.state.read();
        Self::admin(&state, caller)?;
        Ok(state.users.keys().cloned().collect())
    }

    /// `role add`.
    pub fn role_add(&self, caller: &Caller, name: &str) -> Result<(), AuthError> {
        let mut state = self.state.write();
        Self::admin(&state, caller)?;
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        if state.roles.contains_key(name) {
            return Err(AuthError::RoleAlreadyExist);
        }
        let role = Role {
            name: name.as_bytes().to_vec(),
            key_permission: Vec::new(),
        };
        self.commit(&mut state, vec![Change::PutRole(role)], None, true)
    }

    /// `role delete`: also taken from every user that had it.
    pub fn role_delete(&self, caller: &Caller, name: &str) -> Result<(), AuthError> {
        let mut state = self.state.write();
        Self::admin(&state, caller)?;
        if name == ROOT && state.enabled {
            return Err(AuthError::InvalidAuthMgmt);
        }
        if !state.roles.contains_key(name) {
            return Err(AuthError::RoleNotFound);
        }
        let mut changes = vec![Change::DeleteRole(name.to_string())];
        for user in state.users.values() {
            if user.roles.iter().any(|r| r == name) {
                let mut user = user.clone();
                user.roles.retain(|r| r != name);
                changes.push(Change::PutUser(user));
            }
        }
        self.commit(&mut state, changes, None, true)
    }

    /// `role get`: its permissions, sorted by key. A user may read its own roles.
    pub fn role_get(&self, caller: &Caller, name: &str) -> Result<Vec<Permission>, AuthError> {
        let state = self.state.read();
        if let Err(e) = Self::admin(&state, caller) {
            let holds = matches!(caller, Caller::User(u)
                if state.users.get(u).is_some_and(|u| u.roles.iter().any(|r| r == name)));
            if !holds {
                return Err(e);
            }
        }
        state
            .roles
            .get(name)
            .map(|r| r.key_permission.clone())
            .ok_or(AuthError::RoleNotFound)
    }

    /// `role list`, sorted.
    pub fn role_list(&self, caller: &Caller) -> Result<Vec<String>, AuthError> {
        let state = self.state.read();
        Self::admin(&state, caller)?;
        Ok(state.roles.keys().cloned().collect())
    }

    /// `role grant-permission`: a permission on the same key and range replaces the old one.
    pub fn role_grant_permission(
        &self,
        caller: &Caller,
        name: &str,
        permission: Option<Permission>,
    ) -> Result<(), AuthError> {
        let mut state = self.state.write();
        Self::admin(&state, caller)?;
        let permission = permission.ok_or(AuthError::PermissionNotGiven)?;
        if !valid_permission_range(&permission.key, &permission.range_end)
            || PermType::from_number(permission.perm_type).is_none()
        {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let mut role = state
            .roles
            .get(name)
            .cloned()
            .ok_or(AuthError::RoleNotFound)?;
        match role
            .key_permission
            .iter_mut()
            .find(|p| p.key == permission.key && p.range_end == permission.range_end)
        {
            Some(existing) => existing.perm_type = permission.perm_type,
            None => {
                role.key_permission.push(permission);
                role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        self.commit(&mut state, vec![Change::PutRole(role)], None, true)
    }

    /// `role revoke-permission`: the permission on exactly this key and range.
    pub fn role_revoke_permission(
        &self,
        caller: &Caller,
        name: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let mut state = self.state.write();
        Self::admin(&state, caller)?;
        let mut role = state
            .roles
            .get(name)
            .cloned()
            .ok_or(AuthError::RoleNotFound)?;
        let before = role.key_permission.len();
        role.key_permission
            .retain(|p| !(p.key == key && p.range_end == range_end));
        if role.key_permission.len() == before {
            return Err(AuthError::PermissionNotGranted);
        }
        self.commit(&mut state, vec![Change::PutRole(role)], None, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_range_must_end_after_its_key() {
        assert!(valid_permission_range(b"a", b""));
        assert!(valid_permission_range(b"a", b"b"));
        assert!(valid_permission_range(b"a", b"\0"));
        assert!(
            !valid_permission_range(b"b", b"a"),
            "etcd 3.5 refuses an inverted range"
        );
        assert!(!valid_permission_range(b"a", b"a"));
        assert!(!valid_permission_range(b"", b""));
    }
}
