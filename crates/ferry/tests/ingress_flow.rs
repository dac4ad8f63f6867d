//! The whole ingress system end to end, as separate processes: two `ferry controller`
//! replicas on one SQL database (SQLite, MariaDB or PostgreSQL, the servers started by the
//! test), three `ferry agent`s checking with the real `nginx -t`, driven through the REST API.
//! Against `ferry store` and a real etcd 3.4.

mod common;

use std::time::Duration;

use common::ingress::{
    call, config_path, create, document, rollout, wait_complete, wait_rollout, Agent, Controller,
};
use common::Server;
use ferry_controller::keys::Keys;
use ferry_testkit::sql::SqlServer;

against_both!(&[];
    flow_on_sqlite,
    flow_on_mariadb,
    flow_on_postgresql,
);

async fn flow_on_sqlite(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let url = common::ingress::sqlite_url(tmp.path());
    flow(server, &url).await
}

async fn flow_on_mariadb(server: &Server) -> anyhow::Result<()> {
    let sql = SqlServer::mariadb()?;
    flow(server, &sql.url).await
}

async fn flow_on_postgresql(server: &Server) -> anyhow::Result<()> {
    let sql = SqlServer::postgres()?;
    flow(server, &sql.url).await
}

/// create → every agent applies → complete; update; a check failing on one agent; two
/// controllers writing concurrently; delete.
async fn flow(server: &Server, database: &str) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let endpoint = server.endpoint();
    let c1 = Controller::start(&endpoint, database, "c1", tmp.path()).await?;
    let c2 = Controller::start(&endpoint, database, "c2", tmp.path()).await?;
    let agents = [
        Agent::start(&endpoint, "a1", tmp.path(), None)?,
        Agent::start(&endpoint, "a2", tmp.path(), None)?,
        Agent::start(&endpoint, "a3", tmp.path(), Some("refused.example.com"))?,
    ];

    // Created through one replica, watched through the other: every agent applies it.
    let shop = create(&c1.addr, "shop.example.com").await?;
    let done = wait_complete(&c2.addr, &shop, 1, 3).await?;
    assert_eq!((done.summary.applied, done.summary.failed), (3, 0));
    for a in &agents {
        assert!(
            a.nginx_conf().contains("server_name \"shop.example.com\";"),
            "{}",
            a.name
        );
    }

    // Update through the other replica.
    let (status, body) = call(
        &c2.addr,
        "PUT",
        &config_path(&shop),
        Some(1),
        &document("shop2.example.com"),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    wait_complete(&c1.addr, &shop, 2, 3).await?;
    for a in &agents {
        assert!(
            a.nginx_conf()
                .contains("server_name \"shop2.example.com\";"),
            "{}",
            a.name
        );
    }

    // A configuration one agent's check refuses: failed there with the reason, applied on
    // the others, and that agent keeps serving its last good configuration.
    let refused = create(&c1.addr, "refused.example.com").await?;
    let seen = wait_rollout(&c1.addr, &refused, Duration::from_secs(30), |r| {
        r.summary.applied == 2 && r.summary.failed == 1
    })
    .await?;
    assert!(!seen.summary.complete);
    let a3 = seen
        .agents
        .iter()
        .find(|a| a.agent == "a3")
        .ok_or_else(|| anyhow::anyhow!("a3 missing from {seen:?}"))?;
    assert_eq!(a3.state, "failed");
    assert!(a3.message.contains("check_cmd"), "{a3:?}");
    assert!(!agents[2].nginx_conf().contains("refused.example.com"));
    assert!(agents[0].nginx_conf().contains("refused.example.com"));
    // The refused configuration is blamed alone: a change to another configuration still
    // reaches that agent, which installs it without the refused one.
    let (status, body) = call(
        &c1.addr,
        "PUT",
        &config_path(&shop),
        Some(2),
        &document("shop3.example.com"),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let done = wait_complete(&c2.addr, &shop, 3, 3).await?;
    assert_eq!((done.summary.applied, done.summary.failed), (3, 0));
    assert!(agents[2]
        .nginx_conf()
        .contains("server_name \"shop3.example.com\";"));
    assert!(!agents[2].nginx_conf().contains("refused.example.com"));
    let still = rollout(&c1.addr, &refused).await?;
    let a3 = still
        .agents
        .iter()
        .find(|a| a.agent == "a3")
        .ok_or_else(|| anyhow::anyhow!("a3 missing from {still:?}"))?;
    assert_eq!(a3.state, "failed", "{still:?}");
    let (status, _) = call(&c2.addr, "DELETE", &config_path(&refused), Some(1), "").await?;
    assert_eq!(status, 200);

    // Two controllers writing concurrently: every acknowledged create is kept and rolled
    // out, and of two updates of the same version exactly one wins.
    let mut creates = Vec::new();
    for i in 0..12 {
        let addr = if i % 2 == 0 {
            c1.addr.clone()
        } else {
            c2.addr.clone()
        };
        creates.push(tokio::spawn(async move {
            create(&addr, &format!("site{i}.example.com")).await
        }));
    }
    let mut updates = Vec::new();
    for (i, addr) in [
        c1.addr.clone(),
        c2.addr.clone(),
        c1.addr.clone(),
        c2.addr.clone(),
    ]
    .into_iter()
    .enumerate()
    {
        let path = config_path(&shop);
        updates.push(tokio::spawn(async move {
            call(
                &addr,
                "PUT",
                &path,
                Some(3),
                &document(&format!("race{i}.example.com")),
            )
            .await
            .map(|r| r.0)
        }));
    }
    let mut ids = Vec::new();
    for c in creates {
        ids.push(c.await??);
    }
    let mut codes = Vec::new();
    for u in updates {
        codes.push(u.await??);
    }
    codes.sort();
    assert_eq!(
        codes,
        [200, 412, 412, 412],
        "exactly one concurrent update wins"
    );
    let (_, listed) = call(
        &c2.addr,
        "GET",
        "/api/v1/environments/prod/configs",
        None,
        "",
    )
    .await?;
    let listed = listed.as_array().map(|l| l.len()).unwrap_or_default();
    assert_eq!(listed, 1 + ids.len());
    for id in &ids {
        wait_complete(&c1.addr, id, 1, 3).await?;
    }
    let shop_now = wait_complete(&c2.addr, &shop, 4, 3).await?;
    assert_eq!(shop_now.version, 4);
    let winner = &agents[0].nginx_conf();
    assert_eq!(winner.matches("server_name \"race").count(), 1, "{winner}");

    // Delete: gone from etcd, from every agent's nginx, and its status keys are removed.
    let (status, _) = call(&c1.addr, "DELETE", &config_path(&shop), Some(4), "").await?;
    assert_eq!(status, 200);
    let keys = Keys::default();
    let mut client = server.client().await?;
    assert!(client
        .get(keys.config("prod", &shop), None)
        .await?
        .kvs()
        .is_empty());
    for a in &agents {
        common::wait_for_content(
            &a.prefix.join("conf/nginx.conf"),
            "site11.example.com",
            Duration::from_secs(10),
        )
        .await?;
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while a.nginx_conf().contains("server_name \"race") {
            anyhow::ensure!(
                std::time::Instant::now() < until,
                "{} still routes the deleted configuration",
                a.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !client
        .get(
            keys.statuses("prod", &shop),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?
        .kvs()
        .is_empty()
    {
        anyhow::ensure!(
            std::time::Instant::now() < until,
            "status keys of a deleted configuration remain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
