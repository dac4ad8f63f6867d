//! Whether a user's permissions cover a request: etcd's interval rules. A permission is a
//! point `[key, key\0)`, a range `[key, end)`, or open ended (`end` = `\0`); a request for
//! one key needs a permission containing it, a request for a range needs the union of the
//! permissions to cover all of it without a gap.

use super::model::{PermType, Role};

/// An interval of keys; `end` None is open ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// The interval a permission or a request names (`range_end` empty: one key).
    fn of(key: &[u8], range_end: &[u8]) -> Self {
        if range_end.is_empty() {
            let mut end = key.to_vec();
            end.push(0);
            Self {
                begin: key.to_vec(),
                end: Some(end),
            }
        } else if range_end == [0] {
            Self {
                begin: key.to_vec(),
                end: None,
            }
        } else {
            Self {
                begin: key.to_vec(),
                end: Some(range_end.to_vec()),
            }
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.begin.as_slice() <= key && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// One user's permissions, merged from its roles: read and write intervals.
#[derive(Debug, Clone, Default)]
pub struct UserPermissions {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

impl UserPermissions {
    /// The permissions of `roles` (unknown roles are skipped).
    pub fn of<'a>(roles: impl IntoIterator<Item = &'a Role>) -> Self {
        let mut perms = Self::default();
        for role in roles {
            for p in &role.key_permission {
                let interval = Interval::of(&p.key, &p.range_end);
                let kind = PermType::from_number(p.perm_type).unwrap_or(PermType::Read);
                if kind.allows(PermType::Read) {
                    perms.read.push(interval.clone());
                }
                if kind.allows(PermType::Write) {
                    perms.write.push(interval);
                }
            }
        }
        perms.read.sort_by(|a, b| a.begin.cmp(&b.begin));
        perms.write.sort_by(|a, b| a.begin.cmp(&b.begin));
        perms
    }

    /// Whether `wanted` (`Read` or `Write`) is allowed on `key` (`range_end` empty), or on
    /// all of `[key, range_end)`.
    pub fn allows(&self, wanted: PermType, key: &[u8], range_end: &[u8]) -> bool {
        let granted = if wanted == PermType::Write {
            &self.write
        } else {
            &self.read
        };
        if range_end.is_empty() {
            return granted.iter().any(|i| i.contains(key));
        }
        let request = Interval::of(key, range_end);
        // Everything from the request's start up to `covered` is covered; the granted
        // intervals, in order of their start, extend it until a gap appears.
        let mut covered = request.begin;
        for interval in granted {
            if interval.begin > covered {
                return false;
            }
            match &interval.end {
                None => return true,
                Some(end) if *end > covered => covered = end.clone(),
                Some(_) => {}
            }
            if request.end.as_ref().is_some_and(|end| covered >= *end) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::Permission;
    use super::*;

    fn role(perms: &[(PermType, &str, &str)]) -> Role {
        Role {
            name: b"r".to_vec(),
            key_permission: perms
                .iter()
                .map(|(t, k, e)| Permission {
                    perm_type: t.number(),
                    key: k.as_bytes().to_vec(),
                    range_end: e.as_bytes().to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn one_key_needs_a_permission_containing_it() {
        let p = UserPermissions::of([&role(&[
            (PermType::Read, "/a/", "/a0"),
            (PermType::Write, "k", ""),
        ])]);
        assert!(p.allows(PermType::Read, b"/a/x", b""));
        assert!(!p.allows(PermType::Read, b"/b", b""));
        assert!(!p.allows(PermType::Write, b"/a/x", b""));
        assert!(p.allows(PermType::Write, b"k", b""));
        assert!(!p.allows(PermType::Write, b"k2", b""));
    }

    #[test]
    fn a_range_needs_the_union_to_cover_it_without_a_gap() {
        let p = UserPermissions::of([&role(&[
            (PermType::ReadWrite, "a", "c"),
            (PermType::Read, "c", "e"),
            (PermType::Read, "f", "g"),
        ])]);
        assert!(
            p.allows(PermType::Read, b"a", b"e"),
            "touching intervals cover"
        );
        assert!(p.allows(PermType::Read, b"b", b"d"));
        assert!(!p.allows(PermType::Read, b"a", b"g"), "the gap [e, f)");
        assert!(!p.allows(PermType::Write, b"a", b"d"));
        assert!(p.allows(PermType::Write, b"a", b"c"));
        assert!(
            !p.allows(PermType::Read, b"a", b"\0"),
            "open ended needs an open grant"
        );
        let open = UserPermissions::of([&role(&[(PermType::Read, "m", "\0")])]);
        assert!(open.allows(PermType::Read, b"m", b"\0"));
        assert!(open.allows(PermType::Read, b"x", b"z"));
        assert!(!open.allows(PermType::Read, b"a", b"\0"));
    }

    #[test]
    fn everything_is_the_prefix_of_the_empty_key() {
        // etcdctl's `role grant-permission r read "" --prefix` stores ["\0", "\0").
        let all = UserPermissions::of([&role(&[(PermType::Read, "\0", "\0")])]);
        assert!(all.allows(PermType::Read, b"\0", b"\0"));
        assert!(all.allows(PermType::Read, b"anything", b""));
    }
}
