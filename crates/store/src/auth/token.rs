//! etcd's simple tokens: `<16 random letters>.<index>`, kept in memory (a restart signs
//! everyone out), each valid for the TTL since its last use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

/// etcd's `--auth-token-ttl` default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

struct Entry {
    user: String,
    expires: Instant,
}

/// The tokens handed out and not yet expired or revoked.
pub struct SimpleTokens {
    ttl: Duration,
    tokens: Mutex<HashMap<String, Entry>>,
    index: AtomicU64,
}

impl SimpleTokens {
    /// Tokens valid for `ttl` after their last use.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            tokens: Mutex::new(HashMap::new()),
            index: AtomicU64::new(0),
        }
    }

    /// A new token for `user`.
    pub fn issue(&self, user: &str) -> String {
        let mut rng = rand::rng();
        let letters: String = (0..16)
            .map(|_| {
                let n = rng.random_range(0..52u8);
                char::from(if n < 26 { b'a' + n } else { b'A' + n - 26 })
            })
            .collect();
        let index = self.index.fetch_add(1, Ordering::Relaxed) + 1;
        let token = format!("{letters}.{index}");
        let now = Instant::now();
        let mut tokens = self.tokens.lock();
        // Expired tokens go as new ones come, so the map stays as large as the live ones.
        tokens.retain(|_, e| e.expires > now);
        tokens.insert(
            token.clone(),
            Entry {
                user: user.to_string(),
                expires: now + self.ttl,
            },
        );
        token
    }

    /// The user a token belongs to, its TTL renewed; None when unknown or expired.
    pub fn user_of(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut tokens = self.tokens.lock();
        match tokens.get_mut(token) {
            Some(entry) if entry.expires > now => {
                entry.expires = now + self.ttl;
                Some(entry.user.clone())
            }
            Some(_) => {
                tokens.remove(token);
                None
            }
            None => None,
        }
    }

    /// Signs `user` out everywhere (deleted, or a new password).
    pub fn revoke_user(&self, user: &str) {
        self.tokens.lock().retain(|_, e| e.user != user);
    }

    /// Signs everyone out (authentication disabled).
    pub fn revoke_all(&self) {
        self.tokens.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_look_like_etcds_and_end_with_the_user() {
        let tokens = SimpleTokens::new(DEFAULT_TTL);
        let a = tokens.issue("alice");
        let (letters, index) = a.split_once('.').expect("a dot");
        assert_eq!(letters.len(), 16);
        assert!(letters.chars().all(|c| c.is_ascii_alphabetic()));
        assert_eq!(index, "1");
        let b = tokens.issue("bob");
        assert_eq!(tokens.user_of(&a).as_deref(), Some("alice"));
        tokens.revoke_user("alice");
        assert_eq!(tokens.user_of(&a), None);
        assert_eq!(tokens.user_of(&b).as_deref(), Some("bob"));
        tokens.revoke_all();
        assert_eq!(tokens.user_of(&b), None);
        assert_eq!(tokens.user_of("nonsense"), None);
    }

    #[test]
    fn an_unused_token_expires() {
        let tokens = SimpleTokens::new(Duration::from_millis(1));
        let t = tokens.issue("alice");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(tokens.user_of(&t), None);
    }
}
