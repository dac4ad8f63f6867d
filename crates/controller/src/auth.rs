//! Bearer tokens from a file: `admin:<token>` or `read:<token>`, one per line.

use std::collections::HashMap;
use std::path::Path;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read everything.
    Read,
    /// Read and change configurations.
    Admin,
}

/// The accepted tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: HashMap<String, Role>,
}

impl Tokens {
    /// Reads a token file; a malformed line is an error naming the line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses token file text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut tokens = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (role, token) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected admin:TOKEN or read:TOKEN", n + 1))?;
            let role = match role {
                "admin" => Role::Admin,
                "read" => Role::Read,
                other => return Err(format!("line {}: unknown role {other:?}", n + 1)),
            };
            if token.len() < 16 {
                return Err(format!(
                    "line {}: tokens must be at least 16 characters",
                    n + 1
                ));
            }
            tokens.insert(token.to_string(), role);
        }
        if tokens.is_empty() {
            return Err("no tokens: every request would be refused".into());
        }
        Ok(Self { tokens })
    }

    /// A new random admin token (for the demo).
    pub fn generate() -> (Self, String) {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut tokens = HashMap::new();
        tokens.insert(token.clone(), Role::Admin);
        (Self { tokens }, token)
    }

    /// The role of a bearer token.
    pub fn role(&self, token: &str) -> Option<Role> {
        self.tokens.get(token).copied()
    }
}
