//! Printing template values as Go prints them (`fmt`'s `%v`), where confd's output depends
//! on it: `float64` numbers from `json` (`1e+06`), memkv's `KVPair` struct (`{/key value}`),
//! and slices and maps of them.
//!
//! gotmpl prints its values with Rust's formatting, so the renderer routes everything a
//! template prints through [`action`] (see `rewrite.rs`) and through its own `print` and
//! `println` (`printf` is `gofmt.rs`).

use std::collections::BTreeMap;
use std::fmt::Write;

use gotmpl::Value;

/// The map key that marks a map as memkv's `KVPair` struct. Not an identifier, so no
/// template can name it as a field.
pub const KV_PAIR_MARK: &str = " kvpair";

/// memkv's `KVPair{Key, Value}`: a map with `.Key` and `.Value`, printed as Go prints the
/// struct.
pub fn kv_pair(key: &str, value: &str) -> Value {
    let mut m = BTreeMap::new();
    m.insert("Key".to_string(), Value::from(key));
    m.insert("Value".to_string(), Value::from(value));
    m.insert(KV_PAIR_MARK.to_string(), Value::Bool(true));
    Value::from(m)
}

/// Whether `v` is a [`kv_pair`].
pub fn is_kv_pair(v: &Value) -> bool {
    matches!(v, Value::Map(m) if m.contains_key(KV_PAIR_MARK))
}

/// What `{{pipeline}}` writes for the pipeline's value: text/template prints a missing
/// value as `<no value>` and everything else with `fmt`'s `%v`.
pub fn action(v: &Value) -> String {
    match v {
        Value::Nil => "<no value>".into(),
        other => value(other),
    }
}

/// `fmt.Sprint(v)`, i.e. `%v`.
pub fn value(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Nil => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Uint(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Float(f) => out.push_str(&float(*f)),
        Value::String(s) => out.push_str(s),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Map(m) if m.contains_key(KV_PAIR_MARK) => {
            out.push('{');
            if let Some(k) = m.get("Key") {
                write_value(out, k);
            }
            out.push(' ');
            if let Some(v) = m.get("Value") {
                write_value(out, v);
            }
            out.push('}');
        }
        Value::Map(m) => {
            out.push_str("map[");
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                write_value(out, v);
            }
            out.push(']');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// A `float64` as `%v` prints it: the shortest digits that read back as the same number,
/// in `%e` form when the exponent is below -4 or at least 6 (`1e+06`, `1.5e-05`), else
/// plainly (`123456`, `0.0001`).
pub fn float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // Rust's `{:e}` is the shortest round-trip form too: `d.ddde<exp>`.
    let sci = format!("{:e}", f);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{f}")
    }
}

/// `fmt.Sprint(args...)`: a space between two operands when neither is a string.
pub fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 && !matches!(args[i - 1], Value::String(_)) && !matches!(arg, Value::String(_)) {
            out.push(' ');
        }
        write_value(&mut out, arg);
    }
    out
}

/// `fmt.Sprintln(args...)`: spaces between all operands and a newline.
pub fn sprintln(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_value(&mut out, arg);
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_go_prints_float64() {
        for (f, go) in [
            (1_000_000.0, "1e+06"),
            (12_345_678_901.0, "1.2345678901e+10"),
            (123_456.0, "123456"),
            (1_234_567.0, "1.234567e+06"),
            (1.5, "1.5"),
            (-42.0, "-42"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e21, "1e+21"),
            (1e100, "1e+100"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-2.5e-7, "-2.5e-07"),
            (0.0, "0"),
        ] {
            assert_eq!(float(f), go, "{f}");
        }
    }

    #[test]
    fn structs_maps_and_slices_print_as_fmt_does() {
        let pair = kv_pair("/app/port", "5432");
        assert_eq!(action(&pair), "{/app/port 5432}");
        let list = Value::from(vec![pair.clone(), kv_pair("/b", "")]);
        assert_eq!(value(&list), "[{/app/port 5432} {/b }]");
        let mut m = BTreeMap::new();
        m.insert("n".to_string(), Value::Float(1e6));
        m.insert(
            "a".to_string(),
            Value::from(vec![Value::Nil, Value::Bool(true)]),
        );
        assert_eq!(value(&Value::from(m)), "map[a:[<nil> true] n:1e+06]");
        assert_eq!(action(&Value::Nil), "<no value>");
    }

    #[test]
    fn sprint_spaces_only_between_non_strings() {
        let args = [
            Value::from("a"),
            Value::Int(1),
            Value::Int(2),
            Value::from("b"),
            Value::Float(1e6),
        ];
        assert_eq!(sprint(&args), "a1 2b1e+06");
        assert_eq!(sprintln(&args), "a 1 2 b 1e+06\n");
    }
}
