//! `printf` as Go's `fmt.Sprintf` runs it on confd's values.
//!
//! Go applies a verb to every element of a slice, every key and value of a map and every
//! field of a struct (`%d` of `[]int{1, 2}` is `[1 2]`, `%q` of `[]string` quotes each), and
//! prints `%#v` and `%T` from the value's Go type. gotmpl's `printf` handles single values
//! well but not these, so this walks the format: composite operands are taken apart here
//! and every single value is formatted by gotmpl's own `printf` with that one verb (floats
//! under `%v` as `%g`, which is what Go's `%v` of a `float64` is).

use std::collections::BTreeMap;

use gotmpl::{TemplateError as Error, Value};

use crate::goprint::{self, KV_PAIR_MARK};
use crate::slice_type::{self, SliceType};

/// One `%...` directive.
#[derive(Debug, Clone, Default)]
struct Spec {
    /// Flags in Go's order of appearance (`+-# 0`).
    flags: String,
    width: Option<usize>,
    precision: Option<usize>,
    verb: char,
}

impl Spec {
    fn has(&self, flag: char) -> bool {
        self.flags.contains(flag)
    }

    /// Only the width and `-` of this directive: padding for text formatted here.
    fn padding_only(&self) -> Spec {
        Spec {
            flags: if self.has('-') {
                "-".into()
            } else {
                String::new()
            },
            width: self.width,
            ..Spec::default()
        }
    }

    /// The directive as text, for gotmpl's formatter.
    fn directive(&self, verb: char) -> String {
        let mut out = format!("%{}", self.flags);
        if let Some(w) = self.width {
            out.push_str(&w.to_string());
        }
        if let Some(p) = self.precision {
            out.push('.');
            out.push_str(&p.to_string());
        }
        out.push(verb);
        out
    }
}

/// `fmt.Sprintf(format, args...)`.
pub fn sprintf(format: &str, args: &[Value]) -> Result<String, Error> {
    if has_explicit_index(format) {
        // Explicit argument indexes: gotmpl's formatter implements them on its own.
        return builtin(format, args);
    }
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    let mut next = 0;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        while let Some(&f) = chars.peek() {
            if "+-# 0".contains(f) {
                spec.flags.push(f);
                chars.next();
            } else {
                break;
            }
        }
        let mut bad_width = false;
        if chars.peek() == Some(&'*') {
            chars.next();
            match args.get(next) {
                Some(Value::Int(w)) => {
                    if *w < 0 {
                        spec.flags.push('-');
                    }
                    spec.width = Some(w.unsigned_abs() as usize);
                }
                _ => bad_width = true,
            }
            next += 1;
        } else {
            spec.width = digits(&mut chars);
        }
        if chars.peek() == Some(&'.') {
            chars.next();
            if chars.peek() == Some(&'*') {
                chars.next();
                match args.get(next) {
                    Some(Value::Int(p)) if *p >= 0 => spec.precision = Some(*p as usize),
                    _ => out.push_str("%!(BADPREC)"),
                }
                next += 1;
            } else {
                spec.precision = Some(digits(&mut chars).unwrap_or(0));
            }
        }
        if bad_width {
            out.push_str("%!(BADWIDTH)");
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        spec.verb = verb;
        if verb == '%' {
            out.push('%');
            continue;
        }
        match args.get(next) {
            Some(arg) => {
                format_value(&mut out, arg, &spec, true)?;
                next += 1;
            }
            None => {
                out.push_str(&format!("%!{verb}(MISSING)"));
            }
        }
    }
    if next < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, arg) in args[next..].iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            match arg {
                Value::Nil => out.push_str("<nil>"),
                other => {
                    out.push_str(&type_name(other));
                    out.push('=');
                    out.push_str(&goprint::value(other));
                }
            }
        }
        out.push(')');
    }
    Ok(out)
}

/// Whether a directive of `format` names its argument (`%[2]d`).
fn has_explicit_index(format: &str) -> bool {
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            continue;
        }
        while let Some(&d) = chars.peek() {
            match d {
                '[' => return true,
                '+' | '-' | '#' | ' ' | '0'..='9' | '.' | '*' => {
                    chars.next();
                }
                _ => break,
            }
        }
    }
    false
}

fn digits(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<usize> {
    let mut n: Option<usize> = None;
    while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
        n = Some(
            n.unwrap_or(0)
                .saturating_mul(10)
                .saturating_add(d as usize)
                .min(1 << 16),
        );
        chars.next();
    }
    n
}

fn format_value(out: &mut String, v: &Value, spec: &Spec, top: bool) -> Result<(), Error> {
    if spec.verb == 'T' {
        let name = type_name(v);
        out.push_str(&builtin(&spec.directive('s'), &[Value::from(name)])?);
        return Ok(());
    }
    if spec.verb == 'v' && spec.has('#') {
        out.push_str(&go_syntax(v, top));
        return Ok(());
    }
    match v {
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                format_value(out, item, spec, false)?;
            }
            out.push(']');
        }
        Value::Map(m) if m.contains_key(KV_PAIR_MARK) => {
            let plus = spec.verb == 'v' && spec.has('+');
            out.push('{');
            if plus {
                out.push_str("Key:");
            }
            if let Some(k) = m.get("Key") {
                format_value(out, k, spec, false)?;
            }
            out.push(' ');
            if plus {
                out.push_str("Value:");
            }
            if let Some(val) = m.get("Value") {
                format_value(out, val, spec, false)?;
            }
            out.push('}');
        }
        Value::Map(m) => {
            out.push_str("map[");
            for (i, (k, val)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                format_value(out, &Value::from(k.as_ref()), spec, false)?;
                out.push(':');
                format_value(out, val, spec, false)?;
            }
            out.push(']');
        }
        // A nil inside an interface slice or map: `<nil>`, whatever the verb and width.
        Value::Nil if !top => out.push_str("<nil>"),
        Value::Nil => out.push_str(&builtin(&spec.directive(spec.verb), &[Value::Nil])?),
        leaf => format_leaf(out, leaf, spec)?,
    }
    Ok(())
}

/// `%.<p>d`: Go's precision on an integer is its minimum number of digits (`%.2d` of 4 is
/// `04`, and of 0 with precision 0 is empty); gotmpl's formatter ignores it.
fn int_with_precision(n: i128, spec: &Spec, precision: usize) -> Result<String, Error> {
    let digits = if n == 0 && precision == 0 {
        String::new()
    } else {
        format!("{:0>precision$}", n.unsigned_abs())
    };
    let sign = if n < 0 {
        "-"
    } else if spec.has('+') {
        "+"
    } else if spec.has(' ') {
        " "
    } else {
        ""
    };
    let pad = spec.padding_only();
    builtin(
        &pad.directive('s'),
        &[Value::from(format!("{sign}{digits}"))],
    )
}

/// One bool, number or string, as Go formats it with `spec` — including Go's
/// `%!verb(type=value)` for a verb the type has no meaning for.
fn format_leaf(out: &mut String, leaf: &Value, spec: &Spec) -> Result<(), Error> {
    let (valid, as_v): (&str, char) = match leaf {
        Value::Bool(_) => ("tv", 't'),
        Value::Int(_) | Value::Uint(_) => ("bcdoOqxXUv", 'd'),
        Value::Float(_) => ("beEfFgGxXv", 'g'),
        Value::String(_) => ("sqxXv", 's'),
        _ => ("v", 'v'),
    };
    // `+` and `#` mean field names and Go syntax for %v, never a sign or a prefix.
    let plain = Spec {
        flags: spec.flags.replace(['+', '#'], ""),
        ..spec.clone()
    };
    // Go pads strings and bools with zeros under the `0` flag (to the left only); gotmpl
    // with spaces.
    let zero_padded = match leaf {
        Value::String(text) => Some((text.to_string(), 's')),
        Value::Bool(b) => Some((b.to_string(), 't')),
        _ => None,
    };
    if let (Some((text, kind)), true) = (zero_padded, plain.has('0') && !plain.has('-')) {
        if spec.verb == 'v' || spec.verb == kind || !valid.contains(spec.verb) {
            let mut shown: String = match (spec.precision, kind) {
                (Some(p), 's') => text.chars().take(p).collect(),
                _ => text,
            };
            let fill = spec
                .width
                .unwrap_or(0)
                .saturating_sub(shown.chars().count());
            shown.insert_str(0, &"0".repeat(fill));
            if valid.contains(spec.verb) {
                out.push_str(&shown);
            } else {
                out.push_str(&format!("%!{}({}={shown})", spec.verb, type_name(leaf)));
            }
            return Ok(());
        }
    }
    let int = match leaf {
        Value::Int(n) => Some(i128::from(*n)),
        Value::Uint(n) => Some(i128::from(*n)),
        _ => None,
    };
    let shown_as = if spec.verb == 'v' || !valid.contains(spec.verb) {
        as_v
    } else {
        spec.verb
    };
    if let (Some(n), 'q') = (int, shown_as) {
        let quoted = quote_rune(n);
        out.push_str(&builtin(&plain.directive('s'), &[Value::from(quoted)])?);
    } else if let (Value::Float(x), 'x' | 'X', None) = (leaf, shown_as, spec.precision) {
        let mut hex = hex_float(*x, spec.has('+'));
        if shown_as == 'X' {
            hex = hex.to_uppercase();
        }
        let pad = spec.padding_only();
        out.push_str(&builtin(&pad.directive('s'), &[Value::from(hex)])?);
    } else if let (Some(n), 'd', Some(precision)) = (int, shown_as, spec.precision) {
        let bad = spec.verb != 'v' && shown_as != spec.verb;
        if bad {
            out.push_str(&format!("%!{}({}=", spec.verb, type_name(leaf)));
        }
        out.push_str(&int_with_precision(n, &plain, precision)?);
        if bad {
            out.push(')');
        }
    } else if spec.verb == 'v' {
        out.push_str(&builtin(
            &plain.directive(as_v),
            std::slice::from_ref(leaf),
        )?);
    } else if valid.contains(spec.verb) {
        out.push_str(&builtin(
            &spec.directive(spec.verb),
            std::slice::from_ref(leaf),
        )?);
    } else {
        out.push_str(&format!("%!{}({}=", spec.verb, type_name(leaf)));
        out.push_str(&builtin(
            &plain.directive(as_v),
            std::slice::from_ref(leaf),
        )?);
        out.push(')');
    }
    Ok(())
}

/// `%q` of an integer: Go's `strconv.QuoteRune` (`'a'`, `'\x01'`, `'\u00ad'`).
fn quote_rune(n: i128) -> String {
    let c = u32::try_from(n)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or('\u{FFFD}');
    let body = match c {
        '\x07' => "\\a".to_string(),
        '\x08' => "\\b".to_string(),
        '\x0c' => "\\f".to_string(),
        '\n' => "\\n".to_string(),
        '\r' => "\\r".to_string(),
        '\t' => "\\t".to_string(),
        '\x0b' => "\\v".to_string(),
        '\\' => "\\\\".to_string(),
        '\'' => "\\'".to_string(),
        c if (c as u32) < 0x20 || c == '\x7f' => format!("\\x{:02x}", c as u32),
        c if c == ' ' || (!c.is_control() && !c.is_whitespace()) => c.to_string(),
        c if (c as u32) < 0x10000 => format!("\\u{:04x}", c as u32),
        c => format!("\\U{:08x}", c as u32),
    };
    format!("'{body}'")
}

/// `%x` of a `float64`: Go's hexadecimal mantissa and binary exponent, shortest form
/// (`0x1.e848p+19`, `-0x0p+00`).
fn hex_float(f: f64, plus: bool) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    let sign = if f.is_sign_negative() {
        "-"
    } else if plus {
        "+"
    } else {
        ""
    };
    if f.is_infinite() {
        return format!("{}Inf", if sign.is_empty() { "+" } else { sign });
    }
    if f == 0.0 {
        return format!("{sign}0x0p+00");
    }
    let bits = f.to_bits();
    let mut exp = ((bits >> 52) & 0x7ff) as i32;
    let mut mantissa = bits & ((1u64 << 52) - 1);
    if exp == 0 {
        exp = -1022;
        while mantissa & (1u64 << 52) == 0 {
            mantissa <<= 1;
            exp -= 1;
        }
        mantissa &= (1u64 << 52) - 1;
    } else {
        exp -= 1023;
    }
    let fraction = format!("{mantissa:013x}");
    let fraction = fraction.trim_end_matches('0');
    let dot = if fraction.is_empty() { "" } else { "." };
    let esign = if exp < 0 { '-' } else { '+' };
    format!("{sign}0x1{dot}{fraction}p{esign}{:02}", exp.abs())
}

/// The Go type confd's value has.
fn type_name(v: &Value) -> String {
    match v {
        Value::Nil => "<nil>".into(),
        Value::Bool(_) => "bool".into(),
        Value::Int(_) => "int".into(),
        Value::Uint(_) => "uint64".into(),
        Value::Float(_) => "float64".into(),
        Value::String(_) => "string".into(),
        Value::List(items) => match slice_type::of(v) {
            Some(SliceType::Strings) => "[]string".into(),
            Some(SliceType::KvPairs) => "memkv.KVPairs".into(),
            Some(SliceType::KvPairSlice) => "[]memkv.KVPair".into(),
            Some(SliceType::Ints) => "[]int".into(),
            Some(SliceType::Interfaces) => "[]interface {}".into(),
            None if items.iter().all(|i| matches!(i, Value::String(_))) => "[]string".into(),
            None => "[]interface {}".into(),
        },
        Value::Map(m) if m.contains_key(KV_PAIR_MARK) => "memkv.KVPair".into(),
        Value::Map(_) => "map[string]interface {}".into(),
        other => other.type_name().to_string(),
    }
}

/// `%#v`: Go syntax. Inside `[]interface{}` and `map[string]interface{}` a nil is
/// `interface {}(nil)`.
fn go_syntax(v: &Value, top: bool) -> String {
    match v {
        Value::Nil if top => "<nil>".into(),
        Value::Nil => "interface {}(nil)".into(),
        Value::String(s) => quote(s),
        Value::Float(f) => goprint::float(*f),
        Value::List(items) => {
            let elems: Vec<String> = items.iter().map(|i| go_syntax(i, false)).collect();
            format!("{}{{{}}}", type_name(v), elems.join(", "))
        }
        Value::Map(m) if m.contains_key(KV_PAIR_MARK) => {
            let field = |name: &str| m.get(name).map(|x| go_syntax(x, false)).unwrap_or_default();
            format!(
                "memkv.KVPair{{Key:{}, Value:{}}}",
                field("Key"),
                field("Value")
            )
        }
        Value::Map(m) => {
            let elems: Vec<String> = m
                .iter()
                .map(|(k, x)| format!("{}:{}", quote(k), go_syntax(x, false)))
                .collect();
            format!("map[string]interface {{}}{{{}}}", elems.join(", "))
        }
        other => goprint::value(other),
    }
}

/// Go's `strconv.Quote`, through gotmpl's `%q`.
fn quote(s: &str) -> String {
    builtin("%q", &[Value::from(s)]).unwrap_or_else(|_| format!("{s:?}"))
}

/// gotmpl's own `printf` (its Go-compatible verbs, widths and `%!` errors), called through
/// a one-line template because the renderer's `printf` replaces it by name.
pub fn builtin(format: &str, args: &[Value]) -> Result<String, Error> {
    let mut src = String::from("{{printf .f");
    for i in 0..args.len() {
        src.push_str(&format!(" (index .a {i})"));
    }
    src.push_str("}}");
    let mut data = BTreeMap::new();
    data.insert("f".to_string(), Value::from(format));
    data.insert("a".to_string(), Value::from(args.to_vec()));
    gotmpl::execute(&src, &Value::from(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goprint::kv_pair;

    fn f(format: &str, args: &[Value]) -> String {
        sprintf(format, args).unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn verbs_apply_to_each_element_as_in_go() {
        let ints = Value::from(vec![Value::Int(1), Value::Int(22)]);
        let strs = Value::from(vec![Value::from("a"), Value::from("İ")]);
        assert_eq!(
            f("%d|%3d|%x", &[ints.clone(), ints.clone(), ints]),
            "[1 22]|[  1  22]|[1 16]"
        );
        assert_eq!(f("%s %q", &[strs.clone(), strs]), "[a İ] [\"a\" \"İ\"]");
        let pair = kv_pair("/k", "v");
        assert_eq!(
            f("%v %+v %s", &[pair.clone(), pair.clone(), pair.clone()]),
            "{/k v} {Key:/k Value:v} {/k v}"
        );
        assert_eq!(f("%#v", &[pair]), "memkv.KVPair{Key:\"/k\", Value:\"v\"}");
        assert_eq!(
            f(
                "%v %5.1f %v",
                &[Value::Float(1e6), Value::Float(2.25), Value::Float(0.5)]
            ),
            "1e+06   2.2 0.5"
        );
    }

    #[test]
    fn missing_extra_and_literal_percent() {
        assert_eq!(f("%d %d", &[Value::Int(1)]), "1 %!d(MISSING)");
        assert_eq!(
            f("%d", &[Value::Int(1), Value::from("x")]),
            "1%!(EXTRA string=x)"
        );
        assert_eq!(f("100%%", &[]), "100%");
        assert_eq!(
            f("%T %T", &[Value::Float(1.0), Value::Int(1)]),
            "float64 int"
        );
        assert_eq!(
            f("%.2f|%.2f", &[Value::Int(4), Value::from("héllo")]),
            "%!f(int=04)|%!f(string=hé)"
        );
        assert_eq!(
            f("%+v %t", &[Value::Float(1e-6), Value::Float(1e20)]),
            "1e-06 %!t(float64=1e+20)"
        );
        let with_nil = Value::from(vec![Value::Nil, Value::Bool(true)]);
        assert_eq!(
            f(
                "%t|%5d|%05d",
                &[with_nil.clone(), with_nil.clone(), with_nil]
            ),
            "[<nil> true]|[<nil> %!d(bool= true)]|[<nil> %!d(bool=0true)]"
        );
        assert_eq!(f("%%[%q", &[Value::from(vec![])]), "%[[]");
        assert_eq!(
            f(
                "%05d|%05s|%-5s|",
                &[Value::from("%d"), Value::from("ab"), Value::from("ab")]
            ),
            "%!d(string=000%d)|000ab|ab   |"
        );
        assert_eq!(
            f(
                "%q %q %q",
                &[Value::Int(1), Value::Int(97), Value::Int(0x2603)]
            ),
            "'\\x01' 'a' '☃'"
        );
        assert_eq!(
            f(
                "%x %X %x",
                &[Value::Float(1e6), Value::Float(-0.0), Value::Float(1.0)]
            ),
            "0x1.e848p+19 -0X0P+00 0x1p+00"
        );
    }
}
