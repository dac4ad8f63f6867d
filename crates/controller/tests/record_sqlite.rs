//! The SQL record on SQLite: versions, history, deletes, rollback and optimistic
//! concurrency between two controllers sharing one database.

use ferry_controller::{IngressDocument, Record, RecordError};

fn doc(host: &str) -> IngressDocument {
    let json = format!(
        r#"{{"kind":"ingress","virtual_hosts":[{{"hostname":"{host}","paths":[{{"path":"/","service":"web"}}]}}]}}"#
    );
    IngressDocument::from_json(json.as_bytes()).expect("valid document")
}

fn host(d: &IngressDocument) -> String {
    match d {
        IngressDocument::Ingress(i) => i.virtual_hosts[0].hostname.clone(),
        IngressDocument::Opaque { .. } => String::new(),
    }
}

#[tokio::test]
async fn versions_history_delete_and_rollback() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
    let record = Record::connect(&url).await?;
    let v1 = record
        .create("prod", &doc("a.example.com"), "alice")
        .await?;
    assert_eq!(v1.version, 1);
    let v2 = record
        .update("prod", &v1.id, 1, &doc("b.example.com"), "bob")
        .await?;
    assert_eq!((v2.version, v2.changed_by.as_str()), (2, "bob"));
    match record
        .update("prod", &v1.id, 1, &doc("c.example.com"), "carol")
        .await
    {
        Err(RecordError::Conflict {
            expected: 1,
            current: 2,
            ..
        }) => {}
        other => anyhow::bail!("a stale version must conflict, got {other:?}"),
    }
    assert_eq!(
        host(&record.get("prod", &v1.id).await?.document),
        "b.example.com"
    );
    let other_env = record
        .create("dev", &doc("dev.example.com"), "alice")
        .await?;
    assert_eq!(record.list("prod").await?.len(), 1);
    assert_eq!(record.list_all().await?.len(), 2);
    let v3 = record.rollback("prod", &v1.id, 1, 2, "alice").await?;
    assert_eq!(
        (v3.version, host(&v3.document)),
        (3, "a.example.com".to_string())
    );
    let v4 = record.delete("prod", &v1.id, 3, "alice").await?;
    assert!(v4.deleted);
    assert!(matches!(
        record.get("prod", &v1.id).await,
        Err(RecordError::NotFound { .. })
    ));
    assert!(record.list("prod").await?.is_empty());
    let history = record.history("prod", &v1.id).await?;
    let summary: Vec<(i64, bool, String)> = history
        .iter()
        .map(|r| (r.version, r.deleted, r.changed_by.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, false, "alice".into()),
            (2, false, "bob".into()),
            (3, false, "alice".into()),
            (4, true, "alice".into())
        ]
    );
    // Everything is on disk: a new connection sees the same record.
    drop(record);
    let reopened = Record::connect(&url).await?;
    assert_eq!(reopened.list_all().await?.len(), 1);
    assert_eq!(reopened.get("dev", &other_env.id).await?.version, 1);
    Ok(())
}

#[tokio::test]
async fn two_controllers_writing_at_once_never_lose_an_update() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
    let a = Record::connect(&url).await?;
    let b = Record::connect(&url).await?;
    let created = a.create("prod", &doc("x.example.com"), "a").await?;
    let mut tasks = Vec::new();
    for (i, rec) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        let id = created.id.clone();
        tasks.push(tokio::spawn(async move {
            rec.update(
                "prod",
                &id,
                1,
                &doc(&format!("w{i}.example.com")),
                &format!("writer{i}"),
            )
            .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await? {
            Ok(_) => won += 1,
            Err(RecordError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    assert_eq!(won, 1, "exactly one writer of version 1 wins");
    assert_eq!(b.get("prod", &created.id).await?.version, 2);
    assert_eq!(b.history("prod", &created.id).await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    match Record::connect("redis://localhost").await {
        Err(RecordError::UnsupportedUrl(u)) => assert_eq!(u, "redis://localhost"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("redis must be refused"),
    }
}
