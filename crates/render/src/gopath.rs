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

/// `path.ErrBadPattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPattern;

impl std::fmt::Display for BadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("syntax error in pattern")
    }
}

/// `path.Match`: `*` (not crossing `/`), `?`, `[...]` classes with ranges, `^` negation
/// and `\` escapes. A malformed pattern is an error whatever the name, as in Go 1.19,
/// which checks every chunk of the pattern before answering no.
pub fn matches(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let mut pattern = pattern.as_bytes();
    let mut name = name.as_bytes();
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&b'/'));
        }
        let (tail, ok) = match_chunk(chunk, name)?;
        if ok && (tail.is_empty() || !pattern.is_empty()) {
            name = tail;
            continue;
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                let (tail, ok) = match_chunk(chunk, &name[i + 1..])?;
                if ok && (tail.is_empty() || !pattern.is_empty()) {
                    name = tail;
                    continue 'pattern;
                }
                i += 1;
            }
        }
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Leading stars, then the chunk up to the next star outside a class.
fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let stars = pattern.iter().take_while(|&&b| b == b'*').count();
    let pattern = &pattern[stars..];
    let mut in_class = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_class = true,
            b']' => in_class = false,
            b'*' if !in_class => break,
            _ => {}
        }
        i += 1;
    }
    (stars > 0, &pattern[..i], &pattern[i..])
}

/// The first character at the start of `s` (a whole UTF-8 sequence) and its length.
fn first_char(s: &[u8]) -> (Option<char>, usize) {
    let len = match s.first() {
        None => return (None, 0),
        Some(b) if *b < 0x80 => 1,
        Some(b) if *b >= 0xF0 => 4,
        Some(b) if *b >= 0xE0 => 3,
        Some(_) => 2,
    };
    match s.get(..len).and_then(|b| std::str::from_utf8(b).ok()) {
        Some(text) => (text.chars().next(), len),
        None => (None, 1),
    }
}

/// Matches `chunk` against the start of `s`: the rest of `s` and whether it matched. The
/// whole chunk is read even after a mismatch, so that a malformed one is always an error.
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> Result<(&'a [u8], bool), BadPattern> {
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match c {
            b'[' => {
                let mut r = None;
                if !failed {
                    let (ch, n) = first_char(s);
                    r = ch;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = class_char(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = class_char(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if r.is_some_and(|r| lo <= r && r <= hi) {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = first_char(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                if c == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(BadPattern);
                    }
                }
                if !failed {
                    if chunk[0] != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { (&[], false) } else { (s, true) })
}

/// One character of a class (escaped or not); a class must go on after it.
fn class_char(chunk: &[u8]) -> Result<(char, &[u8]), BadPattern> {
    let mut chunk = match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(_) => chunk,
    };
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return Err(BadPattern);
        }
    }
    let (c, n) = first_char(chunk);
    let c = c.ok_or(BadPattern)?;
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((c, rest))
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

    #[test]
    fn matches_like_go_path_match() {
        for (pattern, name, want) in [
            ("/app/*", "/app/db", Ok(true)),
            ("/app/*", "/app/db/host", Ok(false)),
            ("/*/*", "/a/b", Ok(true)),
            ("/a?c", "/abc", Ok(true)),
            ("/a?c", "/a/c", Ok(false)),
            ("/[a-m]*", "/db", Ok(true)),
            ("/[^a-m]*", "/db", Ok(false)),
            ("/[\\]]x", "/]x", Ok(true)),
            ("/\\*", "/*", Ok(true)),
            ("*", "", Ok(true)),
            ("/[", "/a", Err(BadPattern)),
            ("/[", "/zzz/long", Err(BadPattern)),
            ("/[]a]", "/a", Err(BadPattern)),
            ("/a\\", "/b", Err(BadPattern)),
            ("/x/[a-", "/y", Err(BadPattern)),
            ("/日本*", "/日本語", Ok(true)),
        ] {
            assert_eq!(matches(pattern, name), want, "{pattern} {name}");
        }
    }
}
