//! confd's template functions over a [`KvSnapshot`], with confd's results and errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use gotmpl::{FuncMap, Template, TemplateError as Error, Value, ValueFunc};

use crate::gopath;
use crate::goprint::{self, is_kv_pair, kv_pair};
use crate::slice_type::{self, tag, SliceType};
use crate::snapshot::KvSnapshot;

/// The longest list `seq` builds: confd allocates whatever it is asked for; a key in the
/// store must not be able to exhaust the renderer's memory.
const SEQ_LIMIT: i64 = 1_000_000;

fn fail(message: impl Into<String>) -> Error {
    Error::Exec(message.into())
}

/// A `string` parameter of a confd function: Go passes only strings to it.
fn text(args: &[Value], i: usize, func: &str) -> Result<String, Error> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s.to_string()),
        Some(other) => Err(fail(format!(
            "{func}: wrong type for value; expected string; got {}",
            other.type_name()
        ))),
        None => Err(fail(format!("{func}: missing argument {}", i + 1))),
    }
}

/// How many arguments each of confd's functions takes (fewest, most; `None`: variadic),
/// from their Go signatures: Go refuses a call with any other count.
const ARITY: [(&str, usize, Option<usize>); 38] = [
    ("base", 1, Some(1)),
    ("split", 2, Some(2)),
    ("json", 1, Some(1)),
    ("jsonArray", 1, Some(1)),
    ("dir", 1, Some(1)),
    ("map", 0, None),
    ("getenv", 1, None),
    ("join", 2, Some(2)),
    ("datetime", 0, Some(0)),
    ("datetimeFormat", 1, Some(1)),
    ("toUpper", 1, Some(1)),
    ("toLower", 1, Some(1)),
    ("contains", 2, Some(2)),
    ("replace", 4, Some(4)),
    ("trimSuffix", 2, Some(2)),
    ("lookupIP", 1, Some(1)),
    ("lookupIPV4", 1, Some(1)),
    ("lookupIPV6", 1, Some(1)),
    ("lookupSRV", 3, Some(3)),
    ("fileExists", 1, Some(1)),
    ("base64Encode", 1, Some(1)),
    ("base64Decode", 1, Some(1)),
    ("parseBool", 1, Some(1)),
    ("reverse", 1, Some(1)),
    ("sortByLength", 1, Some(1)),
    ("sortKVByLength", 1, Some(1)),
    ("add", 2, Some(2)),
    ("sub", 2, Some(2)),
    ("div", 2, Some(2)),
    ("mod", 2, Some(2)),
    ("mul", 2, Some(2)),
    ("seq", 2, Some(2)),
    ("atoi", 1, Some(1)),
    ("exists", 1, Some(1)),
    ("ls", 1, Some(1)),
    ("lsdir", 1, Some(1)),
    ("get", 1, Some(1)),
    ("gets", 1, Some(1)),
];

/// memkv's `getv` and `getvs` complete the table.
const ARITY_MEMKV: [(&str, usize, Option<usize>); 2] = [("getv", 1, None), ("getvs", 1, Some(1))];

/// Wraps every function of `m` named in the tables with Go's argument count check.
fn check_arity(m: FuncMap) -> FuncMap {
    m.into_iter()
        .map(|(name, f)| {
            let Some(&(_, min, max)) = ARITY
                .iter()
                .chain(ARITY_MEMKV.iter())
                .find(|(n, _, _)| *n == name)
            else {
                return (name, f);
            };
            let fname = name.clone();
            let checked: ValueFunc = Arc::new(move |a: &[Value]| {
                let ok = a.len() >= min && max.is_none_or(|max| a.len() <= max);
                if !ok {
                    let want = match max {
                        Some(_) => format!("{min}"),
                        None => format!("at least {min}"),
                    };
                    return Err(fail(format!(
                        "wrong number of args for {fname}: want {want} got {}",
                        a.len()
                    )));
                }
                f(a)
            });
            (name, checked)
        })
        .collect()
}

/// An `int` parameter of a confd function: Go converts only integers to it (a float such as
/// a number from `json`, or a string, is a type error, not a conversion).
fn int(args: &[Value], i: usize, func: &str) -> Result<i64, Error> {
    match args.get(i) {
        Some(Value::Int(n)) => Ok(*n),
        Some(Value::Uint(n)) => {
            i64::try_from(*n).map_err(|_| fail(format!("{func}: argument {} overflows int", i + 1)))
        }
        Some(other) => Err(fail(format!(
            "{func}: wrong type for value; expected int; got {}",
            other.type_name()
        ))),
        None => Err(fail(format!("{func}: missing argument {}", i + 1))),
    }
}

/// A Go `[]string`.
fn strings(values: impl IntoIterator<Item = String>) -> Value {
    tag(
        Value::from(values.into_iter().map(Value::from).collect::<Vec<_>>()),
        SliceType::Strings,
    )
}

/// Go's `strings.ToUpper`: each character on its own (Unicode's simple mapping), so `ß`
/// stays `ß` where Rust's full mapping writes `SS`.
fn go_to_upper(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// Go's `strings.ToLower`: each character on its own (`İ` becomes `i`, not `i̇`).
fn go_to_lower(s: &str) -> String {
    s.chars()
        .map(|c| c.to_lowercase().next().unwrap_or(c))
        .collect()
}

/// What a `range` is given: Go 1.19's text/template ranges over slices, maps and nothing
/// (no iterations); gotmpl also ranges over integers, which Go refuses.
fn rangeable(a: &[Value]) -> Result<Value, Error> {
    match a.last() {
        Some(v @ (Value::List(_) | Value::Map(_) | Value::Nil)) => Ok(v.clone()),
        Some(other) => Err(fail(format!(
            "range can't iterate over {}",
            goprint::value(other)
        ))),
        None => Ok(Value::Nil),
    }
}

/// memkv's `GetAll` filter: the pairs whose key matches `pattern`; a malformed pattern is
/// an error as soon as there is a key to match.
fn matching<'s>(
    snapshot: &'s KvSnapshot,
    pattern: &str,
) -> Result<Vec<(&'s String, &'s String)>, Error> {
    let mut out = Vec::new();
    for (k, v) in &snapshot.pairs {
        if gopath::matches(pattern, k).map_err(|e| fail(e.to_string()))? {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// memkv's `pathToTerms`: the cleaned path split at `/` (so `/` is two empty terms).
fn terms(p: &str) -> Vec<String> {
    gopath::clean(p).split('/').map(str::to_string).collect()
}

fn same_prefix_terms(prefix: &[String], test: &[String]) -> bool {
    test.len() >= prefix.len() && prefix.iter().zip(test).all(|(a, b)| a == b)
}

/// memkv's `List` (`ls`): for each key whose directory starts with `dir`'s terms, the first
/// segment after `dir`; a key equal to `dir` gives its base name. As in memkv, at `/` only
/// top-level keys count (`/` splits into two empty terms).
fn list(snapshot: &KvSnapshot, dir: &str) -> Vec<String> {
    let prefix = terms(dir);
    let mut names = std::collections::BTreeSet::new();
    for key in snapshot.pairs.keys() {
        if key == dir {
            names.insert(gopath::base(key));
            continue;
        }
        if same_prefix_terms(&prefix, &terms(&gopath::dir(key))) {
            let stripped = key.strip_prefix(dir).unwrap_or(key);
            let stripped = stripped.strip_prefix('/').unwrap_or(stripped);
            names.insert(stripped.split('/').next().unwrap_or("").to_string());
        }
    }
    names.into_iter().collect()
}

/// memkv's `ListDir` (`lsdir`): the directories directly below `dir` among the keys that
/// start with it as a string.
fn list_dir(snapshot: &KvSnapshot, dir: &str) -> Vec<String> {
    let prefix = terms(dir);
    let mut names = std::collections::BTreeSet::new();
    for key in snapshot.pairs.keys().filter(|k| k.starts_with(dir)) {
        let items = terms(&gopath::dir(key));
        if same_prefix_terms(&prefix, &items) && items.len() > prefix.len() {
            names.insert(items[prefix.len()].clone());
        }
    }
    names.into_iter().collect()
}

/// How Go's encoding/json names a JSON value's kind in its errors.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
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
        serde_json::Value::Array(a) => tag(
            Value::from(a.into_iter().map(json_to_value).collect::<Vec<_>>()),
            SliceType::Interfaces,
        ),
        serde_json::Value::Object(o) => Value::from(
            o.into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

/// Whether `list` is a Go `[]string`: by its recorded type, else by its elements.
fn is_strings(list: &Value, l: &[Value]) -> bool {
    match slice_type::of(list) {
        Some(kind) => kind == SliceType::Strings,
        None => l.iter().all(|v| matches!(v, Value::String(_))),
    }
}

/// Whether `list` can be passed as a Go `[]memkv.KVPair` (`memkv.KVPairs` converts).
fn is_kv_pairs(list: &Value, l: &[Value]) -> bool {
    match slice_type::of(list) {
        Some(kind) => matches!(kind, SliceType::KvPairs | SliceType::KvPairSlice),
        None => l.iter().all(is_kv_pair),
    }
}

/// Whether confd's `reverse` reorders `list`: only a `[]string` or a `[]memkv.KVPair`.
fn reorderable(list: &Value, l: &[Value]) -> bool {
    match slice_type::of(list) {
        Some(kind) => matches!(kind, SliceType::Strings | SliceType::KvPairSlice),
        None => is_strings(list, l),
    }
}

/// confd's `sortByLength` (`sort.Sort` of a `[]string` by length).
fn sort_by_length(a: &[Value], _in_place: bool) -> Result<Value, Error> {
    match a.first() {
        Some(list @ Value::List(l)) if is_strings(list, l) => {
            let mut v: Vec<Value> = l.to_vec();
            crate::gosort::sort(&mut v, |x, y| {
                goprint::value(x).len() < goprint::value(y).len()
            });
            Ok(tag(Value::from(v), SliceType::Strings))
        }
        _ => Err(fail(
            "sortByLength: wrong type for value; expected []string",
        )),
    }
}

/// confd's `sortKVByLength` (`sort.Sort` of a `[]memkv.KVPair` by key length). It returns
/// a `[]KVPair`; sorted in place (`in_place`), a `KVPairs` variable stays a `KVPairs`.
fn sort_kv_by_length(a: &[Value], in_place: bool) -> Result<Value, Error> {
    match a.first() {
        Some(list @ Value::List(l)) if is_kv_pairs(list, l) => {
            let mut v: Vec<Value> = l.to_vec();
            let key_len = |x: &Value| match x {
                Value::Map(m) => m.get("Key").map(goprint::value).map_or(0, |k| k.len()),
                _ => 0,
            };
            crate::gosort::sort(&mut v, |x, y| key_len(x) < key_len(y));
            let kind = match (in_place, slice_type::of(list)) {
                (true, Some(kind)) => kind,
                _ => SliceType::KvPairSlice,
            };
            Ok(tag(Value::from(v), kind))
        }
        _ => Err(fail(
            "sortKVByLength: wrong type for value; expected []memkv.KVPair",
        )),
    }
}

/// The snapshot a template's functions read: one bound at parse time ([`template_for`]), or
/// that of the execution running on this thread ([`PreparedTemplate`], whose parse is shared
/// by every caller with the same template).
#[derive(Clone)]
enum SnapshotSlot {
    Bound(Arc<KvSnapshot>),
    Running,
}

thread_local! {
    /// The snapshot of the [`PreparedTemplate`] executing on this thread (one thread runs
    /// a template from start to end).
    static RUNNING: std::cell::RefCell<Option<Arc<KvSnapshot>>> =
        const { std::cell::RefCell::new(None) };
}

/// Sets this thread's running snapshot for one execution, and clears it after.
struct RunningOver(Option<Arc<KvSnapshot>>);

impl RunningOver {
    fn start(snapshot: Arc<KvSnapshot>) -> Self {
        // A template function cannot start another execution, but keep an outer one intact.
        Self(RUNNING.with(|r| r.replace(Some(snapshot))))
    }
}

impl Drop for RunningOver {
    fn drop(&mut self) {
        let outer = self.0.take();
        RUNNING.with(|r| *r.borrow_mut() = outer);
    }
}

impl SnapshotSlot {
    fn new(snapshot: Arc<KvSnapshot>) -> Self {
        Self::Bound(snapshot)
    }

    fn get(&self) -> Arc<KvSnapshot> {
        match self {
            Self::Bound(snapshot) => snapshot.clone(),
            Self::Running => RUNNING.with(|r| r.borrow().clone()).unwrap_or_default(),
        }
    }
}

/// confd's function map, bound to `snapshot`.
pub fn confd_functions(
    snapshot: Arc<KvSnapshot>,
    nameserver: Option<std::net::SocketAddr>,
) -> FuncMap {
    functions_over(SnapshotSlot::new(snapshot), nameserver)
}

fn functions_over(snapshot: SnapshotSlot, nameserver: Option<std::net::SocketAddr>) -> FuncMap {
    let mut m = FuncMap::new();
    let mut add = |name: &str, f: ValueFunc| {
        m.insert(name.into(), f);
    };
    let s = snapshot.clone();
    add(
        "get",
        Arc::new(move |a| {
            let key = text(a, 0, "get")?;
            s.get()
                .pairs
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
            Ok(tag(
                Value::from(
                    matching(&s.get(), &pattern)?
                        .into_iter()
                        .map(|(k, v)| kv_pair(k, v))
                        .collect::<Vec<_>>(),
                ),
                SliceType::KvPairs,
            ))
        }),
    );
    let s = snapshot.clone();
    add(
        "getv",
        Arc::new(move |a| {
            let key = text(a, 0, "getv")?;
            let default = match a.get(1) {
                Some(_) => Some(text(a, 1, "getv")?),
                None => None,
            };
            match (s.get().pairs.get(&key), default) {
                (Some(v), _) => Ok(Value::from(v.as_str())),
                (None, Some(default)) => Ok(Value::from(default)),
                (None, None) => Err(fail(format!("key does not exist: {key}"))),
            }
        }),
    );
    let s = snapshot.clone();
    add(
        "getvs",
        Arc::new(move |a| {
            let pattern = text(a, 0, "getvs")?;
            let mut values: Vec<String> = matching(&s.get(), &pattern)?
                .into_iter()
                .map(|(_, v)| v.clone())
                .collect();
            values.sort();
            Ok(strings(values))
        }),
    );
    let s = snapshot.clone();
    add(
        "ls",
        Arc::new(move |a| Ok(strings(list(&s.get(), &text(a, 0, "ls")?)))),
    );
    let s = snapshot.clone();
    add(
        "lsdir",
        Arc::new(move |a| Ok(strings(list_dir(&s.get(), &text(a, 0, "lsdir")?)))),
    );
    let s = snapshot.clone();
    add(
        "exists",
        Arc::new(move |a| {
            Ok(Value::Bool(
                s.get().pairs.contains_key(&text(a, 0, "exists")?),
            ))
        }),
    );
    add(
        "json",
        Arc::new(|a| {
            let raw = text(a, 0, "json")?;
            crate::json_memo::decoded(&raw, |raw| {
                match serde_json::from_str::<serde_json::Value>(raw) {
                    Ok(v @ serde_json::Value::Object(_)) => Ok(json_to_value(v)),
                    // Go's Unmarshal of `null` leaves the map nil: an empty map, no error.
                    Ok(serde_json::Value::Null) => {
                        Ok(Value::from(BTreeMap::<String, Value>::new()))
                    }
                    Ok(other) => Err(fail(format!(
                        "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                        json_kind(&other)
                    ))),
                    Err(e) => Err(fail(format!("json: {e}"))),
                }
            })
        }),
    );
    add(
        "jsonArray",
        Arc::new(|a| {
            let raw = text(a, 0, "jsonArray")?;
            match serde_json::from_str::<serde_json::Value>(&raw) {
                Ok(v @ serde_json::Value::Array(_)) => Ok(json_to_value(v)),
                Ok(serde_json::Value::Null) => {
                    Ok(tag(Value::from(Vec::<Value>::new()), SliceType::Interfaces))
                }
                Ok(other) => Err(fail(format!(
                    "json: cannot unmarshal {} into Go value of type []interface {{}}",
                    json_kind(&other)
                ))),
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
        Arc::new(|a| Ok(Value::from(gopath::base(&text(a, 0, "base")?)))),
    );
    add(
        "dir",
        Arc::new(|a| Ok(Value::from(gopath::dir(&text(a, 0, "dir")?)))),
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
                _ => match a.get(1) {
                    Some(_) => text(a, 1, "getenv")?,
                    None => String::new(),
                },
            }))
        }),
    );
    add(
        "toUpper",
        Arc::new(|a| Ok(Value::from(go_to_upper(&text(a, 0, "toUpper")?)))),
    );
    add(
        "toLower",
        Arc::new(|a| Ok(Value::from(go_to_lower(&text(a, 0, "toLower")?)))),
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
    // confd's reverse and sorts reorder `[]string` and `[]KVPair` slices in place (the
    // variable passed keeps the new order: see rewrite.rs); reverse hands anything else back
    // unchanged, and the sorts refuse other types as Go's call would.
    add(
        "reverse",
        Arc::new(|a| match a.first() {
            Some(list @ Value::List(l)) if reorderable(list, l) => {
                let kind = slice_type::of(list).unwrap_or(SliceType::Strings);
                Ok(tag(
                    Value::from(l.iter().rev().cloned().collect::<Vec<_>>()),
                    kind,
                ))
            }
            Some(other) => Ok(other.clone()),
            None => Err(fail("wrong number of args for reverse: want 1 got 0")),
        }),
    );
    add("sortByLength", Arc::new(|a| sort_by_length(a, false)));
    add("sortKVByLength", Arc::new(|a| sort_kv_by_length(a, false)));
    // The in-place half (rewrite.rs): the variable passed keeps its own Go type.
    add(
        crate::rewrite::SORT_IN_PLACE,
        Arc::new(|a| sort_by_length(a, true)),
    );
    add(
        crate::rewrite::SORT_KV_IN_PLACE,
        Arc::new(|a| sort_kv_by_length(a, true)),
    );
    // Printing as Go's fmt does (see goprint.rs).
    add(
        crate::rewrite::PRINT_FUNC,
        Arc::new(|a| {
            Ok(Value::from(goprint::action(
                a.last().unwrap_or(&Value::Nil),
            )))
        }),
    );
    add(crate::rewrite::RANGE_FUNC, Arc::new(rangeable));
    add("print", Arc::new(|a| Ok(Value::from(goprint::sprint(a)))));
    add(
        "println",
        Arc::new(|a| Ok(Value::from(goprint::sprintln(a)))),
    );
    add(
        "printf",
        Arc::new(|a| {
            let format = match a.first() {
                Some(Value::String(f)) => f.to_string(),
                _ => return Err(fail("printf: the format must be a string")),
            };
            crate::gofmt::sprintf(&format, &a[1..]).map(Value::from)
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
            Ok(tag(
                Value::from((first..=last).map(Value::Int).collect::<Vec<_>>()),
                SliceType::Ints,
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

/// A parsed template with confd's functions, ready to run as confd runs it.
pub struct ConfdTemplate {
    template: Template,
    name: String,
    /// The length of its last output: the next one starts with that much room rather than
    /// growing from nothing (a render's text is copied about eight times otherwise).
    last_len: std::sync::atomic::AtomicUsize,
}

impl ConfdTemplate {
    /// Runs the template (with no data, as confd does) and returns what it wrote.
    pub fn execute_to_string(&self) -> Result<String, Error> {
        use std::sync::atomic::Ordering;
        let _types = slice_type::Execution::start();
        let last = self.last_len.load(Ordering::Relaxed);
        // With some slack: a text a few bytes longer would otherwise copy itself once more.
        let mut text = String::with_capacity(last + last / 8);
        if self.template.lookup(&self.name).is_some() {
            self.template
                .execute_template_fmt(&mut text, &self.name, &Value::Nil)?;
        } else {
            // An empty template: there is nothing to run.
            self.template.execute_fmt(&mut text, &Value::Nil)?;
        }
        self.last_len.store(text.len(), Ordering::Relaxed);
        Ok(text)
    }
}

/// Go's parse error for an `{{end}}` or `{{else}}` that closes no block.
fn stray_end(name: &str, text: &str) -> Error {
    let at = ["{{end", "{{- end", "{{else", "{{- else"]
        .iter()
        .filter_map(|t| text.find(t))
        .min()
        .unwrap_or(0);
    Error::Parse {
        name: Some(name.to_string()),
        line: text[..at].matches('\n').count() + 1,
        col: 0,
        message: "unexpected {{end}} or {{else}} outside any block".into(),
    }
}

/// A template named `name` with confd's functions over `snapshot`, parsed from `text`;
/// `nameserver` answers `lookupSRV` (default: the first of /etc/resolv.conf).
pub fn template_for(
    name: &str,
    text: &str,
    snapshot: Arc<KvSnapshot>,
    nameserver: Option<std::net::SocketAddr>,
) -> Result<ConfdTemplate, Error> {
    parse_over(name, text, SnapshotSlot::new(snapshot), nameserver)
}

/// A template parsed once and run over a new snapshot each time: an agent renders the same
/// template after every change, and parsing it cost more than running it. Every
/// `PreparedTemplate` of one process with the same name, text and nameserver shares one
/// parse (agents running in one process, `ferry up`'s, render the same template).
#[derive(Clone)]
pub struct PreparedTemplate {
    template: Arc<ConfdTemplate>,
    nameserver: Option<std::net::SocketAddr>,
}

/// What makes two prepared templates the same: name, text and nameserver.
type PreparedKey = (String, String, Option<std::net::SocketAddr>);

/// The parses in use in this process (dropped with their last user).
static PREPARED: std::sync::LazyLock<
    parking_lot::Mutex<std::collections::HashMap<PreparedKey, std::sync::Weak<ConfdTemplate>>>,
> = std::sync::LazyLock::new(Default::default);

impl PreparedTemplate {
    /// Parses `text` as the template `name` (see [`template_for`]), or takes the parse this
    /// process already holds for the same name, text and nameserver.
    pub fn parse(
        name: &str,
        text: &str,
        nameserver: Option<std::net::SocketAddr>,
    ) -> Result<Self, Error> {
        let key = (name.to_string(), text.to_string(), nameserver);
        if let Some(template) = PREPARED.lock().get(&key).and_then(|t| t.upgrade()) {
            return Ok(Self {
                template,
                nameserver,
            });
        }
        // Parsed outside the lock: two first parses of one template at once both succeed,
        // and the later one is kept.
        let template = Arc::new(parse_over(name, text, SnapshotSlot::Running, nameserver)?);
        let mut prepared = PREPARED.lock();
        prepared.retain(|_, t| t.strong_count() > 0);
        prepared.insert(key, Arc::downgrade(&template));
        Ok(Self {
            template,
            nameserver,
        })
    }

    /// Whether it was prepared for lookups through `nameserver`.
    pub fn uses(&self, nameserver: Option<std::net::SocketAddr>) -> bool {
        self.nameserver == nameserver
    }

    /// Runs the template over `snapshot`.
    pub fn execute_to_string(&self, snapshot: Arc<KvSnapshot>) -> Result<String, Error> {
        let _running = RunningOver::start(snapshot);
        self.template.execute_to_string()
    }
}

fn parse_over(
    name: &str,
    text: &str,
    snapshot: SnapshotSlot,
    nameserver: Option<std::net::SocketAddr>,
) -> Result<ConfdTemplate, Error> {
    let text = text
        .replace("(datetime).Format", "datetimeFormat")
        .replace("datetime.Format", "datetimeFormat");
    // gotmpl stops parsing, silently, at a top-level `{{end}}` or `{{else}}` that closes
    // nothing; Go refuses the template. A sentinel at the very end shows whether the parse
    // got there.
    let with_sentinel = format!("{text}{}", crate::rewrite::SENTINEL);
    let mut template = Template::new(name)
        .funcs(check_arity(functions_over(snapshot, nameserver)))
        .parse(&with_sentinel)?;
    let main = template
        .lookup(name)
        .ok_or_else(|| stray_end(name, &text))?;
    let main = crate::rewrite::strip_sentinel(main).ok_or_else(|| stray_end(name, &text))?;
    template = template.add_parse_tree(name, main);
    let names: Vec<String> = template.templates().iter().map(|n| n.to_string()).collect();
    for tree_name in names {
        if let Some(tree) = template.lookup(&tree_name).map(crate::rewrite::rewrite) {
            template = template.add_parse_tree(&tree_name, tree);
        }
    }
    Ok(ConfdTemplate {
        template,
        name: name.to_string(),
        last_len: Default::default(),
    })
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
        template_for("t", text, snap(), Some(crate::dns::tests::fake_dns()))?.execute_to_string()
    }

    fn ok(text: &str) -> String {
        render(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    /// Prepared templates with the same name, text and nameserver share one parse, and
    /// executions of it on many threads at once each read their own snapshot.
    #[test]
    fn one_parse_serves_concurrent_renders_of_their_own_snapshots() -> Result<(), Error> {
        let text = r#"{{getv "/who"}}:{{range gets "/n/*"}}{{.Value}},{{end}}"#;
        let first = PreparedTemplate::parse("shared.tmpl", text, None)?;
        let second = PreparedTemplate::parse("shared.tmpl", text, None)?;
        assert!(Arc::ptr_eq(&first.template, &second.template));
        let other = PreparedTemplate::parse("shared.tmpl", &format!("{text}."), None)?;
        assert!(!Arc::ptr_eq(&first.template, &other.template));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let template = first.clone();
                std::thread::spawn(move || {
                    for round in 0..200 {
                        let mut s = KvSnapshot::default();
                        s.pairs.insert("/who".into(), format!("t{t}"));
                        for n in 0..=(round % 3) {
                            s.pairs.insert(format!("/n/{n}"), format!("{t}.{round}"));
                        }
                        let out = template.execute_to_string(Arc::new(s))?;
                        let expected =
                            format!("t{t}:{}", format!("{t}.{round},").repeat(round % 3 + 1));
                        assert_eq!(out, expected);
                    }
                    Ok::<(), Error>(())
                })
            })
            .collect();
        for thread in threads {
            match thread.join() {
                Ok(result) => result?,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        // No snapshot stays behind on this thread once an execution is over, failed or not.
        assert!(first.execute_to_string(snap()).is_err());
        assert!(RUNNING.with(|r| r.borrow().is_none()));
        Ok(())
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
    fn a_stray_end_is_a_parse_error() {
        assert!(render("a{{end}}b").is_err());
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
        // confd's reverse leaves a []int as it is.
        assert_eq!(ok("{{seq 1 3}} {{reverse (seq 1 3)}}"), "[1 2 3] [1 2 3]");
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
}
