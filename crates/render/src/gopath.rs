//! Go's `path` package (slash-separated paths), as confd and memkv use it on keys: results
//! differ from a plain string split for `..`, `.`, doubled and trailing slashes.

/// `path.Clean`: the shortest equivalent path (`.` for an empty one).
pub fn clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// `path.Join`: the non-empty elements joined with `/`, cleaned (`""` if all are empty).
pub fn join(parts: &[&str]) -> String {
    let kept: Vec<&str> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    if kept.is_empty() {
        return String::new();
    }
    clean(&kept.join("/"))
}

/// `path.Dir`: everything before the last `/`, cleaned.
pub fn dir(p: &str) -> String {
    match p.rfind('/') {
        Some(i) => clean(&p[..=i]),
        None => clean(""),
    }
}

/// `path.Base`: the last element (`/` for a root, `.` for an empty path).
pub fn base(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/".into();
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_go_path() {
        for (input, cleaned) in [
            ("", "."),
            ("/", "/"),
            ("a/b/../c", "a/c"),
            ("/../a//b/./", "/a/b"),
            ("../../x", "../../x"),
        ] {
            assert_eq!(clean(input), cleaned, "{input}");
        }
        assert_eq!(join(&["/app", "/db/host"]), "/app/db/host");
        assert_eq!(join(&["/", ""]), "/");
        assert_eq!(join(&["", ""]), "");
        assert_eq!(join(&["/database/", "/"]), "/database");
        assert_eq!(dir("/a/b"), "/a");
        assert_eq!(dir("/a"), "/");
        assert_eq!(dir("a"), ".");
        assert_eq!(dir("/a//b/"), "/a/b");
        assert_eq!(base("/a/b/"), "b");
        assert_eq!(base("///"), "/");
        assert_eq!(base(""), ".");
    }
}
