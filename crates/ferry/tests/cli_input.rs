//! Malformed flags, environment variables and files: every subcommand refuses them at once
//! with a message naming what was wrong, instead of retrying, looping or hanging. Each case
//! points the command at a port where nothing listens, so a command that tried to connect
//! before checking its input would fail with a different message (or keep retrying).

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ferry_bin;

/// Longer than any check needs; only a command that loops or waits reaches it.
const HANG: Duration = Duration::from_secs(30);

/// Runs `ferry args` with `envs`, and asserts it exits non-zero on its own with `needle` in
/// its error output.
fn refused<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    args: &[S],
    envs: &[(&str, &str)],
    needle: &str,
) -> anyhow::Result<String> {
    let mut child = Command::new(ferry_bin())
        .args(args)
        .env_remove("FERRY_ENDPOINTS")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > HANG {
            child.kill()?;
            child.wait()?;
            anyhow::bail!(
                "ferry {args:?} was still running after {HANG:?} instead of refusing its input"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(
        !out.status.success(),
        "ferry {args:?} succeeded; stderr: {stderr}"
    );
    anyhow::ensure!(
        stderr.contains(needle),
        "ferry {args:?}: expected {needle:?} in: {stderr}"
    );
    Ok(stderr)
}

/// `base` followed by `extra`, as owned arguments.
fn with_extra(base: Vec<&str>, extra: &[&str]) -> Vec<String> {
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn nowhere() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", ferry_testkit::free_port()?))
}

#[test]
fn malformed_endpoints_are_refused_before_dialling() -> anyhow::Result<()> {
    refused(
        &["registry", "list", "--endpoints=--endpoints"],
        &[],
        "endpoint \"--endpoints\" is not [http://|https://]host:port: no :port",
    )?;
    refused(
        &["registry", "list"],
        &[("FERRY_ENDPOINTS", "127.0.0.1")],
        "no :port",
    )?;
    refused(
        &["registry", "list", "--endpoints", "127.0.0.1:99999"],
        &[],
        "the port must be a number from 1 to 65535",
    )?;
    refused(
        &["registry", "list", "--endpoints", "unix:///run/etcd.sock"],
        &[],
        "the scheme must be http:// or https://",
    )?;
    refused(
        &["render", "-onetime", "-node", "http://a b:2379"],
        &[],
        "neither an IP address nor a DNS name",
    )?;
    refused(
        &["bench", "put", "--endpoints", "h:0", "--total", "1"],
        &[],
        "the port must be",
    )?;
    refused(
        &[
            "up",
            "--endpoints",
            "127.0.0.1:99999",
            "--exit-when-complete",
        ],
        &[],
        "--endpoints: endpoint \"127.0.0.1:99999\"",
    )?;
    refused(&["operator", "--endpoints=--endpoints"], &[], "no :port")?;
    refused(
        &[
            "cluster",
            "status",
            "main",
            "--endpoints",
            "127.0.0.1:99999",
        ],
        &[],
        "the port must be a number from 1 to 65535",
    )?;
    Ok(())
}

#[test]
fn bad_durations_and_credentials_are_refused() -> anyhow::Result<()> {
    let endpoint = nowhere()?;
    refused(
        &[
            "registry",
            "list",
            "--endpoints",
            &endpoint,
            "--dial-timeout",
            "99999999999999999999s",
        ],
        &[],
        "292 years",
    )?;
    refused(
        &[
            "registry",
            "list",
            "--endpoints",
            &endpoint,
            "--command-timeout",
            "0s",
        ],
        &[],
        "must be longer than zero",
    )?;
    // etcd closes connections that ping more often than every 5 s ("too many pings").
    refused(
        &[
            "registry",
            "list",
            "--endpoints",
            &endpoint,
            "--keepalive-time",
            "1s",
        ],
        &[],
        "keep-alive time 1s is shorter than 5s",
    )?;
    refused(
        &[
            "registry",
            "list",
            "--endpoints",
            &endpoint,
            "--password",
            "x",
        ],
        &[],
        "--password needs --user",
    )?;
    refused(
        &[
            "registry",
            "announce",
            "--endpoints",
            &endpoint,
            "--service",
            "web",
            "--id",
            "a",
            "--addr",
            "127.0.0.1:80",
            "--keepalive",
            "0s",
        ],
        &[],
        "--keepalive",
    )?;
    refused(
        &[
            "registry",
            "list",
            "--endpoints",
            &endpoint,
            "--service",
            "",
        ],
        &[],
        "--service \"\"",
    )?;
    Ok(())
}

#[test]
fn agent_refuses_what_no_retry_can_fix() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let prefix = dir.path().join("nginx");
    let prefix = prefix.to_str().unwrap_or_default();
    let endpoint = nowhere()?;
    let agent = |extra: &[&str]| {
        with_extra(
            vec![
                "agent",
                "--nginx-prefix",
                prefix,
                "--endpoints",
                endpoint.as_str(),
            ],
            extra,
        )
    };
    // The agent waits for an unreachable store (nginx keeps serving); a malformed endpoint
    // is not unreachable, it is wrong, and waiting would never end.
    let bad_endpoint = [
        "agent",
        "--nginx-prefix",
        prefix,
        "--env",
        "prod",
        "--name",
        "a",
        "--endpoints=--endpoints",
    ];
    refused(&bad_endpoint, &[], "is not [http://|https://]host:port")?;
    refused(
        &agent(&["--env", "prod.eu", "--name", "a"]),
        &[],
        "environment \"prod.eu\"",
    )?;
    refused(
        &agent(&["--env", "prod", "--name", "a/b"]),
        &[],
        "agent name \"a/b\"",
    )?;
    refused(
        &agent(&["--env", "prod", "--name", "a\n}"]),
        &[],
        "agent name",
    )?;
    refused(
        &agent(&["--env", "prod", "--name", "a", "--root", "ingress"]),
        &[],
        "root prefix \"ingress\"",
    )?;
    refused(
        &agent(&["--env", "prod", "--name", "a", "--root", "/"]),
        &[],
        "root prefix \"/\"",
    )?;
    refused(
        &agent(&["--env", "prod", "--name", "a", "--ip", "1.2.3.4;"]),
        &[],
        "agent address",
    )?;
    refused(
        &agent(&["--env", "prod", "--name", "a", "--resync", "1ms"]),
        &[],
        "resync period",
    )?;
    refused(
        &agent(&[
            "--env",
            "prod",
            "--name",
            "a",
            "--template",
            "/nonexistent/nginx.tmpl",
        ]),
        &[],
        "--template /nonexistent/nginx.tmpl",
    )?;
    refused(
        &agent(&["--env", "prod", "--name", "a", "--listen", "80;"]),
        &[],
        "--listen",
    )?;
    Ok(())
}

#[test]
fn controller_refuses_bad_names_roots_and_databases_before_connecting() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "admin:admin:*:{}\n",
            ferry_controller::auth::hash_token("0123456789abcdef0123456789abcdef")
        ),
    )?;
    let tokens = tokens.to_str().unwrap_or_default();
    let endpoint = nowhere()?;
    let controller = |extra: &[&str]| {
        with_extra(
            vec![
                "controller",
                "--tokens",
                tokens,
                "--listen",
                "127.0.0.1:0",
                "--endpoints",
                endpoint.as_str(),
            ],
            extra,
        )
    };
    refused(
        &controller(&["--root", "ingress"]),
        &[],
        "root prefix \"ingress\"",
    )?;
    refused(&controller(&["--name", ""]), &[], "controller name \"\"")?;
    let stderr = refused(
        &controller(&["--database", "oracle://scott:tiger@db/x"]),
        &[],
        "unsupported database URL",
    )?;
    assert!(!stderr.contains("tiger"), "the password leaked: {stderr}");
    refused(
        &controller(&["--reconcile-interval", "0s"]),
        &[],
        "--reconcile-interval",
    )?;
    Ok(())
}

#[test]
fn config_refuses_bad_api_addresses_names_and_non_api_answers() -> anyhow::Result<()> {
    let config = |extra: &[&str]| with_extra(vec!["config", "--token", "t"], extra);
    refused(
        &config(&["list", "--env", "prod", "--api", "http://127.0.0.1:1/api"]),
        &[],
        "expected http://HOST:PORT",
    )?;
    refused(
        &config(&["list", "--env", "prod", "--api", "127.0.0.1"]),
        &[],
        "--api \"127.0.0.1\"",
    )?;
    refused(
        &config(&["list", "--env", "a b", "--api", "127.0.0.1:1"]),
        &[],
        "--env",
    )?;
    refused(
        &config(&["get", "../../x", "--env", "prod", "--api", "127.0.0.1:1"]),
        &[],
        "configuration id \"../../x\"",
    )?;
    // A server that is not the controller: it answers something that is not HTTP and closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let api = listener.local_addr()?.to_string();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            if let Ok((mut sock, _)) = listener.accept() {
                let mut request = [0u8; 4096];
                let _ = sock.read(&mut request);
                let _ = sock.write_all(b"+OK redis-like\r\n");
            }
        }
    });
    refused(
        &config(&["list", "--env", "prod", "--api", &api]),
        &[],
        "gave no HTTP answer",
    )?;
    refused(
        &config(&["status", "abc", "--env", "prod", "--api", &api, "--watch"]),
        &[],
        "gave no HTTP answer",
    )?;
    let _ = server.join();
    Ok(())
}

#[test]
fn render_in_watch_mode_refuses_resources_it_could_never_render() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("conf.d"))?;
    std::fs::create_dir_all(dir.path().join("templates"))?;
    std::fs::write(
        dir.path().join("conf.d/app.toml"),
        "[template]\nsrc = \"missing.tmpl\"\ndest = \"/tmp/app.conf\"\nkeys = [\"/app\"]\n",
    )?;
    let confdir = dir.path().to_str().unwrap_or_default();
    let endpoint = nowhere()?;
    refused(
        &["render", "-watch", "-confdir", confdir, "-node", &endpoint],
        &[],
        "missing.tmpl",
    )?;
    std::fs::write(dir.path().join("templates/missing.tmpl"), "x")?;
    std::fs::write(
        dir.path().join("conf.d/app.toml"),
        "[template]\nsrc = \"missing.tmpl\"\ndest = \"/nonexistent-dir/app.conf\"\nkeys = [\"/app\"]\n",
    )?;
    refused(
        &[
            "render",
            "-interval",
            "5",
            "-confdir",
            confdir,
            "-node",
            &endpoint,
        ],
        &[],
        "the directory /nonexistent-dir does not exist",
    )?;
    std::fs::write(
        dir.path().join("conf.d/app.toml"),
        "[template]\nsrc = \"missing.tmpl\"\ndest = \"/tmp/app.conf\"\nkeys = [\"/app\"]\nwait = \"soon\"\n",
    )?;
    refused(
        &["render", "-watch", "-confdir", confdir, "-node", &endpoint],
        &[],
        "wait",
    )?;
    Ok(())
}
