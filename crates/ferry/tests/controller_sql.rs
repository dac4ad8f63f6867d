//! The controller's SQL record on real MariaDB and PostgreSQL servers started by the tests:
//! the same behaviour as on SQLite (versions, history, deletes, rollback, concurrency).

use ferry_controller::{IngressDocument, Record, RecordError};
use ferry_testkit::sql::SqlServer;

fn doc(host: &str) -> IngressDocument {
    let json = format!(
        r#"{{"kind":"ingress","virtual_hosts":[{{"hostname":"{host}","paths":[{{"path":"/","service":"web"}}]}}]}}"#
    );
    IngressDocument::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

async fn exercise(url: &str) -> anyhow::Result<()> {
    let record = Record::connect(url).await?;
    // The schema is applied idempotently.
    let other = Record::connect(url).await?;
    let v1 = record
        .create("prod", &doc("a.example.com"), "alice")
        .await?;
    let v2 = record
        .update("prod", &v1.id, 1, &doc("b.example.com"), "bob")
        .await?;
    assert_eq!(v2.version, 2);
    assert!(matches!(
        other
            .update("prod", &v1.id, 1, &doc("c.example.com"), "carol")
            .await,
        Err(RecordError::Conflict { current: 2, .. })
    ));
    let mut tasks = Vec::new();
    for (i, rec) in [record.clone(), other.clone(), record.clone(), other.clone()]
        .into_iter()
        .enumerate()
    {
        let id = v1.id.clone();
        tasks.push(tokio::spawn(async move {
            rec.update("prod", &id, 2, &doc(&format!("w{i}.example.com")), "w")
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        if t.await?.is_ok() {
            won += 1;
        }
    }
    assert_eq!(won, 1, "exactly one concurrent writer of version 2 wins");
    let v4 = record.rollback("prod", &v1.id, 1, 3, "alice").await?;
    assert_eq!(v4.version, 4);
    record.create("dev", &doc("d.example.com"), "alice").await?;
    assert_eq!(record.list_all().await?.len(), 2);
    record.delete("prod", &v1.id, 4, "alice").await?;
    assert!(matches!(
        record.get("prod", &v1.id).await,
        Err(RecordError::NotFound { .. })
    ));
    // A change of a deleted or a missing configuration is not found, at any version.
    for (id, expected) in [(v1.id.as_str(), 5), (v1.id.as_str(), 4), ("no-such-id", 1)] {
        assert!(
            matches!(
                record
                    .update("prod", id, expected, &doc("e.example.com"), "eve")
                    .await,
                Err(RecordError::NotFound { .. })
            ),
            "update of {id} at {expected}"
        );
    }
    let history = other.history("prod", &v1.id).await?;
    assert_eq!(
        history
            .iter()
            .map(|r| (r.version, r.deleted))
            .collect::<Vec<_>>(),
        [(1, false), (2, false), (3, false), (4, false), (5, true)]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_on_mariadb() -> anyhow::Result<()> {
    let server = SqlServer::mariadb()?;
    exercise(&server.url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_on_postgresql() -> anyhow::Result<()> {
    let server = SqlServer::postgres()?;
    exercise(&server.url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_on_sqlite() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("ctl.db");
    exercise(&format!("sqlite://{}", file.display())).await?;
    // Write-ahead logging, recorded in the file header (bytes 18 and 19 are 2): a change
    // costs one sync of the log instead of a rollback journal's four.
    let header = std::fs::read(&file)?;
    assert_eq!(header.get(18..20), Some(&[2u8, 2][..]), "not in WAL mode");
    Ok(())
}
