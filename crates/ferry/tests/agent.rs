//! `ferry agent` against `ferry store` and a real etcd 3.4: it registers, renders its
//! environment's configurations (checked by the real `nginx -t`), follows registry services,
//! reports per-configuration status, and never installs a configuration failing its check.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::ingress::{nginx_binary, StopNginx};
use common::{ferry_bin, Server};
use ferry_controller::api::AgentStatus;
use ferry_controller::keys::Keys;
use ferry_controller::{IngressDocument, Publisher, Record};

against_both!(&["--bcrypt-cost", "4"];
    agent_applies_reports_and_refuses_bad_configurations,
    agent_serves_tls_virtual_hosts_through_nginx,
    an_agent_signed_in_as_another_environments_user_stops_with_the_reason,
    configurations_are_read_from_the_store_when_the_cache_is_behind_a_target_deletion,
    a_status_the_store_refused_is_reported_again_without_another_change,
);

struct Killer(Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ferry agent` named a1 in prod, on `prefix`, with `extra` flags, not yet started.
fn agent_a1_command(server: &Server, prefix: &std::path::Path, extra: &[&str]) -> Command {
    let mut command = Command::new(ferry_bin());
    command
        .args([
            "agent",
            "--endpoints",
            &server.endpoint(),
            "--env",
            "prod",
            "--name",
            "a1",
        ])
        .arg("--nginx-prefix")
        .arg(prefix)
        .args(extra)
        .env("FERRY_LOG", "warn");
    command
}

/// `ferry agent` named a1 in prod, on `prefix`, with `extra` flags.
fn agent_a1(server: &Server, prefix: &std::path::Path, extra: &[&str]) -> anyhow::Result<Killer> {
    Ok(Killer(agent_a1_command(server, prefix, extra).spawn()?))
}

/// Turns authentication on with `ferry store auth-bootstrap`, writing the passwords of root
/// and of `agent` (`env/name`) under `dir`.
fn auth_bootstrap(server: &Server, dir: &std::path::Path, agent: &str) -> anyhow::Result<()> {
    let out = Command::new(ferry_bin())
        .args(["store", "auth-bootstrap", "--endpoints", &server.endpoint()])
        .arg("--credentials-dir")
        .arg(dir)
        .args(["--agent", agent])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A SQL record in `dir` and shop.example.com (to a static backend) created and published.
async fn shop_published(
    server: &Server,
    dir: &std::path::Path,
) -> anyhow::Result<(Record, Keys, Publisher, ferry_controller::ConfigRecord)> {
    let record = Record::connect(&common::ingress::sqlite_url(dir)).await?;
    let keys = Keys::default();
    let publisher = Publisher::new(server.client().await?, keys.clone());
    let shop = record
        .create(
            "prod",
            &doc("shop.example.com", r#""backends":["127.0.0.1:9001"]"#),
            "alice",
        )
        .await?;
    publisher.publish(&shop).await?;
    Ok((record, keys, publisher, shop))
}

fn doc(host: &str, route: &str) -> IngressDocument {
    let json = format!(
        r#"{{"kind":"ingress","virtual_hosts":[{{"hostname":"{host}","paths":[{{"path":"/",{route}}}]}}]}}"#
    );
    IngressDocument::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

async fn status(server: &Server, keys: &Keys, id: &str) -> anyhow::Result<Option<AgentStatus>> {
    let mut c = server.client().await?;
    let resp = c.get(keys.status("prod", id, "a1"), None).await?;
    Ok(match resp.kvs().first() {
        Some(kv) => Some(serde_json::from_slice(kv.value())?),
        None => None,
    })
}

async fn wait_status(
    server: &Server,
    keys: &Keys,
    id: &str,
    version: i64,
) -> anyhow::Result<AgentStatus> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = status(server, keys, id).await? {
            if s.version == version {
                return Ok(s);
            }
        }
        anyhow::ensure!(
            Instant::now() < until,
            "agent never reported version {version} of {id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn agent_applies_reports_and_refuses_bad_configurations(
    server: &Server,
) -> anyhow::Result<()> {
    let nginx = nginx_binary()?;
    let tmp = tempfile::tempdir()?;
    let prefix = tmp.path().join("nginx");
    let (record, keys, publisher, shop) = shop_published(server, tmp.path()).await?;
    let check = format!(
        "{nginx} -t -q -p {p} -c {{{{.src}}}} && ! grep -q reject.example.com {{{{.src}}}}",
        p = prefix.display()
    );
    let port = ferry_testkit::free_port()?;
    let _agent = agent_a1(
        server,
        &prefix,
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--check-cmd",
            &check,
        ],
    )?;
    let conf = prefix.join("conf/nginx.conf");
    let s1 = wait_status(server, &keys, &shop.id, 1).await?;
    assert!(s1.ok, "{s1:?}");
    let text = std::fs::read_to_string(&conf)?;
    assert!(
        text.contains("server_name \"shop.example.com\";")
            && text.contains("server \"127.0.0.1:9001\";"),
        "{text}"
    );
    let mut c = server.client().await?;
    assert!(
        !c.get(keys.agent("prod", "a1"), None)
            .await?
            .kvs()
            .is_empty(),
        "agent registered"
    );

    // Route to a registry service: its instances become the upstream as they come and go.
    let shop2 = record
        .update(
            "prod",
            &shop.id,
            1,
            &doc("shop.example.com", r#""service":"shop""#),
            "bob",
        )
        .await?;
    publisher.publish(&shop2).await?;
    assert!(wait_status(server, &keys, &shop.id, 2).await?.ok);
    assert!(std::fs::read_to_string(&conf)?.contains("down; # no live instance of shop"));
    let instance = ferry_registry::Instance::new("shop", "i1", "127.0.0.1:9002");
    c.put("/services/shop/i1", serde_json::to_vec(&instance)?, None)
        .await?;
    let until = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&conf)?.contains("server \"127.0.0.1:9002\";") {
        anyhow::ensure!(
            Instant::now() < until,
            "service instance never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A configuration failing the check: reported with the reason, never installed.
    let good = std::fs::read_to_string(&conf)?;
    let bad = record
        .create(
            "prod",
            &doc("reject.example.com", r#""backends":["127.0.0.1:9003"]"#),
            "mallory",
        )
        .await?;
    publisher.publish(&bad).await?;
    let refused = wait_status(server, &keys, &bad.id, 1).await?;
    assert!(!refused.ok);
    assert!(refused.message.contains("check_cmd"), "{refused:?}");
    assert_eq!(
        std::fs::read_to_string(&conf)?,
        good,
        "the last good configuration keeps serving"
    );
    // Removing it lets the agent apply again.
    let deleted = record.delete("prod", &bad.id, 1, "alice").await?;
    publisher.unpublish("prod", &deleted.id).await?;
    let shop3 = record
        .update(
            "prod",
            &shop.id,
            2,
            &doc("shop3.example.com", r#""service":"shop""#),
            "bob",
        )
        .await?;
    publisher.publish(&shop3).await?;
    assert!(wait_status(server, &keys, &shop.id, 3).await?.ok);
    assert!(std::fs::read_to_string(&conf)?.contains("server_name \"shop3.example.com\";"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_while_the_store_is_down_keeps_serving_and_catches_up(
) -> anyhow::Result<()> {
    let mut server = common::start(common::Kind::Ferry, &[]).await?;
    let tmp = tempfile::tempdir()?;
    let prefix = tmp.path().join("nginx");
    let (record, keys, _, shop) = shop_published(&server, tmp.path()).await?;
    let marker = tmp.path().join("served");
    let reload = format!("echo served >> {}", marker.display());
    let flags = ["--dial-timeout", "300ms", "--reload-cmd", reload.as_str()];
    let agent = agent_a1(&server, &prefix, &flags)?;
    wait_status(&server, &keys, &shop.id, 1).await?;
    let conf = prefix.join("conf/nginx.conf");
    let good = std::fs::read_to_string(&conf)?;
    drop(agent);
    server.kill();
    std::fs::remove_file(&marker)?;
    // Restart without a store: the last good configuration is served again at once.
    let mut agent = agent_a1(&server, &prefix, &flags)?;
    let until = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        anyhow::ensure!(
            Instant::now() < until,
            "the last good configuration was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        agent.0.try_wait()?.is_none(),
        "the agent must wait for the store, not exit"
    );
    assert_eq!(std::fs::read_to_string(&conf)?, good);
    // The store comes back with a new version: the agent catches up and reports it.
    server.restart().await?;
    let shop2 = record
        .update(
            "prod",
            &shop.id,
            1,
            &doc("shop2.example.com", r#""backends":["127.0.0.1:9001"]"#),
            "bob",
        )
        .await?;
    Publisher::new(server.client().await?, keys.clone())
        .publish(&shop2)
        .await?;
    assert!(wait_status(&server, &keys, &shop.id, 2).await?.ok);
    assert!(std::fs::read_to_string(&conf)?.contains("shop2.example.com"));
    Ok(())
}

async fn agent_serves_tls_virtual_hosts_through_nginx(server: &Server) -> anyhow::Result<()> {
    let nginx = nginx_binary()?;
    let certs = common::certs::Certs::generate()?;
    let tmp = tempfile::tempdir()?;
    let prefix = tmp.path().join("nginx");
    let record =
        Record::connect(&format!("sqlite://{}", tmp.path().join("ctl.db").display())).await?;
    let keys = Keys::default();
    let publisher = Publisher::new(server.client().await?, keys.clone());
    let (backend_port, _backend) = common::http::backend("secure-backend".into()).await?;
    let tls_doc = |cert: &std::path::Path, redirect_http: bool| {
        IngressDocument::from_json(
            serde_json::json!({
                "kind": "ingress",
                "virtual_hosts": [{
                    "hostname": "localhost",
                    "tls": {"certificate": cert, "key": &certs.server_key, "redirect_http": redirect_http},
                    "paths": [{"path": "/", "backends": [format!("127.0.0.1:{backend_port}")]}],
                }],
            })
            .to_string()
            .as_bytes(),
        )
    };
    let secure = record
        .create("prod", &tls_doc(&certs.server_cert, false)?, "alice")
        .await?;
    publisher.publish(&secure).await?;
    let [http_port, https_port] = ferry_testkit::free_ports(2)?[..] else {
        anyhow::bail!("two ports")
    };
    let p = prefix.display();
    let _agent = agent_a1(
        server,
        &prefix,
        &[
            "--listen",
            &format!("127.0.0.1:{http_port}"),
            "--tls-listen",
            &format!("127.0.0.1:{https_port}"),
            "--check-cmd",
            &format!("{nginx} -t -q -p {p} -c {{{{.src}}}}"),
            "--reload-cmd",
            &format!("{nginx} -s reload -p {p} -c {p}/conf/nginx.conf 2>/dev/null || {nginx} -p {p} -c {p}/conf/nginx.conf"),
        ],
    )?;
    let _stop = StopNginx(nginx, prefix.clone());
    let applied = wait_status(server, &keys, &secure.id, 1).await?;
    assert!(applied.ok, "{applied:?}");
    // nginx terminates TLS with the configured certificate (verified against the test CA).
    let until = Instant::now() + Duration::from_secs(10);
    let body = loop {
        match common::http::get_tls(https_port, "localhost", &certs.ca).await {
            Ok(body) => break body,
            Err(e) => {
                anyhow::ensure!(Instant::now() < until, "HTTPS through nginx failed: {e:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(body, "secure-backend");
    assert_eq!(
        common::http::get(http_port, "localhost").await?,
        "secure-backend",
        "plain HTTP is still served"
    );
    // With redirect_http, plain HTTP answers 308 to the same URL on the HTTPS port.
    let redirecting = record
        .update(
            "prod",
            &secure.id,
            1,
            &tls_doc(&certs.server_cert, true)?,
            "bob",
        )
        .await?;
    publisher.publish(&redirecting).await?;
    assert!(wait_status(server, &keys, &secure.id, 2).await?.ok);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = common::http::get_raw(http_port, "localhost").await?;
        if answer.starts_with("HTTP/1.1 308") {
            assert!(
                answer.contains(&format!("Location: https://localhost:{https_port}/\r\n")),
                "{answer}"
            );
            break;
        }
        anyhow::ensure!(Instant::now() < until, "no redirect: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        common::http::get_tls(https_port, "localhost", &certs.ca).await?,
        "secure-backend"
    );
    // A certificate that does not exist on the agent's host: refused by nginx -t with the
    // reason, while TLS keeps being served with the last good configuration.
    let missing = tmp.path().join("missing.pem");
    let broken = record
        .update("prod", &secure.id, 2, &tls_doc(&missing, true)?, "bob")
        .await?;
    publisher.publish(&broken).await?;
    let refused = wait_status(server, &keys, &secure.id, 3).await?;
    assert!(!refused.ok, "{refused:?}");
    assert!(refused.message.contains("missing.pem"), "{refused:?}");
    assert_eq!(
        common::http::get_tls(https_port, "localhost", &certs.ca).await?,
        "secure-backend"
    );

    // Two configurations; the certificate of one is removed on this host only, behind the
    // controller's back. A change to the other still installs: only the one whose
    // certificate is gone reports failed, with nginx's reason.
    let removable = tmp.path().join("removable.pem");
    std::fs::copy(&certs.server_cert, &removable)?;
    let secure4 = record
        .update("prod", &secure.id, 3, &tls_doc(&removable, false)?, "bob")
        .await?;
    publisher.publish(&secure4).await?;
    assert!(wait_status(server, &keys, &secure.id, 4).await?.ok);
    let plain = record
        .create(
            "prod",
            &doc(
                "plain.example.com",
                &format!(r#""backends":["127.0.0.1:{backend_port}"]"#),
            ),
            "carol",
        )
        .await?;
    publisher.publish(&plain).await?;
    assert!(wait_status(server, &keys, &plain.id, 1).await?.ok);
    std::fs::remove_file(&removable)?;
    let plain2 = record
        .update(
            "prod",
            &plain.id,
            1,
            &doc(
                "plain2.example.com",
                &format!(r#""backends":["127.0.0.1:{backend_port}"]"#),
            ),
            "carol",
        )
        .await?;
    publisher.publish(&plain2).await?;
    let applied = wait_status(server, &keys, &plain.id, 2).await?;
    assert!(applied.ok, "{applied:?}");
    let conf = std::fs::read_to_string(prefix.join("conf/nginx.conf"))?;
    assert!(conf.contains("plain2.example.com"), "{conf}");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let blamed = status(server, &keys, &secure.id).await?;
        if let Some(b) = blamed.filter(|b| b.version == 4 && !b.ok) {
            assert!(b.message.contains("removable.pem"), "{b:?}");
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "the configuration without its certificate was not reported failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// With authentication on, an agent of `prod` signed in as a staging agent's user is refused
/// its configurations: it exits at once naming what it may not read, instead of retrying.
async fn an_agent_signed_in_as_another_environments_user_stops_with_the_reason(
    server: &Server,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let credentials = tmp.path().join("credentials");
    auth_bootstrap(server, &credentials, "staging/a1")?;
    let user = "agent-staging-a1";
    let password = std::fs::read_to_string(credentials.join(user))?;
    let port = ferry_testkit::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut agent = Killer(
        agent_a1_command(
            server,
            &tmp.path().join("nginx"),
            &["--listen", &listen, "--user", user],
        )
        .env("FERRY_PASSWORD", password.trim())
        .stderr(std::process::Stdio::piped())
        .spawn()?,
    );
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = agent.0.try_wait()? {
            break status;
        }
        anyhow::ensure!(Instant::now() < until, "the refused agent kept running");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    if let Some(mut pipe) = agent.0.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    assert!(
        stderr.contains("refuses reading its environment's configurations (/ingress/ingress_config/prod/): etcdserver: permission denied"),
        "{stderr}"
    );
    Ok(())
}

/// A status write the store refuses (here: the agent's role lost its write permission on
/// the status keys) is written again by the agent on its own: once the store takes it, the
/// status appears although nothing else changed, instead of the rollout waiting forever.
async fn a_status_the_store_refused_is_reported_again_without_another_change(
    server: &Server,
) -> anyhow::Result<()> {
    use etcd_client::{Client, ConnectOptions, Permission, RoleRevokePermissionOptions};
    let tmp = tempfile::tempdir()?;
    let credentials = tmp.path().join("credentials");
    auth_bootstrap(server, &credentials, "prod/a1")?;
    let read_password = |user: &str| -> std::io::Result<String> {
        Ok(std::fs::read_to_string(credentials.join(user))?
            .trim()
            .to_string())
    };
    let mut root = Client::connect(
        [server.endpoint()],
        Some(ConnectOptions::new().with_user("root", read_password("root")?)),
    )
    .await?;
    let keys = Keys::default();
    let statuses = format!("{}/ingress_config_status/prod/", keys.root());
    root.role_revoke_permission(
        "ferry-agent-prod",
        statuses.as_str(),
        Some(RoleRevokePermissionOptions::new().with_prefix()),
    )
    .await?;
    let record = Record::connect(&common::ingress::sqlite_url(tmp.path())).await?;
    let publisher = Publisher::new(root.clone(), keys.clone());
    let shop = record
        .create(
            "prod",
            &doc("shop.example.com", r#""backends":["127.0.0.1:9001"]"#),
            "alice",
        )
        .await?;
    publisher.publish(&shop).await?;

    let prefix = tmp.path().join("nginx");
    let port = ferry_testkit::free_port()?;
    let user = "agent-prod-a1";
    let listen = format!("127.0.0.1:{port}");
    let _agent = Killer(
        agent_a1_command(server, &prefix, &["--listen", &listen, "--user", user])
            .env("FERRY_PASSWORD", read_password(user)?)
            .env("FERRY_LOG", "error")
            .spawn()?,
    );
    // Installed, but its status refused: none appears.
    common::wait_for_content(
        &prefix.join("conf/nginx.conf"),
        "shop.example.com",
        Duration::from_secs(20),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status_key = keys.status("prod", &shop.id, "a1");
    assert!(
        root.get(status_key.as_str(), None).await?.kvs().is_empty(),
        "a status was written without the permission"
    );

    root.role_grant_permission(
        "ferry-agent-prod",
        Permission::read_write(statuses.as_str()).with_prefix(),
    )
    .await?;
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let got = root.get(status_key.as_str(), None).await?;
        if let Some(kv) = got.kvs().first() {
            let status: AgentStatus = serde_json::from_slice(kv.value())?;
            assert_eq!(status.version, 1);
            assert!(status.ok, "{status:?}");
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < until,
            "the refused status was never written again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent's configurations cache may lag its wave targets (two watch streams, possibly on
/// different members): once a target deletion at revision R is seen, a cache that has not
/// seen R is not rendered from (it may hold the version from before the rollout); the
/// store is read instead, and a store that does not answer gives an error (the agent then
/// keeps what is installed), never the stale cache.
async fn configurations_are_read_from_the_store_when_the_cache_is_behind_a_target_deletion(
    server: &Server,
) -> anyhow::Result<()> {
    use ferry_agent::view::{configurations_at, ViewError};
    use ferry_runtime::{Cache, Object};
    let mut client = server.client().await?;
    let prefix = Keys::default().configs("prod");
    let key = format!("{prefix}shop");
    let first = client.put(key.as_str(), r#"{"version":1}"#, None).await?;
    let stale: Cache<serde_json::Value> = Cache::new();
    stale.upsert(Object {
        key: key.clone(),
        value: std::sync::Arc::new(serde_json::json!({"version": 1})),
        mod_revision: first.header().map_or(0, |h| h.revision()),
        create_revision: 0,
    });
    client
        .put(format!("{prefix}junk"), "not json", None)
        .await?;
    let second = client.put(key.as_str(), r#"{"version":2}"#, None).await?;
    let deleted_at = second.header().map_or(0, |h| h.revision());
    let version = |objects: &[Object<serde_json::Value>]| -> Vec<(String, i64)> {
        objects
            .iter()
            .map(|o| (o.key.clone(), o.value["version"].as_i64().unwrap_or(-1)))
            .collect()
    };
    // Nothing deleted yet: the cache serves, whatever it holds.
    let (objects, revision) =
        configurations_at(&client, &prefix, &stale, 0, Duration::from_secs(5)).await?;
    assert_eq!(version(&objects), [(key.clone(), 1)]);
    assert_eq!(revision, 0);
    // Behind a deletion: the store's configurations, never the cache's, without the value
    // that is not JSON (as the informer leaves it out).
    let (objects, revision) =
        configurations_at(&client, &prefix, &stale, deleted_at, Duration::from_secs(5)).await?;
    assert_eq!(version(&objects), [(key.clone(), 2)]);
    assert!(revision >= deleted_at, "{revision} < {deleted_at}");
    // A store that does not answer: an error naming the prefix, not the stale cache.
    server.pause()?;
    let paused = configurations_at(
        &client,
        &prefix,
        &stale,
        deleted_at,
        Duration::from_millis(300),
    )
    .await;
    server.resume()?;
    match paused {
        Err(e @ ViewError::TimedOut { .. }) => {
            assert!(e.to_string().contains(&prefix), "{e}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    Ok(())
}
