//! Values are data, never configuration: nginx syntax smuggled into any field of a
//! configuration document (through the API, or written straight into the store) or of a
//! registry instance (through `ferry registry announce`, or written straight into the store)
//! never changes what the real nginx serves. The API refuses it with 400 and the field path
//! and writes nothing; the agent refuses configurations and leaves out instances, reporting
//! each, and keeps serving exactly the intended upstreams.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::ingress::{call, nginx_binary, sqlite_url, Controller, StopNginx};
use common::{ferry_bin, Server};
use ferry_controller::api::AgentStatus;
use ferry_controller::keys::Keys;
use serde_json::{json, Value};

against_both!(&[];
    the_agent_renders_only_validated_values_into_the_real_nginx,
);

/// What an attacker tries: nginx's statement and block syntax, comments, quotes, variables,
/// escapes, NUL, whitespace, and unicode characters that look like the syntax.
fn payloads() -> Vec<String> {
    let mut p: Vec<String> = [
        "\n", "\r\n", ";", "{", "}", "#", "\"", "'", "$host", "${uri}", "\\", "\0", " ", "\t",
        "\u{037E}", // Greek question mark, looks like ;
        "\u{FF1B}", // fullwidth semicolon
        "\u{FF5B}", // fullwidth left brace
        "\u{2028}", // line separator
        "\u{200B}", // zero-width space
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    p.push(";\n    }\n    server { listen 127.0.0.1:28081; location / { alias /etc/; autoindex on; } }\n    upstream x {\n        server 127.0.0.1:9".into());
    p.push("a".repeat(5000));
    p
}

/// A valid document with every kind of field set.
fn good_doc() -> Value {
    json!({
        "kind": "ingress",
        "virtual_hosts": [
            {
                "hostname": "shop.example.com",
                "tls": {"certificate": "/etc/ssl/shop.pem", "key": "/etc/ssl/shop.key"},
                "paths": [{"path": "/", "service": "shop", "read_timeout_seconds": 30}]
            },
            {
                "hostname": "static.example.com",
                "paths": [{"path": "/assets", "backends": ["127.0.0.1:9001"], "connect_timeout_seconds": 5}]
            }
        ]
    })
}

/// Every string field a value could be smuggled into: JSON pointer and the field path the
/// API must name.
const STRING_FIELDS: &[(&str, &str)] = &[
    ("/virtual_hosts/0/hostname", "virtual_hosts[0].hostname"),
    (
        "/virtual_hosts/0/tls/certificate",
        "virtual_hosts[0].tls.certificate",
    ),
    ("/virtual_hosts/0/tls/key", "virtual_hosts[0].tls.key"),
    (
        "/virtual_hosts/0/paths/0/path",
        "virtual_hosts[0].paths[0].path",
    ),
    (
        "/virtual_hosts/0/paths/0/service",
        "virtual_hosts[0].paths[0].service",
    ),
    (
        "/virtual_hosts/1/paths/0/path",
        "virtual_hosts[1].paths[0].path",
    ),
    (
        "/virtual_hosts/1/paths/0/backends/0",
        "virtual_hosts[1].paths[0].backends[0]",
    ),
];

/// Every field's injected variants: the payload after the valid value and before it.
fn injected_documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (pointer, field) in STRING_FIELDS {
        for payload in payloads() {
            for prepend in [false, true] {
                let mut doc = good_doc();
                if let Some(Value::String(s)) = doc.pointer_mut(pointer) {
                    *s = if prepend {
                        format!("{payload}{s}")
                    } else {
                        format!("{s}{payload}")
                    };
                }
                out.push((field.to_string(), doc));
            }
        }
    }
    for (pointer, field) in [
        (
            "/virtual_hosts/0/paths/0/read_timeout_seconds",
            "virtual_hosts[0].paths[0].read_timeout_seconds",
        ),
        (
            "/virtual_hosts/1/paths/0/connect_timeout_seconds",
            "virtual_hosts[1].paths[0].connect_timeout_seconds",
        ),
    ] {
        for bad in [
            json!(0),
            json!(-1),
            json!(3601),
            json!(1e12),
            json!("30s;"),
            json!("30; return 200"),
        ] {
            let mut doc = good_doc();
            if let Some(v) = doc.pointer_mut(pointer) {
                *v = bad;
            }
            out.push((field.to_string(), doc));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_every_injection_naming_the_field_and_writes_nothing() -> anyhow::Result<()>
{
    let server = common::start(common::Kind::Ferry, &[]).await?;
    let tmp = tempfile::tempdir()?;
    let controller = Controller::on_sqlite(&server.endpoint(), tmp.path()).await?;
    let configs = "/api/v1/environments/prod/configs";
    let documents = injected_documents();
    assert!(documents.len() > 300, "{} cases", documents.len());
    for (field, doc) in &documents {
        let body = doc.to_string();
        let (status, answer) = call(&controller.addr, "POST", configs, None, &body).await?;
        assert_eq!(status, 400, "{field} {body}: {answer}");
        assert_eq!(answer["field"], field.as_str(), "{body}: {answer}");
    }
    // Nothing was written: not to SQL, not to etcd.
    let (status, list) = call(&controller.addr, "GET", configs, None, "").await?;
    assert_eq!((status, list), (200, json!([])));
    let mut client = server.client().await?;
    let stored = client
        .get(
            Keys::default().all_configs(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await?;
    assert_eq!(stored.count(), 0);
    // The same document without the injection is accepted.
    let (status, body) = call(
        &controller.addr,
        "POST",
        configs,
        None,
        &good_doc().to_string(),
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    Ok(())
}

#[test]
fn registry_announce_refuses_every_injection_in_every_field() -> anyhow::Result<()> {
    let base = [
        ("--service", "shop"),
        ("--id", "shop-1"),
        ("--addr", "127.0.0.1:9001"),
        ("--version", "1.2.3"),
        ("--meta", "zone=a"),
    ];
    // Label values are free text (not rendered by ferry); control characters are refused.
    let free_text = |flag: &str, payload: &str| {
        flag == "--meta" && !payload.chars().any(char::is_control) && payload.len() <= 256
    };
    let nowhere = format!("127.0.0.1:{}", ferry_testkit::free_port()?);
    for (i, (flag, _)) in base.iter().enumerate() {
        for payload in payloads() {
            if payload.contains('\0') {
                continue; // a NUL cannot be passed in argv at all
            }
            if free_text(flag, &payload) {
                continue;
            }
            let mut args: Vec<String> = vec![
                "registry".into(),
                "announce".into(),
                "--endpoints".into(),
                nowhere.clone(),
            ];
            for (j, (f, v)) in base.iter().enumerate() {
                args.push(f.to_string());
                args.push(if i == j {
                    format!("{v}{payload}")
                } else {
                    v.to_string()
                });
            }
            let out = Command::new(ferry_bin()).args(&args).output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            anyhow::ensure!(!out.status.success(), "{args:?} was accepted");
            anyhow::ensure!(
                stderr.contains("invalid"),
                "{flag} {payload:?}: refused for the wrong reason: {stderr}"
            );
        }
    }
    Ok(())
}

async fn wait_status(
    server: &Server,
    key: &str,
    check: impl Fn(&AgentStatus) -> bool,
) -> anyhow::Result<AgentStatus> {
    let until = Instant::now() + Duration::from_secs(20);
    let mut c = server.client().await?;
    loop {
        if let Some(kv) = c.get(key, None).await?.kvs().first() {
            let status: AgentStatus = serde_json::from_slice(kv.value())?;
            if check(&status) {
                return Ok(status);
            }
        }
        anyhow::ensure!(Instant::now() < until, "no matching status at {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn the_agent_renders_only_validated_values_into_the_real_nginx(
    server: &Server,
) -> anyhow::Result<()> {
    let nginx = nginx_binary()?;
    let tmp = tempfile::tempdir()?;
    let prefix = tmp.path().join("nginx");
    let keys = Keys::default();
    let (backend_port, _backend) = common::http::backend("the-shop".into()).await?;
    let [http_port, injected_port] = ferry_testkit::free_ports(2)?[..] else {
        anyhow::bail!("two ports")
    };
    let metrics_addr = format!("127.0.0.1:{}", ferry_testkit::free_port()?);
    let p = prefix.display();
    let mut agent = common::ingress::Proc(
        Command::new(ferry_bin())
            .args(["agent", "--endpoints", &server.endpoint(), "--env", "prod", "--name", "a1"])
            .arg("--nginx-prefix")
            .arg(&prefix)
            .args([
                "--listen",
                &format!("127.0.0.1:{http_port}"),
                "--metrics-addr",
                &metrics_addr,
                "--check-cmd",
                &format!("{nginx} -t -q -p {p} -c {{{{.src}}}}"),
                "--reload-cmd",
                &format!("{nginx} -s reload -p {p} -c {p}/conf/nginx.conf 2>/dev/null || {nginx} -p {p} -c {p}/conf/nginx.conf"),
            ])
            .env("FERRY_LOG", "warn")
            .spawn()?,
    );
    let _stop = StopNginx(nginx, prefix.clone());
    let mut c = server.client().await?;

    // One honest instance of `shop`, and instances whose fields carry nginx syntax, written
    // straight into the store as anyone who can reach it could.
    let honest = json!({"service": "shop", "id": "good", "addr": format!("127.0.0.1:{backend_port}"), "start_time": "2026-01-01T00:00:00.000Z"});
    c.put("/services/shop/good", honest.to_string(), None)
        .await?;
    let exploit = format!("127.0.0.1:9;\n    }}\n    server {{ listen 127.0.0.1:{injected_port}; location / {{ alias /etc/; autoindex on; }} }}\n    upstream x {{\n        server 127.0.0.1:9");
    let mut evil = vec![("addr", json!(exploit))];
    for payload in payloads() {
        evil.push(("addr", json!(format!("127.0.0.1:{backend_port}{payload}"))));
        evil.push(("version", json!(format!("1{payload}"))));
    }
    for (n, (field, value)) in evil.iter().enumerate() {
        let mut instance = honest.clone();
        instance["id"] = json!(format!("evil{n}"));
        instance[*field] = value.clone();
        c.put(
            format!("/services/shop/evil{n}"),
            instance.to_string(),
            None,
        )
        .await?;
    }
    // An instance claiming another service than its key places it in.
    let mut misplaced = honest.clone();
    misplaced["service"] = json!("other");
    c.put("/services/shop/misplaced", misplaced.to_string(), None)
        .await?;

    // A configuration published the normal way routes shop.example.com to `shop`.
    let tmp_db = tempfile::tempdir()?;
    let record = ferry_controller::Record::connect(&sqlite_url(tmp_db.path())).await?;
    let publisher = ferry_controller::Publisher::new(server.client().await?, keys.clone());
    let doc = ferry_controller::IngressDocument::from_json(
        json!({"kind": "ingress", "virtual_hosts": [{"hostname": "shop.example.com", "paths": [{"path": "/", "service": "shop"}]}]})
            .to_string()
            .as_bytes(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let shop = record.create("prod", &doc, "alice").await?;
    publisher.publish(&shop).await?;
    // And configurations written around the controller, each with one injected field.
    let mut written_around = Vec::new();
    for (n, (field, doc)) in injected_documents().into_iter().enumerate().step_by(7) {
        let id = format!("00000000-0000-0000-0000-{n:012}");
        let published = json!({"id": id, "env": "prod", "version": 1, "document": doc, "changed_by": "mallory", "changed_at": "now"});
        c.put(keys.config("prod", &id), published.to_string(), None)
            .await?;
        written_around.push((id, field));
    }

    let applied = wait_status(server, &keys.status("prod", &shop.id, "a1"), |s| {
        s.version == 1
    })
    .await?;
    assert!(applied.ok, "{applied:?}");
    // Every left-out instance is named in the status of the configuration routing to it.
    for n in 0..evil.len() {
        assert!(
            applied
                .message
                .contains(&format!("/services/shop/evil{n}:")),
            "evil{n} not reported: {}",
            applied.message
        );
    }
    assert!(applied
        .message
        .contains("/services/shop/misplaced: its key does not match"));
    for (id, field) in &written_around {
        let refused =
            wait_status(server, &keys.status("prod", id, "a1"), |s| s.version == 1).await?;
        assert!(!refused.ok, "{id} ({field}) was applied");
        assert!(
            refused.message.contains(field.as_str()),
            "{field}: {}",
            refused.message
        );
    }

    // nginx serves exactly the intended upstream, and nothing an attacker wrote.
    let conf = std::fs::read_to_string(prefix.join("conf/nginx.conf"))?;
    assert!(
        conf.contains(&format!("server \"127.0.0.1:{backend_port}\";")),
        "{conf}"
    );
    assert_eq!(
        conf.matches("    server ").count(),
        1 + 1,
        "one upstream server, one server block:\n{conf}"
    );
    assert!(!conf.contains(&injected_port.to_string()), "{conf}");
    assert!(
        !conf.contains("autoindex") && !conf.contains("mallory") && !conf.contains("$host"),
        "{conf}"
    );
    let until = Instant::now() + Duration::from_secs(10);
    let body = loop {
        match common::http::get(http_port, "shop.example.com").await {
            Ok(body) => break body,
            Err(e) => {
                anyhow::ensure!(
                    Instant::now() < until,
                    "nginx does not serve the shop: {e:#}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(body, "the-shop");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", injected_port))
            .await
            .is_err(),
        "nginx listens where the injected server block said"
    );
    assert!(agent.0.try_wait()?.is_none(), "the agent keeps running");
    // And counts what it left out.
    let metrics =
        ferry_controller::http_client::request(&metrics_addr, "GET", "/metrics", None, &[], "")
            .await?
            .body;
    let skipped = evil.len() + 1;
    assert!(
        metrics.contains(&format!(
            "ferry_agent_invalid_registry_instances {skipped}\n"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "ferry_agent_refused_configurations {}\n",
            written_around.len()
        )),
        "{metrics}"
    );
    Ok(())
}
