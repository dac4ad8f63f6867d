//! Who may call the API: named bearer tokens with a role and the environments they cover,
//! stored as SHA-256 hashes. One line per token:
//!
//! ```text
//! # name:role:environments:sha256-of-token
//! alice:admin:*:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
//! ci-staging:admin:staging,qa:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9
//! dashboard:read:*:baa5a0964d3320fbc0c6a922140453c8513ea24ab8fd0577034804a967248096
//! ```
//!
//! The name is the identity the history and the audit log record; no request header can
//! change it. A presented token is hashed and compared with every entry in constant time, so
//! neither the file nor the timing of a refusal gives a token away.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read configurations, history and rollout status.
    Read,
    /// Read, and create, change, delete and roll back configurations.
    Admin,
}

impl Role {
    /// The role's name in the token file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// The environments a token covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every environment (`*`).
    All,
    /// Only these.
    Only(Vec<String>),
}

impl Scope {
    /// Whether `env` is covered.
    pub fn covers(&self, env: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(envs) => envs.iter().any(|e| e == env),
        }
    }
}

/// One accepted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Who holds it: recorded in history and the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Where.
    pub scope: Scope,
    hash: [u8; 32],
}

/// The accepted tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    identities: Vec<Identity>,
}

/// Why a token file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// A line is malformed.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No token at all: every request would be refused.
    #[error("no tokens: every request would be refused")]
    Empty,
}

/// The SHA-256 of a token, as stored in the file (lower-case hex).
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random token: 256 bits, URL-safe.
pub fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The token file line for a token.
pub fn token_line(name: &str, role: Role, scope: &Scope, token: &str) -> String {
    let envs = match scope {
        Scope::All => "*".to_string(),
        Scope::Only(envs) => envs.join(","),
    };
    format!("{name}:{}:{envs}:{}", role.as_str(), hash_token(token))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// Parses the environments field: `*` or a comma-separated list of environment names.
pub fn parse_scope(text: &str) -> Result<Scope, String> {
    if text == "*" {
        return Ok(Scope::All);
    }
    let mut envs = Vec::new();
    for env in text.split(',') {
        crate::keys::validate_env(env).map_err(|e| e.to_string())?;
        envs.push(env.to_string());
    }
    Ok(Scope::Only(envs))
}

/// Parses a role name.
pub fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "admin" => Ok(Role::Admin),
        "read" => Ok(Role::Read),
        other => Err(format!("unknown role {other:?}: expected admin or read")),
    }
}

impl Tokens {
    /// Reads a token file; a malformed line is an error naming the line.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokenFileError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text)
    }

    /// Parses token file text.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut identities: Vec<Identity> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let bad = |reason: String| TokenFileError::Line {
                line: n + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(':').collect();
            let [name, role, envs, hash] = fields[..] else {
                return Err(bad(format!(
                    "expected name:role:environments:sha256-of-token (create one with `ferry token create`), got {} field(s)",
                    fields.len()
                )));
            };
            if !valid_name(name) {
                return Err(bad(format!(
                    "name {name:?} must be 1 to 64 letters, digits, '-', '_', '.' or '@'"
                )));
            }
            let role = parse_role(role).map_err(bad)?;
            let scope = parse_scope(envs).map_err(bad)?;
            let hash = parse_hash(&hash.to_ascii_lowercase()).ok_or_else(|| {
                bad("the last field must be the token's SHA-256 in hex (64 characters)".into())
            })?;
            if identities.iter().any(|i| i.name == name) {
                return Err(bad(format!("name {name:?} appears twice")));
            }
            if identities.iter().any(|i| i.hash == hash) {
                return Err(bad("the same token appears twice".into()));
            }
            identities.push(Identity {
                name: name.to_string(),
                role,
                scope,
                hash,
            });
        }
        if identities.is_empty() {
            return Err(TokenFileError::Empty);
        }
        Ok(Self { identities })
    }

    /// A single new random admin token for every environment (the demo); the token is
    /// returned once and kept only as its hash.
    pub fn generate(name: &str) -> (Self, String) {
        let token = new_token();
        let line = token_line(name, Role::Admin, &Scope::All, &token);
        match Self::parse(&line) {
            Ok(tokens) => (tokens, token),
            // The line is built from a fixed role and scope; only a bad name can fail.
            Err(_) => (Self::default(), token),
        }
    }

    /// The identity a presented bearer token belongs to. Every entry is compared, in
    /// constant time, whatever matched.
    pub fn authenticate(&self, token: &str) -> Option<&Identity> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for identity in &self.identities {
            if bool::from(identity.hash.ct_eq(&presented)) {
                found = Some(identity);
            }
        }
        found
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_hash_with_their_name_role_and_scope() {
        let text = format!(
            "# comment\n{}\n{}\n",
            token_line("alice", Role::Admin, &Scope::All, "alice-token-0123456789"),
            token_line(
                "ci",
                Role::Read,
                &Scope::Only(vec!["staging".into(), "qa".into()]),
                "ci-token-0123456789"
            ),
        );
        assert!(!text.contains("alice-token"), "tokens are stored hashed");
        let tokens = Tokens::parse(&text).expect("valid file");
        let alice = tokens
            .authenticate("alice-token-0123456789")
            .expect("alice");
        assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Admin));
        assert!(alice.scope.covers("production"));
        let ci = tokens.authenticate("ci-token-0123456789").expect("ci");
        assert!(ci.scope.covers("qa") && !ci.scope.covers("production"));
        assert!(tokens.authenticate("ci-token-012345678").is_none());
        assert!(tokens.authenticate("").is_none());
    }

    #[test]
    fn malformed_lines_are_named() {
        let hash = hash_token("x");
        for (text, needle) in [
            (
                "admin:0123456789abcdef0123456789abcdef".to_string(),
                "line 1: expected name:role",
            ),
            (format!("a b:admin:*:{hash}"), "name \"a b\""),
            (format!("a:root:*:{hash}"), "unknown role \"root\""),
            (format!("a:admin:prod.eu:{hash}"), "environment \"prod.eu\""),
            ("a:admin:*:abc".to_string(), "SHA-256 in hex"),
            (
                format!("a:admin:*:{hash}\na:read:*:{}", hash_token("y")),
                "line 2: name \"a\" appears twice",
            ),
            (
                format!("a:admin:*:{hash}\nb:read:*:{hash}"),
                "the same token appears twice",
            ),
            ("# nothing\n".to_string(), "no tokens"),
        ] {
            let err = Tokens::parse(&text).expect_err("refused").to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn generated_tokens_work_once_handed_out() {
        let (tokens, token) = Tokens::generate("demo-admin");
        let who = tokens.authenticate(&token).expect("the generated token");
        assert_eq!((who.name.as_str(), who.role), ("demo-admin", Role::Admin));
    }
}
