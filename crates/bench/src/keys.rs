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
    /// Keys of `size` bytes (at least enough for the number), `space` distinct ones.
    pub fn new(prefix: &str, size: usize, space: u64, sequential: bool) -> Self {
        Self {
            size,
            space: space.max(1),
            sequential,
            prefix: prefix.to_string(),
        }
    }

    /// Number of distinct keys.
    pub fn space(&self) -> u64 {
        self.space
    }

    /// The key for request number `i`: `i` modulo the space when sequential, random otherwise.
    pub fn key(&self, i: u64) -> Vec<u8> {
        let n = if self.sequential {
            i % self.space
        } else {
            rand::rng().random_range(0..self.space)
        };
        self.nth(n)
    }

    /// The `n`th key of the space.
    pub fn nth(&self, n: u64) -> Vec<u8> {
        let digits = format!("{n:020}");
        let mut key = Vec::with_capacity(self.size.max(self.prefix.len() + digits.len()));
        key.extend_from_slice(self.prefix.as_bytes());
        // Pad between prefix and number so keys sort in numeric order and have `size` bytes.
        let pad = self.size.saturating_sub(self.prefix.len() + digits.len());
        key.extend(std::iter::repeat_n(b'0', pad));
        key.extend_from_slice(digits.as_bytes());
        key
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
    fn sequential_keys_cycle_through_the_space_and_have_the_size() {
        let g = KeyGen::new("b/", 32, 3, true);
        let keys: Vec<Vec<u8>> = (0..4).map(|i| g.key(i)).collect();
        assert_eq!(keys[0], keys[3]);
        assert!(keys[0] < keys[1] && keys[1] < keys[2]);
        assert!(keys.iter().all(|k| k.len() == 32 && k.starts_with(b"b/")));
    }

    #[test]
    fn random_keys_stay_in_the_space() {
        let g = KeyGen::new("b/", 8, 5, false);
        let all: std::collections::BTreeSet<Vec<u8>> = (0..5).map(|n| g.nth(n)).collect();
        for i in 0..200 {
            assert!(all.contains(&g.key(i)));
        }
    }
}
