//! `ferry render -onetime` against `ferry store` and a real etcd 3.4: confd resources,
//! staged writes, check and reload commands, dry runs and template errors.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{ferry_bin, Server};
use etcd_client::DeleteOptions;

against_both!(&[];
    onetime_renders_checks_installs_and_reloads,
    interval_mode_config_file_status_and_metrics,
    sync_only_keep_stage_file_and_owner,
    watch_mode_survives_a_store_restart_and_reports_reload_failures,
    classic_confd_templates_render_as_confd_does,
    a_burst_of_changes_renders_and_reloads_once,
);

const TEMPLATE: &str = "upstream apache {\n{{- range getvs \"/services/apache/*\"}}\n    server {{.}};\n{{- end}}\n}\n";

fn setup(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("conf.d"))?;
    std::fs::create_dir_all(dir.join("templates"))?;
    std::fs::create_dir_all(dir.join("out"))?;
    std::fs::write(dir.join("templates/upstream.tmpl"), TEMPLATE)?;
    std::fs::write(
        dir.join("conf.d/upstream.toml"),
        format!(
            "[template]\nsrc = \"upstream.tmpl\"\ndest = \"{out}\"\nkeys = [\"/services/apache\"]\nmode = \"0640\"\n\
             check_cmd = \"grep -q server {{{{.src}}}}\"\nreload_cmd = \"touch {marker}\"\n",
            out = dir.join("out/upstream.conf").display(),
            marker = dir.join("reloaded").display(),
        ),
    )?;
    Ok(())
}

fn render(server: &Server, dir: &Path, extra: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(ferry_bin())
        .args(["render", "-onetime", "-confdir"])
        .arg(dir)
        .args(["-node", &server.endpoint()])
        .args(extra)
        .env("FERRY_LOG", "warn")
        .output()?)
}

async fn onetime_renders_checks_installs_and_reloads(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    setup(dir)?;
    let mut c = server.client().await?;
    for (id, addr) in [
        ("3", "10.0.0.3:80"),
        ("1", "10.0.0.1:80"),
        ("2", "10.0.0.2:80"),
    ] {
        c.put(format!("/services/apache/{id}"), addr, None).await?;
    }
    c.put("/services/apache2/x", "not mine", None).await?;
    let out = render(server, dir, &[])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = dir.join("out/upstream.conf");
    let expected = "upstream apache {\n    server 10.0.0.1:80;\n    server 10.0.0.2:80;\n    server 10.0.0.3:80;\n}\n";
    assert_eq!(std::fs::read_to_string(&dest)?, expected);
    assert_eq!(
        std::fs::metadata(&dest)?.permissions().mode() & 0o777,
        0o640
    );
    assert!(dir.join("reloaded").exists(), "reload_cmd ran");

    // Nothing changed: no rewrite, no reload.
    std::fs::remove_file(dir.join("reloaded"))?;
    assert!(render(server, dir, &[])?.status.success());
    assert!(!dir.join("reloaded").exists(), "no reload without a change");

    // A dry run shows the change and touches nothing.
    c.put("/services/apache/4", "10.0.0.4:80", None).await?;
    let out = render(server, dir, &["-noop"])?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("+    server 10.0.0.4:80;"));
    assert_eq!(std::fs::read_to_string(&dest)?, expected);

    // A change that fails check_cmd is never installed, and the run fails.
    c.delete(
        "/services/apache/",
        Some(DeleteOptions::new().with_prefix()),
    )
    .await?;
    let out = render(server, dir, &[])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("check_cmd"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&dest)?, expected, "dest untouched");
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("out"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "staged files removed: {leftovers:?}");
    assert!(!dir.join("reloaded").exists());

    // A template error names the file, line and column.
    std::fs::write(dir.join("templates/upstream.tmpl"), "ok\n{{if}}\n")?;
    let out = render(server, dir, &[])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upstream.tmpl:2:"), "{stderr}");
    Ok(())
}

#[test]
fn bad_resources_and_flags_are_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    std::fs::create_dir_all(tmp.path().join("conf.d"))?;
    std::fs::write(
        tmp.path().join("conf.d/bad.toml"),
        "[template]\nsrc = \"x\"\ndest = \"/tmp/x\"\nmode = \"rwx\"\n",
    )?;
    let out = Command::new(ferry_bin())
        .args(["render", "-onetime", "-confdir"])
        .arg(tmp.path())
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an octal file mode"));
    let out = Command::new(ferry_bin())
        .args(["render", "-onetime", "-backend", "consul"])
        .output()?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("-backend \"consul\""));
    Ok(())
}

async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    sock.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    sock.read_to_string(&mut out).await?;
    Ok(out)
}

async fn interval_mode_config_file_status_and_metrics(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    setup(dir)?;
    // confd's own config file carries the endpoint, the conf dir and the interval.
    let config = dir.join("confd.toml");
    std::fs::write(
        &config,
        format!(
            "backend = \"etcdv3\"\nconfdir = \"{}\"\ninterval = 1\nnodes = [\"{}\"]\n",
            dir.display(),
            server.endpoint()
        ),
    )?;
    let mut c = server.client().await?;
    c.put("/services/apache/1", "10.0.0.1:80", None).await?;
    let metrics = format!("127.0.0.1:{}", ferry_testkit::free_port()?);
    let status = dir.join("status.json");
    let mut child = Command::new(ferry_bin())
        .args(["render", "-config-file"])
        .arg(&config)
        .args(["-metrics-addr", &metrics, "-status-file"])
        .arg(&status)
        .args(["-log-level", "warn"])
        .spawn()?;
    let result = async {
        let dest = dir.join("out/upstream.conf");
        common::wait_for_content(&dest, "10.0.0.1:80", std::time::Duration::from_secs(20)).await?;
        c.put("/services/apache/2", "10.0.0.2:80", None).await?;
        common::wait_for_content(&dest, "10.0.0.2:80", std::time::Duration::from_secs(20)).await?;
        let text = http_get(&metrics, "/metrics").await?;
        assert!(text.contains("ferry_render_last_render_success{"), "{text}");
        assert!(text.contains("ferry_render_renders_total{"), "{text}");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&status)?)?;
        assert_eq!(json[0]["ok"], serde_json::Value::Bool(true), "{json}");
        assert!(json[0]["revision"].as_i64().unwrap_or(0) >= 3, "{json}");
        anyhow::Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn sync_only_keep_stage_file_and_owner(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    setup(dir)?;
    let me = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
        .trim()
        .to_string();
    let group = String::from_utf8(Command::new("id").arg("-gn").output()?.stdout)?
        .trim()
        .to_string();
    let toml = dir.join("conf.d/upstream.toml");
    let mut text = std::fs::read_to_string(&toml)?;
    text.push_str(&format!("owner = \"{me}\"\ngroup = \"{group}\"\n"));
    std::fs::write(&toml, text)?;
    // No backends: check_cmd (grep server) fails.
    let out = render(server, dir, &["-keep-stage-file"])?;
    assert!(!out.status.success());
    let staged: Vec<String> = std::fs::read_dir(dir.join("out"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        staged.iter().any(|n| n.starts_with(".upstream.conf")),
        "staged file kept: {staged:?}"
    );
    assert!(!dir.join("out/upstream.conf").exists());
    // -sync-only installs without check or reload.
    let out = render(server, dir, &["-sync-only"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("out/upstream.conf").exists());
    assert!(!dir.join("reloaded").exists(), "no reload with -sync-only");
    use std::os::unix::fs::MetadataExt;
    let uid: u32 = String::from_utf8(Command::new("id").arg("-u").output()?.stdout)?
        .trim()
        .parse()?;
    assert_eq!(std::fs::metadata(dir.join("out/upstream.conf"))?.uid(), uid);
    // An unknown owner is refused and changes nothing.
    let mut c = server.client().await?;
    c.put("/services/apache/1", "10.0.0.1:80", None).await?;
    let text = std::fs::read_to_string(&toml)?.replace(
        &format!("owner = \"{me}\""),
        "owner = \"no-such-user-ferry\"",
    );
    std::fs::write(&toml, text)?;
    let before = std::fs::read_to_string(dir.join("out/upstream.conf"))?;
    let out = render(server, dir, &[])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such user"));
    assert_eq!(
        std::fs::read_to_string(dir.join("out/upstream.conf"))?,
        before
    );
    Ok(())
}

async fn watch_mode_survives_a_store_restart_and_reports_reload_failures(
    server: &Server,
) -> anyhow::Result<()> {
    let mut own = common::start(server.kind(), &[]).await?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    setup(dir)?;
    let toml = dir.join("conf.d/upstream.toml");
    let text = std::fs::read_to_string(&toml)?;
    let reload = text
        .lines()
        .find(|l| l.starts_with("reload_cmd"))
        .unwrap_or_default()
        .to_string();
    std::fs::write(&toml, text.replace(&reload, "reload_cmd = \"exit 3\""))?;
    let mut c = own.client().await?;
    c.put("/services/apache/1", "10.0.0.1:80", None).await?;
    let status = dir.join("status.json");
    let mut child = Command::new(ferry_bin())
        .args(["render", "-watch", "-wait", "50ms:200ms", "-confdir"])
        .arg(dir)
        .args(["-node", &own.endpoint(), "-status-file"])
        .arg(&status)
        .env("FERRY_LOG", "error")
        .spawn()?;
    let dest = dir.join("out/upstream.conf");
    let result = async {
        common::wait_for_content(&dest, "10.0.0.1:80", std::time::Duration::from_secs(20)).await?;
        // The failed reload is reported (the file itself was installed).
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&status)?)?;
        assert_eq!(json[0]["ok"], serde_json::Value::Bool(false), "{json}");
        assert!(
            json[0]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("reload_cmd"),
            "{json}"
        );
        own.kill();
        own.restart().await?;
        let mut c = own.client().await?;
        c.put("/services/apache/2", "10.0.0.2:80", None).await?;
        common::wait_for_content(&dest, "10.0.0.2:80", std::time::Duration::from_secs(20)).await?;
        anyhow::Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// confd's quick-start templates (nginx and haproxy), rendered as confd renders them.
async fn classic_confd_templates_render_as_confd_does(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    for d in ["conf.d", "templates", "out"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::write(
        dir.join("templates/nginx.tmpl"),
        "upstream {{getv \"/subdomain\"}} {\n{{range getvs \"/upstream/*\"}}    server {{.}};\n{{end}}}\n\nserver {\n    server_name  {{getv \"/subdomain\"}}.example.com;\n    location / {\n        proxy_pass        http://{{getv \"/subdomain\"}};\n    }\n}\n",
    )?;
    std::fs::write(
        dir.join("templates/haproxy.cfg.tmpl"),
        "backend {{getv \"/subdomain\"}}\n{{range gets \"/upstream/*\"}}    server {{base .Key}} {{.Value}} check\n{{end}}",
    )?;
    for (name, src) in [("nginx", "nginx.tmpl"), ("haproxy", "haproxy.cfg.tmpl")] {
        std::fs::write(
            dir.join(format!("conf.d/{name}.toml")),
            format!(
                "[template]\nprefix = \"/myapp\"\nsrc = \"{src}\"\ndest = \"{}\"\nkeys = [\"/subdomain\", \"/upstream\"]\n",
                dir.join(format!("out/{name}")).display()
            ),
        )?;
    }
    let mut c = server.client().await?;
    c.put("/myapp/subdomain", "myapp", None).await?;
    c.put("/myapp/upstream/app2", "10.0.1.11:80", None).await?;
    c.put("/myapp/upstream/app1", "10.0.1.10:80", None).await?;
    let out = render(server, dir, &[])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out/nginx"))?,
        "upstream myapp {\n    server 10.0.1.10:80;\n    server 10.0.1.11:80;\n}\n\nserver {\n    server_name  myapp.example.com;\n    location / {\n        proxy_pass        http://myapp;\n    }\n}\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out/haproxy"))?,
        "backend myapp\n    server app1 10.0.1.10:80 check\n    server app2 10.0.1.11:80 check\n"
    );
    // confd's global -prefix replaces a resource's prefix, it is not joined to it (checked
    // against confd 0.17): under `-prefix /` the keys are read from `/subdomain`, which does
    // not exist, so the render fails and the files stay as they are.
    let out = render(server, dir, &["-prefix", "/"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key does not exist: /subdomain"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.put("/other/subdomain", "other", None).await?;
    c.put("/other/upstream/a", "10.9.9.9:80", None).await?;
    let out = render(server, dir, &["-prefix", "/other"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out/haproxy"))?,
        "backend other\n    server a 10.9.9.9:80 check\n"
    );
    Ok(())
}

async fn a_burst_of_changes_renders_and_reloads_once(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    setup(dir)?;
    let count = dir.join("reloads");
    let toml = dir.join("conf.d/upstream.toml");
    let text = std::fs::read_to_string(&toml)?;
    let reload = text
        .lines()
        .find(|l| l.starts_with("reload_cmd"))
        .unwrap_or_default()
        .to_string();
    std::fs::write(
        &toml,
        text.replace(
            &reload,
            &format!("reload_cmd = \"echo x >> {}\"", count.display()),
        ),
    )?;
    let mut c = server.client().await?;
    c.put("/services/apache/0", "10.0.0.100:80", None).await?;
    let mut child = Command::new(ferry_bin())
        .args(["render", "-watch", "-wait", "400ms:3s", "-confdir"])
        .arg(dir)
        .args(["-node", &server.endpoint()])
        .env("FERRY_LOG", "error")
        .spawn()?;
    let reloads = || {
        std::fs::read_to_string(&count)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let result = async {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while reloads() < 1 {
            anyhow::ensure!(
                std::time::Instant::now() < until,
                "first render never happened"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Twenty changes in quick succession: one render, one reload.
        for i in 1..=20 {
            c.put(
                format!("/services/apache/{i}"),
                format!("10.0.0.{i}:80"),
                None,
            )
            .await?;
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while reloads() < 2 {
            anyhow::ensure!(
                std::time::Instant::now() < until,
                "the burst was never rendered"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(
            reloads(),
            2,
            "a burst of 20 changes reloaded more than once"
        );
        let conf = std::fs::read_to_string(dir.join("out/upstream.conf"))?;
        assert!(
            conf.contains("10.0.0.20:80") && conf.contains("10.0.0.1:80"),
            "{conf}"
        );
        anyhow::Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}
