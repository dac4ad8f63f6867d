//! The Go slice type behind each list a confd function returns.
//!
//! confd's `reverse` reorders only `[]string` and `[]memkv.KVPair` and hands anything else
//! back unchanged — including `memkv.KVPairs`, the named type `gets` returns, and the
//! `[]interface{}` of `jsonArray`; the sorts refuse types they were not written for. gotmpl's
//! lists carry no such type, so the functions record it here, by list identity, for the
//! duration of one execution (one thread runs a template, so the record is per thread and
//! [`Execution`] clears it).

use std::cell::RefCell;
use std::collections::HashMap;

use gotmpl::Value;

/// A Go slice type confd's functions return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceType {
    /// `[]string`: `split`, `getvs`, `ls`, `lsdir`, `lookupIP*`, `sortByLength`.
    Strings,
    /// `memkv.KVPairs`: `gets`.
    KvPairs,
    /// `[]memkv.KVPair`: `sortKVByLength`.
    KvPairSlice,
    /// `[]int`: `seq`.
    Ints,
    /// `[]interface{}`: lists inside `json` and `jsonArray` results.
    Interfaces,
}

thread_local! {
    /// List address → its type, and the list itself so the address is not reused.
    static TYPES: RefCell<HashMap<usize, (SliceType, Value)>> = RefCell::new(HashMap::new());
}

fn address(v: &Value) -> Option<usize> {
    match v {
        Value::List(items) => Some(std::sync::Arc::as_ptr(items) as *const Value as usize),
        _ => None,
    }
}

/// Records that `v` (a list) is a Go `kind`, and returns it.
pub fn tag(v: Value, kind: SliceType) -> Value {
    if let Some(at) = address(&v) {
        TYPES.with(|t| t.borrow_mut().insert(at, (kind, v.clone())));
    }
    v
}

/// The recorded type of `v`, if a confd function made it.
pub fn of(v: &Value) -> Option<SliceType> {
    let at = address(v)?;
    TYPES.with(|t| t.borrow().get(&at).map(|(kind, _)| *kind))
}

/// One template execution: the record starts empty and is dropped at the end.
pub struct Execution(());

impl Execution {
    /// Starts an execution on this thread.
    pub fn start() -> Self {
        TYPES.with(|t| t.borrow_mut().clear());
        Self(())
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        TYPES.with(|t| t.borrow_mut().clear());
    }
}
