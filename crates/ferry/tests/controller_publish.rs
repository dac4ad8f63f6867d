//! Publishing configurations from the SQL record to etcd, against `ferry store` and a real
//! etcd 3.4: versions never move backwards, and reconciliation makes etcd match SQL.

mod common;

use common::Server;
use etcd_client::GetOptions;
use ferry_controller::keys::Keys;
use ferry_controller::{IngressDocument, PublishedConfig, Publisher, ReconcileReport, Record};

against_both!(&[];
    publish_never_moves_a_configuration_backwards,
    reconcile_makes_etcd_match_sql,
);

fn doc(host: &str) -> IngressDocument {
    let json = format!(
        r#"{{"kind":"ingress","virtual_hosts":[{{"hostname":"{host}","paths":[{{"path":"/","service":"web"}}]}}]}}"#
    );
    IngressDocument::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

async fn record() -> anyhow::Result<(tempfile::TempDir, Record)> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
    let record = Record::connect(&url).await?;
    Ok((dir, record))
}

async fn published(server: &Server, key: &str) -> anyhow::Result<Option<PublishedConfig>> {
    let mut c = server.client().await?;
    let resp = c.get(key, None).await?;
    Ok(match resp.kvs().first() {
        Some(kv) => Some(serde_json::from_slice(kv.value())?),
        None => None,
    })
}

/// The published version at `key` and who made it.
async fn version_and_author(server: &Server, key: &str) -> anyhow::Result<Option<(i64, String)>> {
    Ok(published(server, key)
        .await?
        .map(|p| (p.version, p.changed_by)))
}

async fn publish_never_moves_a_configuration_backwards(server: &Server) -> anyhow::Result<()> {
    let (_dir, record) = record().await?;
    let keys = Keys::default();
    let publisher = Publisher::new(server.client().await?, keys.clone());
    let v1 = record
        .create("prod", &doc("a.example.com"), "alice")
        .await?;
    let v2 = record
        .update("prod", &v1.id, 1, &doc("b.example.com"), "bob")
        .await?;
    assert!(publisher.publish(&v2).await?);
    // A slower controller publishing the older version changes nothing.
    assert!(!publisher.publish(&v1).await?);
    let key = keys.config("prod", &v1.id);
    let stored = published(server, &key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("not published"))?;
    assert_eq!((stored.version, stored.changed_by.as_str()), (2, "bob"));
    // A second controller, which never saw the key, neither: its guarded write fails and
    // the same transaction shows it the newer version.
    let other = Publisher::new(server.client().await?, keys.clone());
    assert!(!other.publish(&v1).await?);
    // The other controller moves it on behind the first one's back; the first one's
    // memory of the key is stale, and its older version still changes nothing.
    let v3 = record
        .update("prod", &v1.id, 2, &doc("c.example.com"), "carol")
        .await?;
    assert!(other.publish(&v3).await?);
    assert!(!publisher.publish(&v2).await?);
    assert_eq!(
        version_and_author(server, &key).await?,
        Some((3, "carol".into()))
    );
    // Anyone may rewrite the key (here by hand); the next version still lands.
    server
        .client()
        .await?
        .put(
            key.as_str(),
            serde_json::to_vec(&PublishedConfig::from(&v2))?,
            None,
        )
        .await?;
    let v4 = record
        .update("prod", &v1.id, 3, &doc("d.example.com"), "dave")
        .await?;
    assert!(publisher.publish(&v4).await?);
    assert_eq!(
        version_and_author(server, &key).await?,
        Some((4, "dave".into()))
    );
    // Deleted behind its back (a lost etcd, an operator): the same version is written
    // again, whatever the publisher remembers having written.
    server.client().await?.delete(key.as_str(), None).await?;
    assert!(publisher.publish(&v4).await?);
    assert_eq!(
        version_and_author(server, &key).await?,
        Some((4, "dave".into()))
    );
    publisher.unpublish("prod", &v1.id).await?;
    assert!(published(server, &key).await?.is_none());
    // Published again after the deletion (a configuration created anew under its id).
    let v5 = record
        .update("prod", &v1.id, 4, &doc("e.example.com"), "erin")
        .await?;
    assert!(publisher.publish(&v5).await?);
    assert_eq!(
        version_and_author(server, &key).await?,
        Some((5, "erin".into()))
    );
    Ok(())
}

async fn reconcile_makes_etcd_match_sql(server: &Server) -> anyhow::Result<()> {
    let (_dir, record) = record().await?;
    let keys = Keys::default();
    let publisher = Publisher::new(server.client().await?, keys.clone());
    let a = record
        .create("prod", &doc("a.example.com"), "alice")
        .await?;
    let b = record.create("dev", &doc("b.example.com"), "alice").await?;
    let c = record
        .create("prod", &doc("c.example.com"), "alice")
        .await?;
    // etcd as a crash, a lost etcd or a restored snapshot could leave it: c never
    // published, a at a stale version, and a stray configuration SQL does not know.
    publisher.publish(&a).await?;
    publisher.publish(&b).await?;
    let a2 = record
        .update("prod", &a.id, 1, &doc("a2.example.com"), "bob")
        .await?;
    let mut client = server.client().await?;
    client
        .put(keys.config("prod", "stray-id"), "{}", None)
        .await?;
    client
        .put(keys.status("prod", "stray-id", "agent-1"), "{}", None)
        .await?;
    let report = publisher.reconcile(&record).await?;
    assert_eq!(
        report,
        ReconcileReport {
            added: 1,
            fixed: 1,
            removed: 1
        }
    );
    let all = client
        .get(keys.all_configs(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut got: Vec<(String, i64)> = all
        .kvs()
        .iter()
        .map(|kv| serde_json::from_slice::<PublishedConfig>(kv.value()).map(|p| (p.id, p.version)))
        .collect::<Result<_, _>>()?;
    got.sort();
    let mut want = vec![(a2.id.clone(), 2), (b.id.clone(), 1), (c.id.clone(), 1)];
    want.sort();
    assert_eq!(got, want);
    assert!(client
        .get(
            keys.statuses("prod", "stray-id"),
            Some(GetOptions::new().with_prefix())
        )
        .await?
        .kvs()
        .is_empty());
    // A second pass has nothing to do.
    assert_eq!(
        publisher.reconcile(&record).await?,
        ReconcileReport::default()
    );
    Ok(())
}
