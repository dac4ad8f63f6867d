//! The objects `json` decoded lately, shared by every template execution of the process.
//!
//! Agents running in one process (`ferry up`'s) render the same configuration values after
//! each change: the first execution decodes a value, the others take its result. Values are
//! immutable in a template, so sharing one decoded tree is invisible to the templates; the
//! Go slice type of its lists is recorded again for each execution (see `slice_type`).

use std::collections::HashMap;
use std::sync::LazyLock;

use gotmpl::{TemplateError as Error, Value};

use crate::slice_type::{tag, SliceType};

/// Longer values are decoded at every use rather than kept.
const LONGEST_KEPT: usize = 64 * 1024;

/// How many decoded values are kept; the memo starts over when it is full.
const KEPT: usize = 256;

static DECODED: LazyLock<parking_lot::Mutex<HashMap<String, Value>>> =
    LazyLock::new(Default::default);

/// `raw` decoded by `decode`, or the tree an earlier execution decoded from the same text.
pub(crate) fn decoded(
    raw: &str,
    decode: impl FnOnce(&str) -> Result<Value, Error>,
) -> Result<Value, Error> {
    if let Some(value) = DECODED.lock().get(raw).cloned() {
        tag_lists(&value);
        return Ok(value);
    }
    let value = decode(raw)?;
    if raw.len() <= LONGEST_KEPT {
        let mut kept = DECODED.lock();
        if kept.len() >= KEPT {
            kept.clear();
        }
        kept.insert(raw.to_string(), value.clone());
    }
    Ok(value)
}

/// Records every list of a decoded tree as Go's `[]interface{}`, as decoding it did.
fn tag_lists(value: &Value) {
    match value {
        Value::List(items) => {
            tag(value.clone(), SliceType::Interfaces);
            items.iter().for_each(tag_lists);
        }
        Value::Map(entries) => entries.values().for_each(tag_lists),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_decoded_once_and_its_lists_keep_their_type() -> Result<(), Error> {
        let raw = r#"{"memo-test": [1, [2]]}"#;
        let mut calls = 0;
        let mut decode = |text: &str| {
            calls += 1;
            let list = tag(
                Value::from(vec![
                    Value::Int(1),
                    tag(Value::from(vec![Value::Int(2)]), SliceType::Interfaces),
                ]),
                SliceType::Interfaces,
            );
            let mut map = std::collections::BTreeMap::new();
            map.insert(text.len().to_string(), list);
            Ok(Value::from(map))
        };
        let first = decoded(raw, &mut decode)?;
        let _execution = crate::slice_type::Execution::start();
        let again = decoded(raw, &mut decode)?;
        assert_eq!(calls, 1);
        assert_eq!(first, again);
        let Value::Map(entries) = &again else {
            panic!("not a map: {again:?}");
        };
        for list in entries.values() {
            assert_eq!(crate::slice_type::of(list), Some(SliceType::Interfaces));
            let Value::List(items) = list else {
                panic!("not a list: {list:?}");
            };
            assert_eq!(
                crate::slice_type::of(&items[1]),
                Some(SliceType::Interfaces)
            );
        }
        let failed = decoded("{not json", |_| Err(Error::Exec("refused".into())));
        assert!(failed.is_err());
        Ok(())
    }
}
