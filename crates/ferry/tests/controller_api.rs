//! `ferry controller` end to end against `ferry store` and a real etcd 3.4: tokens, the
//! configuration API with validation and optimistic concurrency, history and rollback,
//! publishing to etcd, rollout status from agents' reports, health and metrics.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::ingress::{sqlite_url, token_line, Controller, ADMIN};
use common::{ferry_bin, Server};
use ferry_controller::api::{AgentStatus, Rollout};
use ferry_controller::keys::Keys;
use ferry_controller::PublishedConfig;

against_both!(&[];
    configuration_api_end_to_end,
    config_cli_round_trip,
    a_change_the_store_refuses_is_reported_unpublished_until_reconciled,
    rollout_events_follow_agents_live,
);

const READER: &str = "reader-token-0123456789abcdef";

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Reply> {
    let headers: Vec<(&str, String)> = headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let reply =
        ferry_controller::http_client::request(addr, method, path, token, &headers, body).await?;
    Ok(Reply {
        status: reply.status,
        headers: reply.headers,
        body: reply.body,
    })
}

const DOC: &str = r#"{"kind":"ingress","virtual_hosts":[{"hostname":"shop.example.com","paths":[{"path":"/","service":"shop"}]}]}"#;

async fn configuration_api_end_to_end(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let controller = Controller::start_with_tokens(
        &server.endpoint(),
        &sqlite_url(tmp.path()),
        "c1",
        tmp.path(),
        &format!(
            "# who may do what\n{}\n{}\n",
            token_line("admin", "admin", "*", ADMIN),
            token_line("reader", "read", "*", READER)
        ),
    )
    .await?;
    let addr = controller.addr.clone();
    assert_eq!(
        http(&addr, "GET", "/readyz", None, &[], "").await?.status,
        200
    );
    let openapi = http(&addr, "GET", "/openapi.json", None, &[], "").await?;
    assert_eq!(openapi.json()["openapi"], "3.1.0");
    let configs = "/api/v1/environments/prod/configs";

    // No token, a wrong token, a read-only token writing: refused.
    assert_eq!(
        http(&addr, "GET", configs, None, &[], "").await?.status,
        401
    );
    assert_eq!(
        http(
            &addr,
            "GET",
            configs,
            Some("wrong-token-xxxxxxxxxxxxxx"),
            &[],
            ""
        )
        .await?
        .status,
        401
    );
    assert_eq!(
        http(&addr, "POST", configs, Some(READER), &[], DOC)
            .await?
            .status,
        403
    );
    // A bad document: 400 naming the field, nothing written.
    let bad = http(
        &addr,
        "POST",
        configs,
        Some(ADMIN),
        &[],
        &DOC.replace("\"path\":\"/\"", "\"path\":\"nope\""),
    )
    .await?;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["field"], "virtual_hosts[0].paths[0].path");
    assert_eq!(
        http(&addr, "GET", configs, Some(READER), &[], "")
            .await?
            .json(),
        serde_json::json!([])
    );
    assert_eq!(
        http(
            &addr,
            "POST",
            "/api/v1/environments/bad%20env/configs",
            Some(ADMIN),
            &[],
            DOC
        )
        .await?
        .status,
        400
    );

    // Create: 201 with the version as ETag, published to etcd. History records the token's
    // name: a header claiming another identity changes nothing.
    let created = http(
        &addr,
        "POST",
        configs,
        Some(ADMIN),
        &[("X-Ferry-User", "alice")],
        DOC,
    )
    .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(
        created.headers.contains("etag: \"1\""),
        "{}",
        created.headers
    );
    let id = created.json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let keys = Keys::default();
    let mut c = server.client().await?;
    let stored: PublishedConfig =
        serde_json::from_slice(c.get(keys.config("prod", &id), None).await?.kvs()[0].value())?;
    assert_eq!((stored.version, stored.changed_by.as_str()), (1, "admin"));

    // Update needs the current version; a stale one gets 412.
    let one = format!("{configs}/{id}");
    let v2_doc = DOC.replace("shop.example.com", "shop2.example.com");
    assert_eq!(
        http(&addr, "PUT", &one, Some(ADMIN), &[], &v2_doc)
            .await?
            .status,
        428
    );
    let v2 = http(
        &addr,
        "PUT",
        &one,
        Some(ADMIN),
        &[("If-Match", "\"1\"")],
        &v2_doc,
    )
    .await?;
    assert_eq!(v2.status, 200, "{}", v2.body);
    let stale = http(&addr, "PUT", &one, Some(ADMIN), &[("If-Match", "1")], DOC).await?;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.json()["current_version"], 2);
    let history = http(
        &addr,
        "GET",
        &format!("{one}/history"),
        Some(READER),
        &[],
        "",
    )
    .await?
    .json();
    assert_eq!(history.as_array().map(|h| h.len()), Some(2));
    let rolled = http(
        &addr,
        "POST",
        &format!("{one}/rollback?version=1"),
        Some(ADMIN),
        &[("If-Match", "2")],
        "",
    )
    .await?;
    assert_eq!(
        (rolled.status, rolled.json()["version"].as_i64()),
        (200, Some(3))
    );

    // Every refusal has the API's JSON shape, including axum's own: a query without
    // `version`, a path that is not UTF-8, an unknown route, a method a route does not take.
    for (method, path, status) in [
        ("POST", format!("{one}/rollback"), 400),
        ("GET", "/api/v1/environments/%FF/configs".to_string(), 400),
        ("GET", "/api/v1/nowhere".to_string(), 404),
        ("PATCH", one.clone(), 405),
    ] {
        let reply = http(&addr, method, &path, Some(ADMIN), &[("If-Match", "3")], "").await?;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
        assert!(
            reply.headers.contains("content-type: application/json"),
            "{method} {path}: {}",
            reply.headers
        );
        let message = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!message.is_empty(), "{method} {path}: {}", reply.body);
        if path.ends_with("/rollback") {
            assert!(message.contains("version"), "{message}");
        }
    }

    // Rollout status: two live agents, one applied version 3, one failed it.
    for (agent, ok) in [("a1", true), ("a2", false)] {
        let instance = ferry_registry::Instance::new(
            "prod",
            agent,
            format!("10.0.0.{}:80", if ok { 1 } else { 2 }),
        );
        c.put(
            keys.agent("prod", agent),
            serde_json::to_vec(&instance)?,
            None,
        )
        .await?;
        let status = AgentStatus {
            agent: agent.into(),
            version: 3,
            ok,
            message: if ok {
                String::new()
            } else {
                "nginx -t failed".into()
            },
            time: String::new(),
        };
        c.put(
            keys.status("prod", &id, agent),
            serde_json::to_vec(&status)?,
            None,
        )
        .await?;
    }
    let rollout: Rollout = serde_json::from_value(
        http(
            &addr,
            "GET",
            &format!("{one}/status"),
            Some(READER),
            &[],
            "",
        )
        .await?
        .json(),
    )?;
    assert_eq!(rollout.version, 3);
    assert_eq!(
        (
            rollout.summary.live,
            rollout.summary.applied,
            rollout.summary.failed,
            rollout.summary.complete
        ),
        (2, 1, 1, false)
    );
    assert_eq!(
        rollout
            .agents
            .iter()
            .find(|a| a.agent == "a2")
            .map(|a| a.message.as_str()),
        Some("nginx -t failed")
    );
    let envs = http(&addr, "GET", "/api/v1/environments", Some(READER), &[], "")
        .await?
        .json();
    assert_eq!(envs[0]["env"], "prod");
    assert_eq!(envs[0]["agents"].as_array().map(|a| a.len()), Some(2));

    // etcd losing the configuration is repaired by the periodic reconciliation.
    c.delete(keys.config("prod", &id), None).await?;
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(kv) = c.get(keys.config("prod", &id), None).await?.kvs().first() {
            let p: PublishedConfig = serde_json::from_slice(kv.value())?;
            assert_eq!(p.version, 3);
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "reconciliation did not restore the configuration"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Delete: gone from the API and from etcd.
    assert_eq!(
        http(&addr, "DELETE", &one, Some(ADMIN), &[("If-Match", "3")], "")
            .await?
            .status,
        200
    );
    assert_eq!(
        http(&addr, "GET", &one, Some(READER), &[], "")
            .await?
            .status,
        404
    );
    assert!(c
        .get(keys.config("prod", &id), None)
        .await?
        .kvs()
        .is_empty());
    let metrics = http(&addr, "GET", "/metrics", None, &[], "").await?.body;
    assert!(
        metrics.contains("http_requests_total{method=\"POST\",code=\"201\"} 1"),
        "{metrics}"
    );
    // Each step of a change is timed: four committed (create, update, rollback, delete) were
    // published; the stale update also passed the store probe and reached the SQL record,
    // which refused it. The requests refused before that (bad body, no If-Match) are not.
    let step = |suffix: &str, step: &str| common::ingress::change_step(&metrics, suffix, step);
    assert_eq!(
        (
            step("count", "store_probe"),
            step("count", "record"),
            step("count", "publish")
        ),
        (Some(5.0), Some(5.0), Some(4.0)),
        "{metrics}"
    );
    assert!(step("sum", "record").is_some_and(|s| s > 0.0), "{metrics}");
    // The controller registered itself.
    assert!(!c.get(keys.controller("c1"), None).await?.kvs().is_empty());
    Ok(())
}

fn ferry_config(addr: &str, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(ferry_bin())
        .arg("config")
        .args(args)
        .args(["--api", &format!("http://{addr}")])
        .env("FERRY_TOKEN", ADMIN)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn config_cli_round_trip(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let controller = Controller::on_sqlite(&server.endpoint(), tmp.path()).await?;
    let addr = controller.addr.clone();
    let file = tmp.path().join("shop.json");
    std::fs::write(&file, DOC)?;
    let (ok, out, err) = ferry_config(
        &addr,
        &[
            "apply",
            "-f",
            file.to_str().unwrap_or_default(),
            "--env",
            "prod",
            "-o",
            "json",
        ],
    )?;
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out)?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    std::fs::write(&file, DOC.replace("shop.example.com", "shop2.example.com"))?;
    let (ok, out, err) = ferry_config(
        &addr,
        &[
            "apply",
            "-f",
            file.to_str().unwrap_or_default(),
            "--env",
            "prod",
            "--id",
            &id,
        ],
    )?;
    assert!(ok && out.contains("version 2"), "{out}{err}");
    let (_, out, _) = ferry_config(&addr, &["history", &id, "--env", "prod"])?;
    assert_eq!(out.lines().count(), 2, "{out}");
    let (ok, out, _) = ferry_config(&addr, &["rollback", &id, "--env", "prod", "--version", "1"])?;
    assert!(ok && out.contains("version 3"), "{out}");
    let (ok, out, _) = ferry_config(&addr, &["status", &id, "--env", "prod"])?;
    assert!(ok && out.contains("0 live"), "{out}");
    // Bad input: the API's field error reaches the user.
    std::fs::write(&file, DOC.replace("\"path\":\"/\"", "\"path\":\"x\""))?;
    let (ok, _, err) = ferry_config(
        &addr,
        &[
            "apply",
            "-f",
            file.to_str().unwrap_or_default(),
            "--env",
            "prod",
        ],
    )?;
    assert!(
        !ok && err.contains("virtual_hosts[0].paths[0].path"),
        "{err}"
    );
    let (ok, out, _) = ferry_config(&addr, &["delete", &id, "--env", "prod"])?;
    assert!(ok && out.contains("(deleted)"), "{out}");
    let (ok, out, _) = ferry_config(&addr, &["list", "--env", "prod"])?;
    assert!(ok && out.trim().is_empty(), "{out}");
    Ok(())
}

/// SQL commits a change the store then refuses (its NOSPACE alarm blocks writes, reads still
/// work): the API answer and the rollout status say it is not published and why, until the
/// reconciliation publishes it once the alarm is cleared.
async fn a_change_the_store_refuses_is_reported_unpublished_until_reconciled(
    server: &Server,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let controller = Controller::on_sqlite(&server.endpoint(), tmp.path()).await?;
    let addr = controller.addr.clone();
    let configs = "/api/v1/environments/prod/configs";
    let created = http(&addr, "POST", configs, Some(ADMIN), &[], DOC).await?;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.json()["published"], true, "{}", created.body);
    let id = created.json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let one = format!("{configs}/{id}");

    let mut c = server.client().await?;
    let member = c
        .status()
        .await?
        .header()
        .map(|h| h.member_id())
        .unwrap_or(0);
    let nospace = |action| {
        (
            action,
            etcd_client::AlarmType::Nospace,
            Some({
                let mut options = etcd_client::AlarmOptions::new();
                options.with_member(member);
                options
            }),
        )
    };
    let (action, kind, options) = nospace(etcd_client::AlarmAction::Activate);
    c.alarm(action, kind, options).await?;

    let doc2 = DOC.replace("shop.example.com", "shop2.example.com");
    let updated = http(&addr, "PUT", &one, Some(ADMIN), &[("If-Match", "1")], &doc2).await?;
    assert_eq!(updated.status, 200, "{}", updated.body);
    let body = updated.json();
    assert_eq!(
        (body["version"].as_i64(), &body["published"]),
        (Some(2), &serde_json::json!(false)),
        "{body}"
    );
    assert!(
        body["publish_error"]
            .as_str()
            .unwrap_or_default()
            .contains("database space exceeded"),
        "{body}"
    );
    let status = http(&addr, "GET", &format!("{one}/status"), Some(ADMIN), &[], "").await?;
    let rollout: Rollout = serde_json::from_str(&status.body)?;
    assert!(!rollout.published, "{}", status.body);
    assert!(!rollout.summary.complete);
    assert!(
        rollout
            .publish_pending
            .as_deref()
            .unwrap_or_default()
            .contains("version 2 is committed"),
        "{}",
        status.body
    );

    let (ok, out, err) = ferry_config(&addr, &["status", &id, "--env", "prod"])?;
    assert!(ok, "{err}");
    assert!(
        out.contains("not published: version 2 is committed"),
        "{out}"
    );

    // The store takes writes again: the reconciliation (every second here) publishes it.
    let (action, kind, options) = nospace(etcd_client::AlarmAction::Deactivate);
    c.alarm(action, kind, options).await?;
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let status = http(&addr, "GET", &format!("{one}/status"), Some(ADMIN), &[], "").await?;
        let rollout: Rollout = serde_json::from_str(&status.body)?;
        if rollout.published {
            assert_eq!(rollout.publish_pending, None);
            break;
        }
        anyhow::ensure!(Instant::now() < until, "never published: {}", status.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = c.get(Keys::default().config("prod", &id), None).await?;
    let published: PublishedConfig = serde_json::from_slice(stored.kvs()[0].value())?;
    assert_eq!(published.version, 2);
    Ok(())
}

/// A rollout stream opened with a raw request: server-sent events, read as they come.
struct EventStream {
    stream: tokio::net::TcpStream,
    buffer: String,
}

impl EventStream {
    /// Opens `path` with `token`; returns the status line and, on 200, the stream.
    async fn open(addr: &str, path: &str, token: &str) -> anyhow::Result<(String, Option<Self>)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            anyhow::ensure!(stream.read(&mut byte).await? == 1, "closed in the head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status = head.lines().next().unwrap_or_default().to_string();
        if !status.contains(" 200 ") {
            return Ok((status, None));
        }
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{head}"
        );
        Ok((
            status,
            Some(Self {
                stream,
                buffer: String::new(),
            }),
        ))
    }

    /// The next event's name and JSON data (chunk-size lines of the transfer encoding are
    /// skipped), waiting at most five seconds; `None` when the server ended the stream.
    async fn next(&mut self) -> anyhow::Result<Option<(String, serde_json::Value)>> {
        use tokio::io::AsyncReadExt;
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let name = block
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .map(str::to_string);
                let data = block.lines().find_map(|l| l.strip_prefix("data: "));
                if let (Some(name), Some(data)) = (name, data) {
                    return Ok(Some((name, serde_json::from_str(data)?)));
                }
                continue;
            }
            // The last chunk of the transfer encoding: the server ended the stream.
            if self.buffer.ends_with("0\r\n\r\n") && self.buffer.trim() == "0" {
                return Ok(None);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(until, self.stream.read(&mut chunk))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("no event within 5 s; buffered: {:?}", self.buffer)
                })??;
            if n == 0 {
                return Ok(None);
            }
            self.buffer.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }

    /// Events until one whose rollout satisfies `want`.
    async fn until(
        &mut self,
        what: &str,
        want: impl Fn(&Rollout) -> bool,
    ) -> anyhow::Result<Rollout> {
        loop {
            match self.next().await? {
                Some((name, data)) if name == "rollout" => {
                    let rollout: Rollout = serde_json::from_value(data)?;
                    if want(&rollout) {
                        return Ok(rollout);
                    }
                }
                other => anyhow::bail!("waiting for {what}, got {other:?}"),
            }
        }
    }
}

/// The dashboard's live rollout: `status/events` sends the rollout at once and again when an
/// agent joins, reports or fails, and when a new version is published; it ends with an
/// error event when the configuration is deleted. Tokens are checked as for `status`.
async fn rollout_events_follow_agents_live(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let controller = Controller::start_with_tokens(
        &server.endpoint(),
        &sqlite_url(tmp.path()),
        "c1",
        tmp.path(),
        &format!(
            "{}\n{}\n{}\n",
            token_line("admin", "admin", "*", ADMIN),
            token_line("reader", "read", "*", READER),
            token_line(
                "elsewhere",
                "read",
                "staging",
                "staging-token-0123456789abcdef"
            )
        ),
    )
    .await?;
    let addr = controller.addr.clone();
    let created = http(
        &addr,
        "POST",
        "/api/v1/environments/prod/configs",
        Some(ADMIN),
        &[],
        DOC,
    )
    .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let one = format!("/api/v1/environments/prod/configs/{id}");
    let events = format!("{one}/status/events");

    // Who a token is, as the dashboard asks before it shows write controls.
    let me = http(&addr, "GET", "/api/v1/whoami", Some(READER), &[], "").await?;
    assert_eq!(
        me.json(),
        serde_json::json!({"name": "reader", "role": "read", "environments": null})
    );
    let me = http(
        &addr,
        "GET",
        "/api/v1/whoami",
        Some("staging-token-0123456789abcdef"),
        &[],
        "",
    )
    .await?;
    assert_eq!(me.json()["environments"], serde_json::json!(["staging"]));
    assert_eq!(
        http(&addr, "GET", "/api/v1/whoami", None, &[], "")
            .await?
            .status,
        401
    );

    let (status, _) = EventStream::open(&addr, &events, "no-such-token").await?;
    assert!(status.contains(" 401 "), "{status}");
    let (status, _) = EventStream::open(&addr, &events, "staging-token-0123456789abcdef").await?;
    assert!(status.contains(" 403 "), "{status}");
    let (status, _) = EventStream::open(
        &addr,
        "/api/v1/environments/prod/configs/00000000-0000-4000-8000-000000000000/status/events",
        READER,
    )
    .await?;
    assert!(status.contains(" 404 "), "{status}");

    let (status, stream) = EventStream::open(&addr, &events, READER).await?;
    let mut stream = stream.ok_or_else(|| anyhow::anyhow!("{status}"))?;
    let first = stream.until("the first rollout", |_| true).await?;
    assert_eq!((first.version, first.summary.live), (1, 0));

    let keys = Keys::default();
    let mut c = server.client().await?;
    let report = |agent: &str, version: i64, ok: bool| AgentStatus {
        agent: agent.into(),
        version,
        ok,
        message: if ok {
            String::new()
        } else {
            "nginx: [emerg] no such file".into()
        },
        time: String::new(),
    };
    for agent in ["a1", "a2"] {
        let instance = ferry_registry::Instance::new("prod", agent, "10.0.0.1:80");
        c.put(
            keys.agent("prod", agent),
            serde_json::to_vec(&instance)?,
            None,
        )
        .await?;
    }
    stream
        .until("two pending agents", |r| {
            r.summary.live == 2 && r.summary.pending == 2
        })
        .await?;
    c.put(
        keys.status("prod", &id, "a1"),
        serde_json::to_vec(&report("a1", 1, true))?,
        None,
    )
    .await?;
    c.put(
        keys.status("prod", &id, "a2"),
        serde_json::to_vec(&report("a2", 1, false))?,
        None,
    )
    .await?;
    let r = stream
        .until("a1 applied, a2 failed", |r| {
            r.summary.applied == 1 && r.summary.failed == 1
        })
        .await?;
    let a2 = r.agents.iter().find(|a| a.agent == "a2");
    assert_eq!(
        a2.map(|a| a.message.as_str()),
        Some("nginx: [emerg] no such file")
    );

    // A new version: both agents are pending again until they report it.
    let doc2 = DOC.replace("\"service\":\"shop\"", "\"service\":\"shop2\"");
    let updated = http(
        &addr,
        "PUT",
        &one,
        Some(ADMIN),
        &[("If-Match", "\"1\"")],
        &doc2,
    )
    .await?;
    assert_eq!(updated.status, 200, "{}", updated.body);
    stream
        .until("version 2 pending everywhere", |r| {
            r.version == 2 && r.summary.pending == 2
        })
        .await?;
    // An agent leaving (its registration gone) leaves the grid.
    c.delete(keys.agent("prod", "a2"), None).await?;
    stream.until("a2 gone", |r| r.summary.live == 1).await?;

    // Deleted: an error event, then the end of the stream.
    let deleted = http(&addr, "DELETE", &one, Some(ADMIN), &[("If-Match", "2")], "").await?;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    loop {
        match stream.next().await? {
            Some((name, _)) if name == "rollout" => continue,
            Some((name, data)) => {
                assert_eq!(name, "error");
                assert!(
                    data["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{data}"
                );
                break;
            }
            None => anyhow::bail!("the stream ended without an error event"),
        }
    }
    assert!(
        stream.next().await?.is_none(),
        "the stream goes on after the error"
    );
    Ok(())
}
