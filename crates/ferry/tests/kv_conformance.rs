//! The KV half of the etcd conformance suite: every case runs against `ferry store` and
//! against a real etcd 3.4, with the same assertions.

mod common;

use common::{assert_etcd_error, Server};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use tonic::Code;

against_both!(&[];
    put_get_tracks_revisions_and_versions,
    range_limits_counts_and_key_ranges,
    range_sorts_on_every_target,
    range_filters_and_projections,
    range_reads_past_revisions,
    put_flags_follow_etcd,
    delete_range_counts_and_returns_prev,
    txn_compares_every_target,
    txn_branches_and_nested_responses,
    txn_rejects_duplicates_and_too_many_ops,
    one_revision_per_write_request,
    compaction_bounds_reads,
    requests_without_keys_are_refused,
    oversized_request_is_refused,
);

fn rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map(|h| h.revision()).unwrap_or(-1)
}

async fn put_get_tracks_revisions_and_versions(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let start = rev(c.get("x", None).await?.header());
    assert_eq!(start, 1, "a new store starts at revision 1");
    let r = c.put("k", "v1", None).await?;
    assert_eq!(rev(r.header()), 2);
    c.put("k", "v2", None).await?;
    let got = c.get("k", None).await?;
    let kv = &got.kvs()[0];
    assert_eq!((kv.key(), kv.value()), (&b"k"[..], &b"v2"[..]));
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (2, 3, 2)
    );
    assert_eq!(rev(got.header()), 3);
    assert_eq!(got.count(), 1);
    // A delete leaves a tombstone; the next put starts a new generation.
    c.delete("k", None).await?;
    assert!(c.get("k", None).await?.kvs().is_empty());
    c.put("k", "v3", None).await?;
    let kv = c.get("k", None).await?.kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (5, 5, 1)
    );
    Ok(())
}

async fn range_limits_counts_and_key_ranges(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for k in ["a", "b", "b/1", "b/2", "c", "d"] {
        c.put(k, k, None).await?;
    }
    let keys = |r: &etcd_client::GetResponse| -> Vec<String> {
        r.kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect()
    };
    let r = c.get("b", Some(GetOptions::new().with_prefix())).await?;
    assert_eq!(keys(&r), ["b", "b/1", "b/2"]);
    let r = c.get("b", Some(GetOptions::new().with_range("c"))).await?;
    assert_eq!(keys(&r), ["b", "b/1", "b/2"]);
    let r = c.get("c", Some(GetOptions::new().with_from_key())).await?;
    assert_eq!(keys(&r), ["c", "d"]);
    let r = c.get("", Some(GetOptions::new().with_all_keys())).await?;
    assert_eq!(r.count(), 6);
    // range_end before key: nothing.
    let r = c.get("d", Some(GetOptions::new().with_range("a"))).await?;
    assert_eq!((r.kvs().len(), r.count()), (0, 0));
    // limit: `more` set, `count` ignores the limit.
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
        .await?;
    assert_eq!(keys(&r), ["a", "b"]);
    assert!(r.more());
    assert_eq!(r.count(), 6);
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_limit(6)))
        .await?;
    assert!(!r.more());
    let r = c
        .get("b", Some(GetOptions::new().with_prefix().with_count_only()))
        .await?;
    assert_eq!((r.kvs().len(), r.count()), (0, 3));
    let r = c
        .get("a", Some(GetOptions::new().with_serializable()))
        .await?;
    assert_eq!(keys(&r), ["a"]);
    Ok(())
}

async fn range_sorts_on_every_target(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    // key: create order, version and value chosen to disagree with key order.
    c.put("s/c", "1", None).await?; // create 2
    c.put("s/a", "3", None).await?; // create 3
    c.put("s/b", "2", None).await?; // create 4
    c.put("s/a", "0", None).await?; // a: version 2, mod 5
    c.put("s/a", "4", None).await?; // a: version 3, mod 6
    c.put("s/c", "5", None).await?; // c: version 2, mod 7
    let order = |target, order| GetOptions::new().with_prefix().with_sort(target, order);
    let mut keys_for = async |opts: GetOptions| -> anyhow::Result<Vec<String>> {
        let r = c.get("s/", Some(opts)).await?;
        Ok(r.kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    };
    assert_eq!(
        keys_for(order(SortTarget::Key, SortOrder::Descend)).await?,
        ["s/c", "s/b", "s/a"]
    );
    assert_eq!(
        keys_for(order(SortTarget::Key, SortOrder::Ascend)).await?,
        ["s/a", "s/b", "s/c"]
    );
    assert_eq!(
        keys_for(order(SortTarget::Version, SortOrder::Ascend)).await?,
        ["s/b", "s/c", "s/a"]
    );
    assert_eq!(
        keys_for(order(SortTarget::Create, SortOrder::Ascend)).await?,
        ["s/c", "s/a", "s/b"]
    );
    assert_eq!(
        keys_for(order(SortTarget::Create, SortOrder::Descend)).await?,
        ["s/b", "s/a", "s/c"]
    );
    assert_eq!(
        keys_for(order(SortTarget::Mod, SortOrder::Descend)).await?,
        ["s/c", "s/a", "s/b"]
    );
    assert_eq!(
        keys_for(order(SortTarget::Value, SortOrder::Ascend)).await?,
        ["s/b", "s/a", "s/c"]
    );
    // A non-key target with no order sorts ascending (etcd's default).
    assert_eq!(
        keys_for(order(SortTarget::Mod, SortOrder::None)).await?,
        ["s/b", "s/a", "s/c"]
    );
    // Limit applies after sorting.
    let r = c
        .get(
            "s/",
            Some(order(SortTarget::Mod, SortOrder::Descend).with_limit(1)),
        )
        .await?;
    assert_eq!(
        (r.kvs()[0].key(), r.more(), r.count()),
        (&b"s/c"[..], true, 3)
    );
    Ok(())
}

async fn range_filters_and_projections(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    c.put("f/1", "one", None).await?; // 2
    c.put("f/2", "two", None).await?; // 3
    c.put("f/3", "three", None).await?; // 4
    c.put("f/1", "uno", None).await?; // 5 (create 2)
    let keys = |r: etcd_client::GetResponse| -> Vec<String> {
        r.kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect()
    };
    let p = || GetOptions::new().with_prefix();
    assert_eq!(
        keys(c.get("f/", Some(p().with_min_mod_revision(4))).await?),
        ["f/1", "f/3"]
    );
    assert_eq!(
        keys(c.get("f/", Some(p().with_max_mod_revision(3))).await?),
        ["f/2"]
    );
    assert_eq!(
        keys(c.get("f/", Some(p().with_min_create_revision(3))).await?),
        ["f/2", "f/3"]
    );
    assert_eq!(
        keys(c.get("f/", Some(p().with_max_create_revision(2))).await?),
        ["f/1"]
    );
    let r = c.get("f/", Some(p().with_keys_only())).await?;
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(r.kvs().len(), 3);
    Ok(())
}

async fn range_reads_past_revisions(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    c.put("h", "1", None).await?; // 2
    c.put("h", "2", None).await?; // 3
    c.delete("h", None).await?; // 4
    let at = async |c: &mut etcd_client::Client, r| -> anyhow::Result<Option<String>> {
        let resp = c.get("h", Some(GetOptions::new().with_revision(r))).await?;
        assert_eq!(
            rev(resp.header()),
            4,
            "the header carries the current revision"
        );
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    };
    assert_eq!(at(&mut c, 1).await?, None);
    assert_eq!(at(&mut c, 2).await?.as_deref(), Some("1"));
    assert_eq!(at(&mut c, 3).await?.as_deref(), Some("2"));
    assert_eq!(at(&mut c, 4).await?, None);
    assert_eq!(at(&mut c, 0).await?, None);
    assert_etcd_error(
        c.get("h", Some(GetOptions::new().with_revision(5))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    Ok(())
}

async fn put_flags_follow_etcd(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let r = c
        .put("p", "1", Some(PutOptions::new().with_prev_key()))
        .await?;
    assert!(r.prev_key().is_none());
    let r = c
        .put("p", "2", Some(PutOptions::new().with_prev_key()))
        .await?;
    assert_eq!(r.prev_key().map(|kv| kv.value()), Some(&b"1"[..]));
    // ignore_value keeps the value and still makes a new revision.
    c.put("p", "", Some(PutOptions::new().with_ignore_value()))
        .await?;
    let kv = c.get("p", None).await?.kvs()[0].clone();
    assert_eq!((kv.value(), kv.version()), (&b"2"[..], 3));
    c.put("p", "3", Some(PutOptions::new().with_ignore_lease()))
        .await?;
    assert_eq!(c.get("p", None).await?.kvs()[0].value(), b"3");
    let before = rev(c.get("p", None).await?.header());
    assert_etcd_error(
        c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_etcd_error(
        c.put("missing", "x", Some(PutOptions::new().with_ignore_lease()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_etcd_error(
        c.put("p", "x", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_etcd_error(
        c.put(
            "p",
            "x",
            Some(PutOptions::new().with_ignore_lease().with_lease(7)),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_etcd_error(
        c.put("p", "x", Some(PutOptions::new().with_lease(123456)))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let after = c.get("p", None).await?;
    assert_eq!(rev(after.header()), before, "refused puts change nothing");
    assert_eq!(after.kvs()[0].value(), b"3");
    Ok(())
}

async fn delete_range_counts_and_returns_prev(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for k in ["d/1", "d/2", "d/3", "e"] {
        c.put(k, format!("v-{k}"), None).await?;
    }
    let r = c
        .delete(
            "d/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await?;
    assert_eq!(r.deleted(), 3);
    let prev: Vec<_> = r.prev_kvs().iter().map(|kv| kv.value().to_vec()).collect();
    assert_eq!(
        prev,
        [b"v-d/1".to_vec(), b"v-d/2".to_vec(), b"v-d/3".to_vec()]
    );
    assert_eq!(rev(r.header()), 6, "one revision for the whole delete");
    // Deleting nothing does not make a revision.
    let r = c.delete("nothing", None).await?;
    assert_eq!((r.deleted(), rev(r.header())), (0, 6));
    let r = c.delete("e", None).await?;
    assert!(r.prev_kvs().is_empty(), "prev_kvs only when asked");
    assert_eq!(
        c.get("", Some(GetOptions::new().with_all_keys()))
            .await?
            .count(),
        0
    );
    Ok(())
}

async fn txn_compares_every_target(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    c.put("t/a", "10", None).await?; // 2
    c.put("t/a", "20", None).await?; // 3: version 2, create 2, mod 3
    c.put("t/b", "30", None).await?; // 4
    let mut check = async |cmp: Compare| -> anyhow::Result<bool> {
        Ok(c.txn(Txn::new().when([cmp])).await?.succeeded())
    };
    assert!(check(Compare::value("t/a", CompareOp::Equal, "20")).await?);
    assert!(check(Compare::value("t/a", CompareOp::Greater, "1")).await?);
    assert!(check(Compare::value("t/a", CompareOp::Less, "3")).await?);
    assert!(check(Compare::value("t/a", CompareOp::NotEqual, "10")).await?);
    assert!(check(Compare::version("t/a", CompareOp::Equal, 2)).await?);
    assert!(check(Compare::create_revision("t/a", CompareOp::Equal, 2)).await?);
    assert!(check(Compare::mod_revision("t/a", CompareOp::Greater, 2)).await?);
    assert!(check(Compare::mod_revision("t/a", CompareOp::Less, 4)).await?);
    assert!(check(Compare::lease("t/a", CompareOp::Equal, 0)).await?);
    assert!(!check(Compare::lease("t/a", CompareOp::NotEqual, 0)).await?);
    // Missing keys: version/create/mod are 0; a value compare always fails.
    assert!(check(Compare::version("t/none", CompareOp::Equal, 0)).await?);
    assert!(check(Compare::create_revision("t/none", CompareOp::Equal, 0)).await?);
    assert!(!check(Compare::value("t/none", CompareOp::Equal, "")).await?);
    assert!(!check(Compare::value("t/none", CompareOp::NotEqual, "x")).await?);
    // Over a range every key must match.
    assert!(check(Compare::version("t/", CompareOp::Greater, 0).with_prefix()).await?);
    assert!(!check(Compare::mod_revision("t/", CompareOp::Less, 4).with_prefix()).await?);
    assert!(check(Compare::mod_revision("t/a", CompareOp::Less, 4).with_range("t/b")).await?);
    Ok(())
}

async fn txn_branches_and_nested_responses(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    c.put("n/x", "1", None).await?; // 2
    let nested = Txn::new()
        .when([Compare::value("n/x", CompareOp::Equal, "1")])
        .and_then([TxnOp::put("n/inner", "then", None)])
        .or_else([TxnOp::put("n/inner", "else", None)]);
    let txn = Txn::new()
        .when([Compare::version("n/x", CompareOp::Equal, 1)])
        .and_then([
            TxnOp::put("n/x", "2", None),
            TxnOp::get("n/x", None),
            TxnOp::txn(nested),
            TxnOp::delete("n/gone", None),
        ])
        .or_else([TxnOp::get("n/x", None)]);
    let r = c.txn(txn).await?;
    assert!(r.succeeded());
    assert_eq!(rev(r.header()), 3, "one revision for the whole transaction");
    let ops = r.op_responses();
    assert_eq!(ops.len(), 4);
    assert!(matches!(ops[0], TxnOpResponse::Put(_)));
    match &ops[1] {
        // A read inside the transaction sees its earlier write.
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"2"),
        other => panic!("expected a range response, got {other:?}"),
    }
    match &ops[2] {
        // Nested compares see the state before the transaction began.
        TxnOpResponse::Txn(t) => assert!(t.succeeded()),
        other => panic!("expected a txn response, got {other:?}"),
    }
    assert!(matches!(ops[3], TxnOpResponse::Delete(_)));
    assert_eq!(c.get("n/inner", None).await?.kvs()[0].value(), b"then");
    let kv = c.get("n/x", None).await?.kvs()[0].clone();
    assert_eq!((kv.mod_revision(), kv.version()), (3, 2));
    // The failure branch, read-only: no new revision.
    let r = c
        .txn(
            Txn::new()
                .when([Compare::version("n/x", CompareOp::Equal, 1)])
                .or_else([TxnOp::get("n/x", None)]),
        )
        .await?;
    assert!(!r.succeeded());
    assert_eq!(rev(r.header()), 3);
    match &r.op_responses()[0] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"2"),
        other => panic!("expected a range response, got {other:?}"),
    }
    // An empty transaction succeeds and changes nothing.
    let r = c.txn(Txn::new()).await?;
    assert!(r.succeeded());
    assert_eq!(rev(r.header()), 3);
    Ok(())
}

async fn txn_rejects_duplicates_and_too_many_ops(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let dup = "etcdserver: duplicate key given in txn request";
    assert_etcd_error(
        c.txn(Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]))
            .await,
        Code::InvalidArgument,
        dup,
    );
    assert_etcd_error(
        c.txn(Txn::new().and_then([
            TxnOp::delete("a", Some(DeleteOptions::new().with_range("c"))),
            TxnOp::put("b", "1", None),
        ]))
        .await,
        Code::InvalidArgument,
        dup,
    );
    assert_etcd_error(
        c.txn(Txn::new().and_then([
            TxnOp::put("k", "1", None),
            TxnOp::txn(Txn::new().and_then([TxnOp::put("k", "2", None)])),
        ]))
        .await,
        Code::InvalidArgument,
        dup,
    );
    // The two branches of a nested transaction exclude each other: allowed.
    let r = c
        .txn(
            Txn::new().and_then([TxnOp::txn(
                Txn::new()
                    .and_then([TxnOp::put("k", "then", None)])
                    .or_else([TxnOp::put("k", "else", None)]),
            )]),
        )
        .await?;
    assert!(r.succeeded());
    // Puts in different top-level branches are fine too.
    c.txn(
        Txn::new()
            .and_then([TxnOp::put("k", "1", None)])
            .or_else([TxnOp::put("k", "2", None)]),
    )
    .await?;
    let many: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("m{i}"), "v", None))
        .collect();
    assert_etcd_error(
        c.txn(Txn::new().and_then(many)).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let ok: Vec<TxnOp> = (0..128)
        .map(|i| TxnOp::put(format!("m{i}"), "v", None))
        .collect();
    c.txn(Txn::new().and_then(ok)).await?;
    assert_eq!(
        c.get("m", Some(GetOptions::new().with_prefix().with_count_only()))
            .await?
            .count(),
        128
    );
    Ok(())
}

async fn one_revision_per_write_request(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let ops: Vec<TxnOp> = (0..10)
        .map(|i| TxnOp::put(format!("r/{i}"), "v", None))
        .collect();
    let r = c.txn(Txn::new().and_then(ops)).await?;
    assert_eq!(rev(r.header()), 2);
    let all = c.get("r/", Some(GetOptions::new().with_prefix())).await?;
    assert!(all
        .kvs()
        .iter()
        .all(|kv| kv.mod_revision() == 2 && kv.create_revision() == 2));
    // Concurrent writers: every acknowledged revision is distinct, none skipped.
    let mut handles = Vec::new();
    for w in 0..4 {
        let mut c = server.client().await?;
        handles.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                let r = c.put(format!("w/{w}/{i}"), "v", None).await?;
                revs.push(rev(r.header()));
            }
            anyhow::Ok(revs)
        }));
    }
    let mut revs = Vec::new();
    for h in handles {
        revs.extend(h.await??);
    }
    revs.sort_unstable();
    assert_eq!(revs, (3..103).collect::<Vec<i64>>());
    Ok(())
}

async fn compaction_bounds_reads(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for i in 0..5 {
        c.put("c", format!("{i}"), None).await?; // revisions 2..=6
    }
    c.compact(
        4,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await?;
    let at = |r| Some(GetOptions::new().with_revision(r));
    assert_etcd_error(
        c.get("c", at(3)).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    // Reading at the compact revision is legal.
    assert_eq!(c.get("c", at(4)).await?.kvs()[0].value(), b"2");
    assert_eq!(c.get("c", at(6)).await?.kvs()[0].value(), b"4");
    assert_etcd_error(
        c.compact(4, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_etcd_error(
        c.compact(100, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // A compaction changes no key and makes no revision.
    let r = c.get("c", None).await?;
    assert_eq!((rev(r.header()), r.kvs()[0].version()), (6, 5));
    Ok(())
}

async fn requests_without_keys_are_refused(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let msg = "etcdserver: key is not provided";
    assert_etcd_error(c.get("", None).await, Code::InvalidArgument, msg);
    assert_etcd_error(c.put("", "v", None).await, Code::InvalidArgument, msg);
    assert_etcd_error(c.delete("", None).await, Code::InvalidArgument, msg);
    assert_etcd_error(
        c.txn(Txn::new().when([Compare::version("", CompareOp::Equal, 0)]))
            .await,
        Code::InvalidArgument,
        msg,
    );
    assert_etcd_error(
        c.txn(Txn::new().and_then([TxnOp::put("", "v", None)]))
            .await,
        Code::InvalidArgument,
        msg,
    );
    assert_eq!(
        rev(c.get("k", None).await?.header()),
        1,
        "nothing was written"
    );
    Ok(())
}

async fn oversized_request_is_refused(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let big = vec![b'x'; 1536 * 1024 + 100];
    assert_etcd_error(
        c.put("big", big, None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    let fits = vec![b'x'; 1024 * 1024];
    c.put("fits", fits, None).await?;
    assert!(c.get("big", None).await?.kvs().is_empty());
    Ok(())
}
