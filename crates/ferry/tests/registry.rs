//! The registry against `ferry store` and a real etcd 3.4: announce with one lease, graceful
//! stop, crash, store restart, discovery order and compaction, TLS and mutual TLS.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::Certs;
use common::{ferry_bin, Kind, Server};
use ferry_registry::{announce, AnnounceConfig, Change, Discovery, DiscoveryConfig, Instance};

against_both!(&[];
    graceful_stop_removes_the_instance_at_once,
    a_killed_announcer_disappears_within_the_ttl,
    an_instance_comes_back_after_a_store_restart,
    discovery_sees_joins_and_leaves_in_order,
    discovery_relists_after_compaction_without_losing_or_inventing,
    heartbeats_write_nothing,
    a_lost_lease_is_replaced_by_announcing_again,
    a_paused_store_leaves_the_instance_announced_afterwards,
);

const PREFIX: &str = "/services";

fn fast() -> AnnounceConfig {
    AnnounceConfig {
        ttl: 2,
        keep_alive_interval: Duration::from_millis(500),
        ..AnnounceConfig::default()
    }
}

async fn next_change(d: &mut Discovery) -> anyhow::Result<Change> {
    tokio::time::timeout(Duration::from_secs(15), d.next_change())
        .await?
        .ok_or_else(|| anyhow::anyhow!("discovery stopped"))
}

fn ids(instances: &[Instance]) -> Vec<String> {
    instances.iter().map(|i| i.id.clone()).collect()
}

async fn graceful_stop_removes_the_instance_at_once(server: &Server) -> anyhow::Result<()> {
    let client = server.client().await?;
    let mut discovery = Discovery::start(client.clone(), PREFIX, Some("web")).await?;
    let a = announce(
        client.clone(),
        AnnounceConfig::default(),
        Instance::new("web", "a", "127.0.0.1:1"),
    )
    .await?;
    assert!(matches!(next_change(&mut discovery).await?, Change::Joined(i) if i.id == "a"));
    a.stop().await?;
    // Gone the moment stop returns: no waiting for the TTL.
    let mut c = server.client().await?;
    assert!(c.get("/services/web/a", None).await?.kvs().is_empty());
    assert!(matches!(next_change(&mut discovery).await?, Change::Left(i) if i.id == "a"));
    Ok(())
}

async fn a_killed_announcer_disappears_within_the_ttl(server: &Server) -> anyhow::Result<()> {
    let mut child = Command::new(ferry_bin())
        .args(["registry", "announce", "--endpoints", &server.endpoint()])
        .args([
            "--service",
            "web",
            "--id",
            "crashy",
            "--addr",
            "127.0.0.1:9",
            "--ttl",
            "2",
            "--keepalive",
            "500ms",
        ])
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let mut c = server.client().await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.get("/services/web/crashy", None).await?.kvs().is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "the instance never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill()?; // SIGKILL: no chance to deregister
    child.wait()?;
    let killed = Instant::now();
    while !c.get("/services/web/crashy", None).await?.kvs().is_empty() {
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(3),
            "still registered {:?} after kill -9 (TTL 2 s + 1 s)",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn an_instance_comes_back_after_a_store_restart(server: &Server) -> anyhow::Result<()> {
    // The server handle is shared; restart a second server that this test owns.
    let mut own = common::start(server.kind(), &[]).await?;
    let client = own.client().await?;
    let a = announce(
        client.clone(),
        fast(),
        Instance::new("web", "survivor", "127.0.0.1:1"),
    )
    .await?;
    own.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    own.restart().await?;
    let mut c = own.client().await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if !c
            .get("/services/web/survivor", None)
            .await?
            .kvs()
            .is_empty()
        {
            // Present, and still present after more than a TTL: keep-alives work again.
            tokio::time::sleep(Duration::from_secs(3)).await;
            if !c
                .get("/services/web/survivor", None)
                .await?
                .kvs()
                .is_empty()
            {
                break;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the instance did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop().await?;
    Ok(())
}

async fn discovery_sees_joins_and_leaves_in_order(server: &Server) -> anyhow::Result<()> {
    let client = server.client().await?;
    let mut discovery = Discovery::start(client.clone(), PREFIX, Some("api")).await?;
    let mut running = Vec::new();
    for id in ["one", "two", "three"] {
        running.push(
            announce(
                client.clone(),
                fast(),
                Instance::new("api", id, "127.0.0.1:1"),
            )
            .await?,
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Another service under the same prefix is not part of this discovery.
    let other = announce(
        client.clone(),
        fast(),
        Instance::new("other", "x", "127.0.0.1:2"),
    )
    .await?;
    let three = running.pop().ok_or_else(|| anyhow::anyhow!("missing"))?;
    let two = running.pop().ok_or_else(|| anyhow::anyhow!("missing"))?;
    let one = running.pop().ok_or_else(|| anyhow::anyhow!("missing"))?;
    two.stop().await?;
    one.stop().await?;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(match next_change(&mut discovery).await? {
            Change::Joined(i) => format!("+{}", i.id),
            Change::Updated(i) => format!("~{}", i.id),
            Change::Left(i) => format!("-{}", i.id),
        });
    }
    assert_eq!(seen, ["+one", "+two", "+three", "-two", "-one"]);
    assert_eq!(ids(&discovery.instances()), ["three"]);
    // Everything under the prefix, oldest first.
    let all = Discovery::start(client.clone(), PREFIX, None).await?;
    assert_eq!(ids(&all.instances()), ["three", "x"]);
    three.stop().await?;
    other.stop().await?;
    Ok(())
}

async fn discovery_relists_after_compaction_without_losing_or_inventing(
    server: &Server,
) -> anyhow::Result<()> {
    let mut own = common::start(server.kind(), &[]).await?;
    let client = own.client().await?;
    let stay = announce(
        client.clone(),
        AnnounceConfig::default(),
        Instance::new("db", "stay", "127.0.0.1:1"),
    )
    .await?;
    let leave = announce(
        client.clone(),
        AnnounceConfig::default(),
        Instance::new("db", "leave", "127.0.0.1:2"),
    )
    .await?;
    let slow_retry = DiscoveryConfig {
        min_retry_backoff: Duration::from_secs(4),
        max_retry_backoff: Duration::from_secs(4),
    };
    let mut discovery =
        Discovery::start_with(client.clone(), PREFIX, Some("db"), slow_retry).await?;
    next_change(&mut discovery).await?;
    next_change(&mut discovery).await?;
    // Cut discovery's watch, change the set while it is away, and compact that history.
    own.kill();
    own.restart().await?;
    let fresh = own.client().await?;
    leave.stop().await?;
    let join = announce(
        fresh.clone(),
        AnnounceConfig::default(),
        Instance::new("db", "new", "127.0.0.1:3"),
    )
    .await?;
    let mut c = own.client().await?;
    let rev = c
        .get("x", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or(0);
    c.compact(rev, None).await?;
    let mut changes = Vec::new();
    for _ in 0..2 {
        changes.push(next_change(&mut discovery).await?);
    }
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::Left(i) if i.id == "leave")),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::Joined(i) if i.id == "new")),
        "{changes:?}"
    );
    let mut now = ids(&discovery.instances());
    now.sort();
    assert_eq!(now, ["new", "stay"]);
    stay.stop().await?;
    join.stop().await?;
    Ok(())
}

async fn a_lost_lease_is_replaced_by_announcing_again(server: &Server) -> anyhow::Result<()> {
    let client = server.client().await?;
    let mut a = announce(
        client.clone(),
        fast(),
        Instance::new("web", "phoenix", "127.0.0.1:1"),
    )
    .await?;
    let ferry_registry::AnnounceState::Live { lease } = a.state() else {
        anyhow::bail!("not live after announce");
    };
    // As if the lease had expired during a partition: revoke it behind the announcer's back.
    let mut c = server.client().await?;
    c.lease_revoke(lease).await?;
    assert!(c.get("/services/web/phoenix", None).await?.kvs().is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = tokio::time::timeout(Duration::from_secs(10), a.changed()).await??;
        if let ferry_registry::AnnounceState::Live { lease: new } = state {
            assert_ne!(new, lease);
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "never announced again");
    }
    let got = c.get("/services/web/phoenix", None).await?;
    assert_eq!(got.kvs().len(), 1, "registered again under the new lease");
    a.stop().await?;
    Ok(())
}

async fn heartbeats_write_nothing(server: &Server) -> anyhow::Result<()> {
    let client = server.client().await?;
    let mut running = Vec::new();
    for i in 0..20 {
        running.push(
            announce(
                client.clone(),
                fast(),
                Instance::new("quiet", format!("{i}"), "127.0.0.1:1"),
            )
            .await?,
        );
    }
    let mut c = server.client().await?;
    let before = c
        .get("x", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or(0);
    // Several keep-alive rounds for every instance.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = c
        .get("x", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or(0);
    assert_eq!(before, after, "keep-alives must not write");
    for a in running {
        a.stop().await?;
    }
    Ok(())
}

/// The error a connection attempt that must fail gives.
async fn connect_error(
    config: &ferry_client::ConnectConfig,
) -> anyhow::Result<ferry_client::ConnectError> {
    match ferry_client::connect(config).await {
        Ok(_) => anyhow::bail!("connecting with {config:?} should have failed"),
        Err(e) => Ok(e),
    }
}

/// Starts `kind` with TLS; `mutual` also requires client certificates.
async fn tls_server(kind: Kind, certs: &Certs, mutual: bool) -> anyhow::Result<Server> {
    let cert = certs.server_cert.display().to_string();
    let key = certs.server_key.display().to_string();
    let ca = certs.ca.display().to_string();
    let mut flags = vec!["--cert-file", cert.as_str(), "--key-file", key.as_str()];
    if mutual {
        flags.extend(["--trusted-ca-file", ca.as_str(), "--client-cert-auth"]);
    }
    Server::start_tls(kind, ferry_bin(), &flags, certs.client()).await
}

async fn tls_and_mutual_tls(kind: Kind) -> anyhow::Result<()> {
    let certs = Certs::generate()?;
    for mutual in [false, true] {
        let server = tls_server(kind, &certs, mutual).await?;
        let client = server.client().await?;
        let a = announce(
            client.clone(),
            fast(),
            Instance::new("tls", "a", "127.0.0.1:1"),
        )
        .await?;
        let discovery = Discovery::start(client, PREFIX, Some("tls")).await?;
        assert_eq!(ids(&discovery.instances()), ["a"]);
        a.stop().await?;

        // A CA that did not sign the server certificate: refused, said so.
        let mut wrong_ca = server.connect_config();
        if let Some(tls) = wrong_ca.tls.as_mut() {
            tls.ca = Some(certs.other_ca.clone());
        }
        let err = connect_error(&wrong_ca).await?;
        assert!(
            matches!(
                err,
                ferry_client::ConnectError::Tls { .. }
                    | ferry_client::ConnectError::Unreachable { .. }
            ),
            "{err}"
        );
        // --insecure-skip-tls-verify: encrypted, the unknown CA accepted (the client
        // certificate still goes along for mutual TLS).
        let mut insecure = wrong_ca.clone();
        if let Some(tls) = insecure.tls.as_mut() {
            tls.ca = None;
            tls.insecure_skip_verify = true;
        }
        ferry_client::connect(&insecure)
            .await?
            .put("insecure", "ok", None)
            .await?;
        // Plain text against a TLS listener fails too.
        let mut plain = server.connect_config();
        plain.tls = None;
        assert!(ferry_client::connect(&plain).await.is_err());
        if mutual {
            let mut no_cert = server.connect_config();
            if let Some(tls) = no_cert.tls.as_mut() {
                tls.cert = None;
                tls.key = None;
            }
            let err = connect_error(&no_cert).await?;
            assert!(!err.to_string().is_empty());
        }
        // The JSON gateway shares the https port: an HTTP/1.1-only client (ALPN
        // `http/1.1`, as curl --http1.1 or Python's requests) is served there too.
        let api = ferry_controller::http_client::ApiClient::new(
            &format!("https://{}", server.endpoint()),
            &ferry_client::tls::ClientTlsFiles {
                ca: Some(certs.ca.clone()),
                cert: Some(certs.client_cert.clone()),
                key: Some(certs.client_key.clone()),
            },
        )?;
        let reply = api
            .request(
                "POST",
                "/v3/kv/range",
                None,
                &[],
                r#"{"key":"aW5zZWN1cmU="}"#,
            )
            .await?;
        if mutual && kind == Kind::Etcd {
            // etcd 3.4's gateway dials its own gRPC port without a client certificate, so
            // with --client-cert-auth every gateway call fails (a 503 "connection closed").
            assert_eq!(reply.status, 503, "{}", reply.body);
        } else {
            assert_eq!(reply.status, 200, "{}", reply.body);
            let body: serde_json::Value = serde_json::from_str(&reply.body)?;
            assert_eq!(body["kvs"][0]["value"], "b2s=", "{body}");
        }
        // The CLI takes the same settings as flags.
        let out = Command::new(ferry_bin())
            .args([
                "registry",
                "list",
                "--endpoints",
                &format!("https://{}", server.endpoint()),
            ])
            .arg("--cacert")
            .arg(&certs.ca)
            .arg("--cert")
            .arg(&certs.client_cert)
            .arg("--key")
            .arg(&certs.client_key)
            .output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_on_ferry() -> anyhow::Result<()> {
    tls_and_mutual_tls(Kind::Ferry).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_on_etcd() -> anyhow::Result<()> {
    tls_and_mutual_tls(Kind::Etcd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_and_bad_flags_get_clear_errors() -> anyhow::Result<()> {
    let port = ferry_testkit::free_port()?;
    let out = Command::new(ferry_bin())
        .args([
            "registry",
            "list",
            "--endpoints",
            &format!("127.0.0.1:{port}"),
            "--dial-timeout",
            "500ms",
        ])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach etcd at"), "{stderr}");
    let out = Command::new(ferry_bin())
        .args([
            "registry",
            "announce",
            "--service",
            "a/b",
            "--id",
            "x",
            "--addr",
            "h:1",
        ])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid service name"));
    let out = Command::new(ferry_bin())
        .args([
            "registry",
            "announce",
            "--service",
            "a",
            "--id",
            "x",
            "--addr",
            "h:1",
            "--meta",
            "novalue",
        ])
        .output()?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("--meta \"novalue\" is not KEY=VALUE"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_named_on_etcd_with_auth() -> anyhow::Result<()> {
    let server = common::start(Kind::Etcd, &[]).await?;
    let etcdctl = ferry_testkit::etcdctl_binary()?;
    let ctl = |args: &[&str]| {
        Command::new(&etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", server.endpoint()))
            .args(args)
            .output()
    };
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"][..],
        &["auth", "enable"][..],
    ] {
        let out = ctl(args)?;
        anyhow::ensure!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut config = server.connect_config();
    config.credentials = Some(("root".into(), "wrong".into()));
    let err = connect_error(&config).await?;
    assert!(
        matches!(err, ferry_client::ConnectError::Credentials { .. }),
        "{err}"
    );
    config.credentials = Some(("root".into(), "rootpw".into()));
    ferry_client::connect(&config).await?;
    Ok(())
}

/// SIGSTOP of the only member for longer than the TTL (what a partition looks like to the
/// announcer), then SIGCONT: the instance is there afterwards, discovery ends with exactly
/// it, and the announcement is live (on its lease, or on a new one if the store let the
/// old one expire).
async fn a_paused_store_leaves_the_instance_announced_afterwards(
    server: &Server,
) -> anyhow::Result<()> {
    let a = announce(
        server.client().await?,
        fast(),
        Instance::new("web", "p1", "127.0.0.1:1"),
    )
    .await?;
    let mut discovery = Discovery::start(server.client().await?, PREFIX, Some("web")).await?;
    let pid = server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the server has no pid"))?
        .to_string();
    let signal = |sig: &str| Command::new("kill").args([sig, &pid]).status();
    anyhow::ensure!(signal("-STOP")?.success());
    tokio::time::sleep(Duration::from_secs(4)).await;
    anyhow::ensure!(signal("-CONT")?.success());
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let live = matches!(a.state(), ferry_registry::AnnounceState::Live { .. });
        let stored = server
            .client()
            .await?
            .get("/services/web/p1", None)
            .await?
            .kvs()
            .len();
        if live && stored == 1 && ids(&discovery.instances()) == ["p1"] {
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "after the pause: state {:?}, stored {stored}, discovered {:?}",
            a.state(),
            ids(&discovery.instances())
        );
        // Drain discovery's changes so its view is current.
        let _ = tokio::time::timeout(Duration::from_millis(200), discovery.next_change()).await;
    }
    a.stop().await?;
    Ok(())
}
