//! What a renderer that installs one `dest` again and again remembers of its last install,
//! so that a render it knows to be new skips reading `dest` back.
//!
//! confd compares every render with `dest` on disk, and so does [`install`](crate::install):
//! four of a render's nine file system calls open, stat, read and close `dest`. A caller that
//! installed `dest` itself knows what it left there. When the new render differs from that
//! (text, mode or owner), the compare can only find `dest` equal if something else has since
//! written exactly the new render into it; the render is then installed (and reloaded) once
//! more, where confd would leave it. Every other outcome is confd's: a render equal to the
//! remembered one is still compared with `dest` on disk, so an edit made meanwhile is undone.

use std::sync::Mutex;

/// The text, mode and owner last installed (or found already in place) at one `dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Installed {
    text: String,
    mode: u32,
    owner: (Option<u32>, Option<u32>),
}

/// What its owner last installed at one `dest`: nothing known until its first install.
#[derive(Debug, Default)]
pub struct LastInstall(Mutex<Option<Installed>>);

impl LastInstall {
    /// Whether `text` with `mode` and `owner` is known to differ from what was last
    /// installed; `false` when nothing is known, or when it is the same.
    pub(crate) fn known_to_differ(
        &self,
        text: &str,
        mode: u32,
        owner: (Option<u32>, Option<u32>),
    ) -> bool {
        let Ok(last) = self.0.lock() else {
            return false;
        };
        last.as_ref()
            .is_some_and(|l| l.text != text || l.mode != mode || l.owner != owner)
    }

    /// `dest` now holds `text` with `mode` and `owner`.
    pub(crate) fn remember(&self, text: String, mode: u32, owner: (Option<u32>, Option<u32>)) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(Installed { text, mode, owner });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_remembered_install_that_differs_is_known_to_differ() {
        let last = LastInstall::default();
        assert!(!last.known_to_differ("a", 0o644, (None, None)));
        last.remember("a".into(), 0o644, (None, None));
        assert!(!last.known_to_differ("a", 0o644, (None, None)));
        assert!(last.known_to_differ("b", 0o644, (None, None)));
        assert!(last.known_to_differ("a", 0o600, (None, None)));
        assert!(last.known_to_differ("a", 0o644, (Some(0), None)));
        assert!(last.known_to_differ("a", 0o644, (None, Some(0))));
    }
}
