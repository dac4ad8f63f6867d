//! Which key a request touches: fixed-size keys drawn from a key space, either at random or
//! in order, as etcd's benchmark tool does.

use rand::Rng;

/// Generates keys of `size` bytes in a space of `space` distinct keys.
#[derive(Debug, Clone)]
pub struct KeyGen {
    size: usize,
    space: u64,
    sequential: bool,
    prefix: String,
}

impl KeyGen {
    /// Keys of exactly `size` bytes: `prefix` then the key's number, zero-padded; `space`
    /// distinct ones. Fails when `size` cannot hold the prefix and the largest number.
    pub fn new(prefix: &str, size: usize, space: u64, sequential: bool) -> Result<Self, String> {
        let space = space.max(1);
        let digits = (space - 1).to_string().len();
        let needed = prefix.len() + digits;
        if size < needed {
            return Err(format!(
                "--key-size {size} is too small for --key-space-size {space}: keys need at least \
                 {needed} bytes ({prefix:?} and {digits} digits)"
            ));
        }
        Ok(Self {
            size,
            space,
            sequential,
            prefix: prefix.to_string(),
        })
    }

    /// The keys `config` asks for, under `prefix`.
    pub(crate) fn from_config(
        prefix: &str,
        config: &crate::BenchConfig,
    ) -> Result<Self, crate::BenchError> {
        Self::new(
            prefix,
            config.key_size,
            config.key_space_size,
            config.sequential_keys,
        )
        .map_err(crate::BenchError::Invalid)
    }

    /// Number of distinct keys.
    pub fn space(&self) -> u64 {
        self.space
    }

    /// The key for request number `i`: `i` modulo the space when sequential, random otherwise.
    pub fn key(&self, i: u64) -> Vec<u8> {
        self.nth(self.pick(i))
    }

    /// `n` distinct keys for request number `i` (one transaction's keys): consecutive ones from
    /// where `key(i)` would be.
    pub fn keys(&self, i: u64, n: usize) -> Vec<Vec<u8>> {
        let first = if self.sequential {
            i.wrapping_mul(n as u64)
        } else {
            self.pick(i)
        };
        (0..n as u64)
            .map(|j| self.nth((first + j) % self.space))
            .collect()
    }

    fn pick(&self, i: u64) -> u64 {
        if self.sequential {
            i % self.space
        } else {
            rand::rng().random_range(0..self.space)
        }
    }

    /// The `n`th key of the space.
    pub fn nth(&self, n: u64) -> Vec<u8> {
        let width = self.size - self.prefix.len();
        format!("{}{n:0width$}", self.prefix).into_bytes()
    }
}

/// A value of `size` random printable bytes.
pub fn value(size: usize) -> Vec<u8> {
    let mut rng = rand::rng();
    (0..size).map(|_| rng.random_range(b'a'..=b'z')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_size_too_small_for_the_space_is_refused() {
        assert!(KeyGen::new("b/", 8, 1_000_000, false).is_ok());
        let e = KeyGen::new("b/", 8, 1_000_001, false)
            .err()
            .unwrap_or_default();
        assert!(e.contains("--key-size 8") && e.contains("9 bytes"), "{e}");
    }

    #[test]
    fn transaction_keys_are_distinct() {
        for sequential in [true, false] {
            let g = KeyGen::new("b/", 8, 4, sequential).unwrap_or_else(|e| panic!("{e}"));
            for i in 0..50 {
                let keys: std::collections::BTreeSet<Vec<u8>> = g.keys(i, 4).into_iter().collect();
                assert_eq!(keys.len(), 4);
            }
        }
    }

    #[test]
    fn sequential_keys_cycle_through_the_space_and_have_the_size() {
        let g = KeyGen::new("b/", 32, 3, true).unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<Vec<u8>> = (0..4).map(|i| g.key(i)).collect();
        assert_eq!(keys[0], keys[3]);
        assert!(keys[0] < keys[1] && keys[1] < keys[2]);
        assert!(keys.iter().all(|k| k.len() == 32 && k.starts_with(b"b/")));
    }

    #[test]
    fn random_keys_stay_in_the_space() {
        let g = KeyGen::new("b/", 8, 5, false).unwrap_or_else(|e| panic!("{e}"));
        let all: std::collections::BTreeSet<Vec<u8>> = (0..5).map(|n| g.nth(n)).collect();
        for i in 0..200 {
            assert!(all.contains(&g.key(i)));
        }
    }
}
