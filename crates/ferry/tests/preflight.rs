//! The controller's pre-flight check (real nginx, both backends): a change whose
//! environment nginx refuses is answered 422 with nginx's message and the configuration it
//! blames, and reaches neither SQL nor the store; an admin can skip the check with a reason,
//! which history records; rollbacks are checked too. The check renders through the agents'
//! template: here a user's template (`--template` on agents, `--preflight-template` on the
//! controller) that writes an opaque document's `keepalive` into nginx. (With the built-in
//! template every document the API accepts renders to a configuration nginx takes, apart
//! from TLS files on the agents' hosts, which the agents check.)

mod common;

use common::ingress::{call, config_path, sqlite_url, Proc};
use common::Server;
use ferry_controller::keys::Keys;

against_both!(&[];
    a_change_nginx_refuses_is_refused_before_anything_is_written,
    the_built_in_template_checks_every_document,
);

const TEMPLATE: &str = "pid {{getv \"/agent/prefix\"}}/nginx.pid;
error_log {{getv \"/agent/prefix\"}}/logs/error.log;
events {}
http {
    access_log off;
    client_body_temp_path {{getv \"/agent/prefix\"}}/tmp/body;
    proxy_temp_path {{getv \"/agent/prefix\"}}/tmp/proxy;
    fastcgi_temp_path {{getv \"/agent/prefix\"}}/tmp/fastcgi;
    uwsgi_temp_path {{getv \"/agent/prefix\"}}/tmp/uwsgi;
    scgi_temp_path {{getv \"/agent/prefix\"}}/tmp/scgi;
{{- range gets \"/configs/*\"}}{{$c := json .Value}}
    server { listen 127.0.0.1:8080; server_name c-{{$c.id}}; keepalive_timeout {{$c.document.data.keepalive}}; }
{{- end}}
}
";

fn opaque(keepalive: &str) -> String {
    format!(r#"{{"kind":"opaque","data":{{"keepalive":{keepalive}}}}}"#)
}

/// A controller whose pre-flight check uses `template` (the built-in one when `None`).
async fn controller(
    server: &Server,
    dir: &std::path::Path,
    template: Option<&str>,
) -> anyhow::Result<(String, Proc)> {
    let nginx = common::ingress::nginx_binary()?;
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, common::ingress::admin_tokens())?;
    let addr = format!("127.0.0.1:{}", ferry_testkit::free_port()?);
    let mut cmd = std::process::Command::new(common::ferry_bin());
    cmd.args([
        "controller",
        "--endpoints",
        &server.endpoint(),
        "--listen",
        &addr,
    ])
    .arg("--tokens")
    .arg(&tokens)
    .args(["--database", &sqlite_url(dir), "--preflight", "on"])
    .args(["--preflight-nginx", nginx])
    .env("FERRY_LOG", "warn")
    .env("TMPDIR", dir);
    if let Some(text) = template {
        let path = dir.join("custom.tmpl");
        std::fs::write(&path, text)?;
        cmd.arg("--preflight-template").arg(path);
    }
    let proc = Proc(cmd.spawn()?);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while call(&addr, "GET", "/healthz", None, "")
        .await
        .map(|r| r.0)
        .unwrap_or(0)
        != 200
    {
        anyhow::ensure!(
            std::time::Instant::now() < until,
            "controller did not come up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok((addr, proc))
}

async fn stored_versions(server: &Server, env: &str) -> anyhow::Result<usize> {
    let keys = Keys::default();
    let mut c = server.client().await?;
    let prefix = format!("{}/ingress_config/{env}/", keys.root());
    let resp = c
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    Ok(resp.kvs().len())
}

async fn a_change_nginx_refuses_is_refused_before_anything_is_written(
    server: &Server,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (addr, _controller) = controller(server, tmp.path(), Some(TEMPLATE)).await?;
    let addr = &addr;
    let configs = "/api/v1/environments/prod/configs";

    // Refused at creation: 422, nginx's own words, nothing in SQL or the store.
    let (status, body) = call(addr, "POST", configs, None, &opaque("\"forever\"")).await?;
    assert_eq!(status, 422, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"keepalive_timeout\" directive invalid value"),
        "{message}"
    );
    assert!(message.contains("new configuration"), "{message}");
    assert!(body.get("blamed").is_none(), "{body}");
    assert_eq!(
        call(addr, "GET", configs, None, "").await?.1,
        serde_json::json!([])
    );
    assert_eq!(stored_versions(server, "prod").await?, 0);

    // A good configuration goes through; a change to it that nginx refuses is blamed on it
    // and leaves version 1 everywhere.
    let (status, body) = call(addr, "POST", configs, None, &opaque("\"65s\"")).await?;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_string();
    let (status, body) = call(
        addr,
        "PUT",
        &config_path(&id),
        Some(1),
        &opaque("\"forever\""),
    )
    .await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["blamed"], id.as_str());
    let (_, current) = call(addr, "GET", &config_path(&id), None, "").await?;
    assert_eq!(current["version"], 1);
    let (_, history) = call(
        addr,
        "GET",
        &format!("{}/history", config_path(&id)),
        None,
        "",
    )
    .await?;
    assert_eq!(history.as_array().map(Vec::len), Some(1));
    let mut c = server.client().await?;
    let stored = c.get(Keys::default().config("prod", &id), None).await?;
    let stored: serde_json::Value = serde_json::from_slice(stored.kvs()[0].value())?;
    assert_eq!(stored["version"], 1);

    // Another configuration, fine on its own, is not held back.
    let (status, body) = call(addr, "POST", configs, None, &opaque("\"10s\"")).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(stored_versions(server, "prod").await?, 2);

    // An admin skips the check with a reason: accepted, and history says why.
    let skip = "?skip_preflight=the%20agents%20run%20a%20patched%20nginx";
    let (status, body) = call(
        addr,
        "PUT",
        &format!("{}{skip}", config_path(&id)),
        Some(1),
        &opaque("\"forever\""),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let (_, history) = call(
        addr,
        "GET",
        &format!("{}/history", config_path(&id)),
        None,
        "",
    )
    .await?;
    assert_eq!(
        history[1]["preflight_skipped"],
        "the agents run a patched nginx"
    );
    assert!(history[0].get("preflight_skipped").is_none(), "{history}");

    // A rollback is checked too: to version 2 (refused by nginx) is refused, to 1 passes.
    let rollback = |v: i64| format!("{}/rollback?version={v}", config_path(&id));
    let (status, body) = call(addr, "POST", &rollback(1), Some(2), "").await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(addr, "POST", &rollback(2), Some(3), "").await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["blamed"], id.as_str());

    // Every check that ran is timed in /metrics (the skipped one is not): three creations
    // or changes refused, three passed.
    let metrics =
        ferry_controller::http_client::request(addr, "GET", "/metrics", None, &[], "").await?;
    let checks = common::ingress::change_step(&metrics.body, "count", "preflight");
    assert_eq!(checks, Some(6.0), "{}", metrics.body);

    // A reason must be a reason.
    let (status, body) = call(
        addr,
        "POST",
        &format!("{configs}?skip_preflight="),
        None,
        &opaque("1"),
    )
    .await?;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("skip_preflight")),
        "{body}"
    );
    Ok(())
}

/// The built-in template: documents with every feature pass, TLS included (the agents'
/// files are not the controller's to check).
async fn the_built_in_template_checks_every_document(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (addr, _controller) = controller(server, tmp.path(), None).await?;
    let doc = serde_json::json!({
        "kind": "ingress",
        "virtual_hosts": [
            {"hostname": "shop.example.com",
             "tls": {"certificate": "/nonexistent/shop.pem", "key": "/nonexistent/shop.key", "redirect_http": true},
             "paths": [{"path": "/", "service": "shop", "read_timeout_seconds": 30},
                       {"path": "/static", "backends": ["127.0.0.1:9", "[::1]:81"], "connect_timeout_seconds": 2}]},
            {"hostname": "*.example.org", "paths": [{"path": "/", "backends": ["localhost:8080"]}]}
        ]
    });
    let (status, body) = call(
        &addr,
        "POST",
        "/api/v1/environments/prod/configs",
        None,
        &doc.to_string(),
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    Ok(())
}
