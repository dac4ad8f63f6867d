//! Range reads with etcd's exact semantics: limit and `more`, `count`, sorting on every
//! target, revision filters, keys_only and count_only.

use super::key_index::{KeyChange, KeyRange, TreeIndex};
use super::revision::Revision;
use crate::error::StoreError;
use etcd_client::proto::{PbKeyValue, PbRangeRequest, PbRangeResponse, PbResponseHeader};

const SORT_NONE: i32 = 0;
const SORT_ASCEND: i32 = 1;
const SORT_DESCEND: i32 = 2;
const TARGET_KEY: i32 = 0;
const TARGET_VERSION: i32 = 1;
const TARGET_CREATE: i32 = 2;
const TARGET_MOD: i32 = 3;
const TARGET_VALUE: i32 = 4;

/// The revision a read asks for, checked against the store's current and compact revisions.
pub fn resolve_revision(requested: i64, current: i64, compacted: i64) -> Result<i64, StoreError> {
    if requested <= 0 {
        return Ok(current);
    }
    if requested > current {
        return Err(StoreError::FutureRev);
    }
    if requested < compacted {
        return Err(StoreError::Compacted);
    }
    Ok(requested)
}

/// What the index says a range returns, before values are loaded.
pub struct RangePlan {
    changes: Vec<KeyChange>,
    count: i64,
}

/// Finds the keys of `req` visible at revision `at`.
pub fn plan(index: &TreeIndex, req: &PbRangeRequest, at: i64) -> RangePlan {
    let range = KeyRange::new(&req.key, &req.range_end);
    // Sorting and revision filters need every candidate; otherwise one extra proves `more`.
    let fetch_all = req.sort_order != SORT_NONE
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let limit = if req.count_only {
        0
    } else if req.limit > 0 && !fetch_all {
        req.limit as usize + 1
    } else {
        usize::MAX
    };
    let mut changes = Vec::new();
    let mut count = 0i64;
    index.visit(&range, at, |_, change| {
        count += 1;
        if changes.len() < limit {
            changes.push(change);
        }
        true
    });
    RangePlan { changes, count }
}

impl RangePlan {
    /// The revisions whose values the range loads.
    pub fn revisions(&self) -> impl Iterator<Item = Revision> + '_ {
        self.changes.iter().map(|c| c.rev)
    }

    /// How many values the range loads.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether the range loads no value.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Loads the planned values with `load` and applies filters, sorting and the limit.
pub fn finish(
    req: &PbRangeRequest,
    plan: RangePlan,
    header_revision: i64,
    mut load: impl FnMut(Revision) -> Result<PbKeyValue, StoreError>,
) -> Result<PbRangeResponse, StoreError> {
    let mut kvs = plan
        .changes
        .into_iter()
        .map(|c| load(c.rev))
        .collect::<Result<Vec<PbKeyValue>, _>>()?;
    let keep = |kv: &PbKeyValue| {
        (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
    };
    kvs.retain(keep);
    let mut order = req.sort_order;
    if req.sort_target != TARGET_KEY && order == SORT_NONE {
        order = SORT_ASCEND;
    }
    if order == SORT_ASCEND || order == SORT_DESCEND {
        let key = |a: &PbKeyValue, b: &PbKeyValue| match req.sort_target {
            TARGET_VERSION => a.version.cmp(&b.version),
            TARGET_CREATE => a.create_revision.cmp(&b.create_revision),
            TARGET_MOD => a.mod_revision.cmp(&b.mod_revision),
            TARGET_VALUE => a.value.cmp(&b.value),
            _ => a.key.cmp(&b.key),
        };
        if order == SORT_ASCEND {
            kvs.sort_by(key);
        } else {
            kvs.sort_by(|a, b| key(b, a));
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(PbRangeResponse {
        header: Some(PbResponseHeader {
            revision: header_revision,
            ..Default::default()
        }),
        kvs,
        more,
        count: plan.count,
    })
}
