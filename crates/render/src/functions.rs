//! confd's template functions over a [`KvSnapshot`], with confd's results and errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use gotmpl::{FuncMap, Template, TemplateError as Error, Value, ValueFunc};

use crate::snapshot::KvSnapshot;

/// The longest list `seq` builds: confd allocates whatever it is asked for; a key in the
/// store must not be able to exhaust the renderer's memory.
const SEQ_LIMIT: i64 = 1_000_000;

fn fail(message: impl Into<String>) -> Error {
    Error::Exec(message.into())
}

fn text(args: &[Value], i: usize, func: &str) -> Result<String, Error> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s.to_string()),
        Some(other) => Ok(other.to_string()),
        None => Err(fail(format!("{func}: missing argument {}", i + 1))),
    }
}

fn int(args: &[Value], i: usize, func: &str) -> Result<i64, Error> {
    match args.get(i) {
        Some(v) => v
            .as_int()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| fail(format!("{func}: argument {} is not an integer", i + 1))),
        None => Err(fail(format!("{func}: missing argument {}", i + 1))),
    }
}

fn strings(values: impl IntoIterator<Item = String>) -> Value {
    Value::from(values.into_iter().map(Value::from).collect::<Vec<_>>())
}

fn kv_pair(key: &str, value: &str) -> Value {
    let mut m = BTreeMap::new();
    m.insert("Key".to_string(), Value::from(key));
    m.insert("Value".to_string(), Value::from(value));
    Value::from(m)
}

/// Go's `path.Match` (`*`, `?`, `[…]` classes; `*` does not cross `/`).
pub fn path_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => {
                let rest = &p[1..];
                (0..=n.len())
                    .take_while(|&i| i == 0 || n[i - 1] != '/')
                    .any(|i| go(rest, &n[i..]))
            }
            Some('?') => n.first().is_some_and(|c| *c != '/') && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().position(|c| *c == ']') else {
                    return false;
                };
                let Some(c) = n.first() else { return false };
                let class = &p[1..end];
                let (negate, class) = match class.first() {
                    Some('^') => (true, &class[1..]),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= class[i] <= *c && *c <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == *c;
                        i += 1;
                    }
                }
                hit != negate && go(&p[end + 1..], &n[1..])
            }
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

fn go_base(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return if p.is_empty() { ".".into() } else { "/".into() };
    }
    t.rsplit('/').next().unwrap_or(t).to_string()
}

fn go_dir(p: &str) -> String {
    match p.rfind('/') {
        Some(0) => "/".into(),
        Some(i) => p[..i].to_string(),
        None => ".".into(),
    }
}

/// memkv's List: the names directly below `dir` (`dirs_only`: only those with children).
fn children(snapshot: &KvSnapshot, dir: &str, dirs_only: bool) -> Vec<String> {
    let base = dir.trim_end_matches('/');
    let mut names = std::collections::BTreeSet::new();
    for key in snapshot.pairs.keys() {
        if key == dir && !dirs_only {
            names.insert(go_base(key));
            continue;
        }
        let Some(rest) = key.strip_prefix(base).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let mut parts = rest.splitn(2, '/');
        let Some(first) = parts.next().filter(|f| !f.is_empty()) else {
            continue;
        };
        if !dirs_only || parts.next().is_some() {
            names.insert(first.to_string());
        }
    }
    names.into_iter().collect()
}

fn json_to_value(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            // Go's encoding/json decodes every number into float64.
            Some(i) => Value::Float(i as f64),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::from(s),
        serde_json::Value::Array(a) => {
            Value::from(a.into_iter().map(json_to_value).collect::<Vec<_>>())
        }
        serde_json::Value::Object(o) => Value::from(
            o.into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

/// confd's function map, bound to `snapshot`.
pub fn confd_functions(
    snapshot: Arc<KvSnapshot>,
    nameserver: Option<std::net::SocketAddr>,
) -> FuncMap {
    let mut m = FuncMap::new();
    let mut add = |name: &str, f: ValueFunc| {
        m.insert(name.into(), f);
    };
    let s = snapshot.clone();
    add(
        "get",
        Arc::new(move |a| {
            let key = text(a, 0, "get")?;
            s.pairs
                .get(&key)
                .map(|v| kv_pair(&key, v))
                .ok_or_else(|| fail(format!("key does not exist: {key}")))
        }),
    );
    let s = snapshot.clone();
    add(
        "gets",
        Arc::new(move |a| {
            let pattern = text(a, 0, "gets")?;
            Ok(Value::from(
                s.pairs
                    .iter()
                    .filter(|(k, _)| path_match(&pattern, k))
                    .map(|(k, v)| kv_pair(k, v))
                    .collect::<Vec<_>>(),
            ))
        }),
    );
    let s = snapshot.clone();
    add(
        "getv",
        Arc::new(move |a| {
            let key = text(a, 0, "getv")?;
            match (s.pairs.get(&key), a.get(1)) {
                (Some(v), _) => Ok(Value::from(v.as_str())),
                (None, Some(default)) => Ok(Value::from(default.to_string())),
                (None, None) => Err(fail(format!("key does not exist: {key}"))),
            }
        }),
    );
    let s = snapshot.clone();
    add(
        "getvs",
        Arc::new(move |a| {
            let pattern = text(a, 0, "getvs")?;
            let mut values: Vec<String> = s
                .pairs
                .iter()
                .filter(|(k, _)| path_match(&pattern, k))
                .map(|(_, v)| v.clone())
                .collect();
            values.sort();
            Ok(strings(values))
        }),
    );
    let s = snapshot.clone();
    add(
        "ls",
        Arc::new(move |a| Ok(strings(children(&s, &text(a, 0, "ls")?, false)))),
    );
    let s = snapshot.clone();
    add(
        "lsdir",
        Arc::new(move |a| Ok(strings(children(&s, &text(a, 0, "lsdir")?, true)))),
    );
    let s = snapshot.clone();
    add(
        "exists",
        Arc::new(move |a| Ok(Value::Bool(s.pairs.contains_key(&text(a, 0, "exists")?)))),
    );
    add(
        "json",
        Arc::new(|a| {
            let raw = text(a, 0, "json")?;
            match serde_json::from_str::<serde_json::Value>(&raw) {
                Ok(v @ serde_json::Value::Object(_)) => Ok(json_to_value(v)),
                Ok(_) => Err(fail("json: value is not a JSON object")),
                Err(e) => Err(fail(format!("json: {e}"))),
            }
        }),
    );
    add(
        "jsonArray",
        Arc::new(|a| {
            let raw = text(a, 0, "jsonArray")?;
            match serde_json::from_str::<serde_json::Value>(&raw) {
                Ok(v @ serde_json::Value::Array(_)) => Ok(json_to_value(v)),
                Ok(_) => Err(fail("jsonArray: value is not a JSON array")),
                Err(e) => Err(fail(format!("jsonArray: {e}"))),
            }
        }),
    );
    add(
        "split",
        Arc::new(|a| {
            let (s, sep) = (text(a, 0, "split")?, text(a, 1, "split")?);
            let parts: Vec<String> = if sep.is_empty() {
                s.chars().map(String::from).collect()
            } else {
                s.split(sep.as_str()).map(String::from).collect()
            };
            Ok(strings(parts))
        }),
    );
    add(
        "join",
        Arc::new(|a| {
            let sep = text(a, 1, "join")?;
            match a.first() {
                Some(Value::List(l)) => Ok(Value::from(
                    l.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(&sep),
                )),
                _ => Err(fail("join: first argument must be a list")),
            }
        }),
    );
    add(
        "base",
        Arc::new(|a| Ok(Value::from(go_base(&text(a, 0, "base")?)))),
    );
    add(
        "dir",
        Arc::new(|a| Ok(Value::from(go_dir(&text(a, 0, "dir")?)))),
    );
    add(
        "map",
        Arc::new(|a| {
            if a.len() % 2 != 0 {
                return Err(fail("map: invalid map call: needs key/value pairs"));
            }
            let mut m = BTreeMap::new();
            for pair in a.chunks(2) {
                match &pair[0] {
                    Value::String(k) => {
                        m.insert(k.to_string(), pair[1].clone());
                    }
                    _ => return Err(fail("map: keys must be strings")),
                }
            }
            Ok(Value::from(m))
        }),
    );
    add(
        "getenv",
        Arc::new(|a| {
            let key = text(a, 0, "getenv")?;
            Ok(Value::from(match std::env::var(&key) {
                Ok(v) if !v.is_empty() => v,
                _ => a.get(1).map(|d| d.to_string()).unwrap_or_default(),
            }))
        }),
    );
    add(
        "toUpper",
        Arc::new(|a| Ok(Value::from(text(a, 0, "toUpper")?.to_uppercase()))),
    );
    add(
        "toLower",
        Arc::new(|a| Ok(Value::from(text(a, 0, "toLower")?.to_lowercase()))),
    );
    add(
        "contains",
        Arc::new(|a| {
            Ok(Value::Bool(
                text(a, 0, "contains")?.contains(&text(a, 1, "contains")?),
            ))
        }),
    );
    add(
        "replace",
        Arc::new(|a| {
            let (s, old, new, n) = (
                text(a, 0, "replace")?,
                text(a, 1, "replace")?,
                text(a, 2, "replace")?,
                int(a, 3, "replace")?,
            );
            Ok(Value::from(if n < 0 {
                s.replace(&old, &new)
            } else {
                s.replacen(&old, &new, n as usize)
            }))
        }),
    );
    add(
        "trimSuffix",
        Arc::new(|a| {
            let (s, suffix) = (text(a, 0, "trimSuffix")?, text(a, 1, "trimSuffix")?);
            Ok(Value::from(
                s.strip_suffix(suffix.as_str()).unwrap_or(&s).to_string(),
            ))
        }),
    );
    add(
        "fileExists",
        Arc::new(|a| {
            Ok(Value::Bool(
                std::path::Path::new(&text(a, 0, "fileExists")?).exists(),
            ))
        }),
    );
    add(
        "base64Encode",
        Arc::new(|a| {
            Ok(Value::from(
                base64::engine::general_purpose::STANDARD.encode(text(a, 0, "base64Encode")?),
            ))
        }),
    );
    add(
        "base64Decode",
        Arc::new(|a| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text(a, 0, "base64Decode")?)
                .map_err(|e| fail(format!("base64Decode: {e}")))?;
            Ok(Value::from(String::from_utf8_lossy(&bytes).into_owned()))
        }),
    );
    add(
        "parseBool",
        Arc::new(|a| {
            let s = text(a, 0, "parseBool")?;
            match s.as_str() {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Value::Bool(true)),
                "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(Value::Bool(false)),
                _ => Err(fail(format!(
                    "strconv.ParseBool: parsing {s:?}: invalid syntax"
                ))),
            }
        }),
    );
    add(
        "reverse",
        Arc::new(|a| match a.first() {
            Some(Value::List(l)) => Ok(Value::from(l.iter().rev().cloned().collect::<Vec<_>>())),
            Some(Value::String(s)) => Ok(Value::from(s.chars().rev().collect::<String>())),
            _ => Err(fail("reverse: argument must be a list or string")),
        }),
    );
    add(
        "sortByLength",
        Arc::new(|a| match a.first() {
            Some(Value::List(l)) => {
                let mut v: Vec<Value> = l.to_vec();
                v.sort_by_key(|x| x.to_string().len());
                Ok(Value::from(v))
            }
            _ => Err(fail("sortByLength: argument must be a list")),
        }),
    );
    add(
        "sortKVByLength",
        Arc::new(|a| match a.first() {
            Some(Value::List(l)) => {
                let mut v: Vec<Value> = l.to_vec();
                let key_len = |x: &Value| match x {
                    Value::Map(m) => m.get("Key").map(|k| k.to_string().len()).unwrap_or(0),
                    _ => 0,
                };
                v.sort_by_key(key_len);
                Ok(Value::from(v))
            }
            _ => Err(fail("sortKVByLength: argument must be a list")),
        }),
    );
    // Go's integers wrap on overflow (and MinInt64 / -1 is MinInt64), so these do too:
    // a value from the store renders what confd renders and never aborts the renderer.
    add(
        "add",
        Arc::new(|a| {
            Ok(Value::Int(
                int(a, 0, "add")?.wrapping_add(int(a, 1, "add")?),
            ))
        }),
    );
    add(
        "sub",
        Arc::new(|a| {
            Ok(Value::Int(
                int(a, 0, "sub")?.wrapping_sub(int(a, 1, "sub")?),
            ))
        }),
    );
    add(
        "mul",
        Arc::new(|a| {
            Ok(Value::Int(
                int(a, 0, "mul")?.wrapping_mul(int(a, 1, "mul")?),
            ))
        }),
    );
    add(
        "div",
        Arc::new(|a| {
            let d = int(a, 1, "div")?;
            if d == 0 {
                return Err(fail("div: integer divide by zero"));
            }
            Ok(Value::Int(int(a, 0, "div")?.wrapping_div(d)))
        }),
    );
    add(
        "mod",
        Arc::new(|a| {
            let d = int(a, 1, "mod")?;
            if d == 0 {
                return Err(fail("mod: integer divide by zero"));
            }
            Ok(Value::Int(int(a, 0, "mod")?.wrapping_rem(d)))
        }),
    );
    add(
        "seq",
        Arc::new(|a| {
            let (first, last) = (int(a, 0, "seq")?, int(a, 1, "seq")?);
            if last.saturating_sub(first) >= SEQ_LIMIT {
                return Err(fail(format!(
                    "seq: {first}..{last} is longer than {SEQ_LIMIT} numbers"
                )));
            }
            Ok(Value::from(
                (first..=last).map(Value::Int).collect::<Vec<_>>(),
            ))
        }),
    );
    add(
        "atoi",
        Arc::new(|a| {
            let s = text(a, 0, "atoi")?;
            s.parse::<i64>()
                .map(Value::Int)
                .map_err(|_| fail(format!("strconv.Atoi: parsing {s:?}: invalid syntax")))
        }),
    );
    for (name, family) in [("lookupIP", 0u8), ("lookupIPV4", 4), ("lookupIPV6", 6)] {
        add(
            name,
            Arc::new(move |a| {
                use std::net::ToSocketAddrs;
                let host = text(a, 0, "lookupIP")?;
                let mut ips: Vec<String> = (host.as_str(), 0)
                    .to_socket_addrs()
                    .map(|addrs| {
                        addrs
                            .map(|s| s.ip())
                            .filter(|ip| {
                                family == 0
                                    || (family == 4 && ip.is_ipv4())
                                    || (family == 6 && ip.is_ipv6())
                            })
                            .map(|ip| ip.to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                ips.sort();
                ips.dedup();
                Ok(strings(ips))
            }),
        );
    }
    add(
        "lookupSRV",
        Arc::new(move |a| {
            let (service, proto, name) = (
                text(a, 0, "lookupSRV")?,
                text(a, 1, "lookupSRV")?,
                text(a, 2, "lookupSRV")?,
            );
            let Some(server) = nameserver.or_else(crate::dns::system_nameserver) else {
                return Ok(Value::from(Vec::<Value>::new()));
            };
            let records = crate::dns::lookup_srv(server, &service, &proto, &name)
                .into_iter()
                .map(|r| {
                    let mut m = BTreeMap::new();
                    m.insert("Target".to_string(), Value::from(r.target));
                    m.insert("Port".to_string(), Value::Int(r.port.into()));
                    m.insert("Priority".to_string(), Value::Int(r.priority.into()));
                    m.insert("Weight".to_string(), Value::Int(r.weight.into()));
                    Value::from(m)
                })
                .collect::<Vec<_>>();
            Ok(Value::from(records))
        }),
    );
    // gotmpl has no method calls, so confd's `datetime.Format "layout"` is rewritten to
    // `datetimeFormat "layout"` before parsing (see `template_for`).
    add(
        "datetime",
        Arc::new(|_| Ok(Value::from(crate::gotime::Utc::now().go_string()))),
    );
    add(
        "datetimeFormat",
        Arc::new(|a| {
            Ok(Value::from(crate::gotime::Utc::now().format(&text(
                a,
                0,
                "datetime.Format",
            )?)))
        }),
    );
    m
}

/// A template named `name` with confd's functions over `snapshot`, parsed from `text`;
/// `nameserver` answers `lookupSRV` (default: the first of /etc/resolv.conf).
pub fn template_for(
    name: &str,
    text: &str,
    snapshot: Arc<KvSnapshot>,
    nameserver: Option<std::net::SocketAddr>,
) -> Result<Template, Error> {
    let text = text.replace("datetime.Format", "datetimeFormat");
    Template::new(name)
        .funcs(confd_functions(snapshot, nameserver))
        .parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Arc<KvSnapshot> {
        let mut s = KvSnapshot::default();
        for (k, v) in [
            ("/services/apache/1", "10.0.0.1:80"),
            ("/services/apache/2", "10.0.0.2:80"),
            ("/services/nginx/a", "10.0.1.1:80"),
            ("/app/name", "ferry"),
            ("/app/db/host", "db1"),
            ("/app/db/port", "5432"),
            ("/app/json", "{\"a\": 1, \"b\": [\"x\", \"y\"]}"),
        ] {
            s.pairs.insert(k.into(), v.into());
        }
        Arc::new(s)
    }

    fn render(text: &str) -> Result<String, Error> {
        template_for("t", text, snap(), Some(crate::dns::tests::fake_dns()))?
            .execute_to_string(&Value::Nil)
    }

    fn ok(text: &str) -> String {
        render(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn key_functions_behave_like_confd() {
        assert_eq!(ok("{{getv \"/app/name\"}}"), "ferry");
        assert_eq!(ok("{{getv \"/app/none\" \"fallback\"}}"), "fallback");
        assert_eq!(
            ok("{{with get \"/app/name\"}}{{.Key}}={{.Value}}{{end}}"),
            "/app/name=ferry"
        );
        assert_eq!(
            ok("{{range gets \"/services/apache/*\"}}{{.Key}} {{end}}"),
            "/services/apache/1 /services/apache/2 "
        );
        assert_eq!(
            ok("{{getvs \"/services/*/*\"}}"),
            "[10.0.0.1:80 10.0.0.2:80 10.0.1.1:80]"
        );
        assert_eq!(
            ok("{{ls \"/app\"}} {{lsdir \"/app\"}} {{ls \"/services\"}}"),
            "[db json name] [db] [apache nginx]"
        );
        assert_eq!(
            ok("{{exists \"/app/db/host\"}} {{exists \"/app/db\"}}"),
            "true false"
        );
        let err = render("{{getv \"/app/none\"}}").expect_err("missing key");
        assert!(
            err.to_string().contains("key does not exist: /app/none"),
            "{err}"
        );
    }

    #[test]
    fn integer_arithmetic_wraps_as_in_go_and_never_aborts() {
        assert_eq!(ok("{{add 9223372036854775807 1}}"), "-9223372036854775808");
        assert_eq!(
            ok("{{div (sub -9223372036854775807 1) -1}}"),
            "-9223372036854775808"
        );
        assert_eq!(ok("{{div -9223372036854775807 -1}}"), "9223372036854775807");
        assert_eq!(ok("{{mod 7 -1}}"), "0");
        assert_eq!(ok("{{len (seq 1 5)}}"), "5");
        let err = render("{{seq 0 9223372036854775807}}").expect_err("huge seq");
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[test]
    fn string_and_number_helpers() {
        assert_eq!(
            ok("{{$j := json (getv \"/app/json\")}}{{index $j.b 1}}"),
            "y"
        );
        assert_eq!(ok("{{join (split \"a,b,c\" \",\") \"-\"}}"), "a-b-c");
        assert_eq!(ok("{{base \"/a/b/c\"}} {{dir \"/a/b/c\"}}"), "c /a/b");
        assert_eq!(
            ok("{{toUpper \"ab\"}} {{toLower \"CD\"}} {{contains \"abc\" \"b\"}}"),
            "AB cd true"
        );
        assert_eq!(
            ok("{{replace \"aaa\" \"a\" \"b\" 2}} {{trimSuffix \"file.conf\" \".conf\"}}"),
            "bba file"
        );
        assert_eq!(
            ok("{{base64Encode \"hi\"}} {{base64Decode \"aGk=\"}}"),
            "aGk= hi"
        );
        assert_eq!(
            ok("{{add 2 3}} {{sub 5 1}} {{mul 3 4}} {{div 9 2}} {{mod 9 2}} {{atoi \"42\"}}"),
            "5 4 12 4 1 42"
        );
        assert_eq!(ok("{{seq 1 3}} {{reverse (seq 1 3)}}"), "[1 2 3] [3 2 1]");
        assert_eq!(
            ok("{{sortByLength (split \"ccc,a,bb\" \",\")}}"),
            "[a bb ccc]"
        );
        assert_eq!(ok("{{$m := map \"k\" \"v\"}}{{$m.k}}"), "v");
        assert_eq!(ok("{{parseBool \"true\"}}"), "true");
        assert_eq!(ok("{{lookupIPV4 \"localhost\"}}"), "[127.0.0.1]");
        let year = ok("{{datetime.Format \"2006\"}}");
        assert!(year.len() == 4 && year.starts_with("20"), "{year}");
        assert!(ok("{{datetime}}").ends_with(" +0000 UTC"));
        assert_eq!(
            ok("{{range lookupSRV \"http\" \"tcp\" \"example\"}}{{.Target}}:{{.Port}} {{end}}"),
            "a.example.:80 b.example.:8080 "
        );
        assert!(render("{{div 1 0}}").is_err());
    }

    #[test]
    fn go_path_match() {
        assert!(path_match("/services/*", "/services/a"));
        assert!(!path_match("/services/*", "/services/a/b"));
        assert!(path_match("/s/[a-c]?", "/s/bz"));
        assert!(!path_match("/s/[^a-c]", "/s/b"));
    }
}
