//! Who may do what on the controller's API: named, hashed tokens scoped to environments,
//! identity taken from the token only, the token file reloaded without a restart (and a
//! malformed one refused), an audit line per change and per refusal, and the API over TLS
//! and mutual TLS — as a user drives it, with `ferry controller` and `ferry config`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ferry_bin;
use common::ingress::{token_line, Proc};
use ferry_client::tls::ClientTlsFiles;
use ferry_controller::http_client::ApiClient;
use serde_json::Value;

const ALICE: &str = "alice-token-0123456789abcdef";
const STAGER: &str = "stager-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef";

const DOC: &str = r#"{"kind":"ingress","virtual_hosts":[{"hostname":"shop.example.com","paths":[{"path":"/","backends":["127.0.0.1:9001"]}]}]}"#;

fn spawn_controller(
    endpoint: &str,
    dir: &Path,
    addr: &str,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    Ok(Proc(
        Command::new(ferry_bin())
            .args([
                "controller",
                "--endpoints",
                endpoint,
                "--listen",
                addr,
                "--name",
                "c1",
            ])
            .arg("--tokens")
            .arg(dir.join("tokens"))
            .arg("--database")
            .arg(format!("sqlite://{}", dir.join("ctl.db").display()))
            .args(extra)
            .env("FERRY_LOG", "warn")
            .env("TMPDIR", dir)
            .stdout(Stdio::null())
            .spawn()?,
    ))
}

async fn call(
    api: &ApiClient,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, String)],
    body: &str,
) -> anyhow::Result<(u16, Value)> {
    let reply = api
        .request(method, path, Some(token), headers, body)
        .await?;
    Ok((
        reply.status,
        serde_json::from_str(&reply.body).unwrap_or(Value::Null),
    ))
}

async fn wait_up(api: &ApiClient) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(reply) = api.request("GET", "/healthz", None, &[], "").await {
            if reply.status == 200 {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < until, "the controller did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn eventually(
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(15);
    while !check().await? {
        anyhow::ensure!(Instant::now() < until, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_named_scoped_reloaded_and_audited() -> anyhow::Result<()> {
    let server = common::start(common::Kind::Ferry, &[]).await?;
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        [
            token_line("alice", "admin", "*", ALICE),
            token_line("stager", "admin", "staging,qa", STAGER),
            token_line("reader", "read", "*", READER),
        ]
        .join("\n"),
    )?;
    assert!(
        !std::fs::read_to_string(&tokens)?.contains(ALICE),
        "stored hashed"
    );
    let audit = dir.path().join("audit.log");
    let addr = format!("127.0.0.1:{}", ferry_testkit::free_port()?);
    let mut controller = spawn_controller(
        &server.endpoint(),
        dir.path(),
        &addr,
        &["--audit-log", audit.to_str().unwrap_or_default()],
    )?;
    let api = ApiClient::new(&addr, &ClientTlsFiles::default())?;
    wait_up(&api).await?;
    let staging = "/api/v1/environments/staging/configs";
    let production = "/api/v1/environments/production/configs";

    // The identity is the token's name; a header claiming another one changes nothing.
    let spoof = [("X-Ferry-User", "alice".to_string())];
    let (status, created) = call(&api, "POST", staging, STAGER, &spoof, DOC).await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["changed_by"], "stager");
    let id = created["id"].as_str().unwrap_or_default().to_string();

    // A token scoped to staging gets 403 on production, and nothing is written there.
    let (status, refused) = call(&api, "POST", production, STAGER, &[], DOC).await?;
    assert_eq!(status, 403);
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("does not cover environment \"production\""),
        "{refused}"
    );
    assert_eq!(
        call(&api, "GET", production, ALICE, &[], "").await?,
        (200, serde_json::json!([]))
    );
    assert_eq!(call(&api, "GET", production, STAGER, &[], "").await?.0, 403);
    let (status, _) = call(&api, "POST", production, ALICE, &[], DOC).await?;
    assert_eq!(status, 201);
    // Listing environments shows only the covered ones.
    let (_, envs) = call(&api, "GET", "/api/v1/environments", STAGER, &[], "").await?;
    let names: Vec<&str> = envs
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["env"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["staging"]);
    // Read-only, unknown and missing tokens.
    assert_eq!(call(&api, "POST", staging, READER, &[], DOC).await?.0, 403);
    assert_eq!(
        call(&api, "GET", staging, "not-a-token-0123456789", &[], "")
            .await?
            .0,
        401
    );

    // The audit log: the change with who, where and which version; the refusals with why.
    let lines = audit_lines(&audit);
    let create = lines
        .iter()
        .find(|l| l["action"] == "create" && l["env"] == "staging")
        .ok_or_else(|| anyhow::anyhow!("no create line: {lines:?}"))?;
    assert_eq!(create["identity"], "stager");
    assert_eq!(create["id"], id.as_str());
    assert_eq!(create["version"], 1);
    assert!(
        create["source"]
            .as_str()
            .unwrap_or_default()
            .starts_with("127.0.0.1:"),
        "{create}"
    );
    assert!(create["time"].is_string());
    let refusals: Vec<&Value> = lines.iter().filter(|l| l["action"] == "refused").collect();
    assert!(
        refusals
            .iter()
            .any(|l| l["identity"] == "stager" && l["env"] == "production" && l["status"] == 403),
        "{refusals:?}"
    );
    assert!(
        refusals.iter().any(|l| l["status"] == 401
            && l["reason"] == "unknown token"
            && l["source"].is_string()),
        "{refusals:?}"
    );

    // The file changes: bob is in, alice is out, without a restart.
    std::fs::write(&tokens, token_line("bob", "admin", "*", BOB) + "\n")?;
    eventually("the new token file in force", async || {
        Ok(call(&api, "GET", staging, BOB, &[], "").await?.0 == 200)
    })
    .await?;
    assert_eq!(call(&api, "GET", staging, ALICE, &[], "").await?.0, 401);
    // A malformed file is refused; the tokens in force stay.
    std::fs::write(&tokens, "bob:admin:*:not-a-hash\n")?;
    eventually("the malformed file refused", async || {
        Ok(audit_lines(&audit)
            .iter()
            .any(|l| l["action"] == "tokens_rejected"))
    })
    .await?;
    assert_eq!(call(&api, "GET", staging, BOB, &[], "").await?.0, 200);
    // SIGHUP reloads at once, even an unchanged file, and does not stop the controller.
    std::fs::write(&tokens, token_line("bob", "admin", "*", BOB) + "\n")?;
    eventually("the fixed file reloaded", async || {
        Ok(audit_lines(&audit)
            .iter()
            .filter(|l| l["action"] == "tokens_reloaded")
            .count()
            == 2)
    })
    .await?;
    let status = Command::new("kill")
        .args(["-HUP", &controller.0.id().to_string()])
        .status()?;
    assert!(status.success());
    eventually("SIGHUP reloaded the file", async || {
        Ok(audit_lines(&audit)
            .iter()
            .filter(|l| l["action"] == "tokens_reloaded")
            .count()
            == 3)
    })
    .await?;
    assert!(
        controller.0.try_wait()?.is_none(),
        "SIGHUP must not stop the controller"
    );
    assert_eq!(call(&api, "GET", staging, BOB, &[], "").await?.0, 200);
    controller.kill9();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_tls_and_mutual_tls() -> anyhow::Result<()> {
    let server = common::start(common::Kind::Ferry, &[]).await?;
    let certs = common::certs::Certs::generate()?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("tokens"),
        token_line("alice", "admin", "*", ALICE),
    )?;
    let port = ferry_testkit::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let (cert, key) = (
        certs.server_cert.to_str().unwrap_or_default(),
        certs.server_key.to_str().unwrap_or_default(),
    );
    let mut controller = spawn_controller(
        &server.endpoint(),
        dir.path(),
        &addr,
        &["--tls-cert", cert, "--tls-key", key],
    )?;
    let https = format!("https://localhost:{port}");
    let trusted = ClientTlsFiles {
        ca: Some(certs.ca.clone()),
        ..Default::default()
    };
    wait_up(&ApiClient::new(&https, &trusted)?).await?;
    let config = |api: &str, extra: &[&str]| {
        Command::new(ferry_bin())
            .args([
                "config", "list", "--env", "prod", "--api", api, "--token", ALICE,
            ])
            .args(extra)
            .output()
    };
    let out = config(
        &https,
        &["--api-cacert", certs.ca.to_str().unwrap_or_default()],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A client that does not trust the CA, or speaks plain HTTP, gets nothing.
    let out = config(
        &https,
        &["--api-cacert", certs.other_ca.to_str().unwrap_or_default()],
    )?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the controller API"));
    let out = config(&https, &[])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-cacert"));
    let out = config(&format!("http://{addr}"), &[])?;
    assert!(!out.status.success());
    controller.kill9();

    // Mutual TLS: a client certificate signed by the client CA is required.
    let mut controller = spawn_controller(
        &server.endpoint(),
        dir.path(),
        &addr,
        &[
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--client-ca",
            certs.ca.to_str().unwrap_or_default(),
        ],
    )?;
    let with_cert = ClientTlsFiles {
        ca: Some(certs.ca.clone()),
        cert: Some(certs.client_cert.clone()),
        key: Some(certs.client_key.clone()),
    };
    wait_up(&ApiClient::new(&https, &with_cert)?).await?;
    let ca = certs.ca.to_str().unwrap_or_default();
    let out = config(&https, &["--api-cacert", ca])?;
    assert!(!out.status.success(), "no client certificate, no answer");
    let out = config(
        &https,
        &[
            "--api-cacert",
            ca,
            "--api-cert",
            certs.client_cert.to_str().unwrap_or_default(),
            "--api-key",
            certs.client_key.to_str().unwrap_or_default(),
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    controller.kill9();
    Ok(())
}

#[test]
fn token_create_appends_a_hashed_line_and_prints_the_token_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens");
    let create = |name: &str, envs: &str| {
        Command::new(ferry_bin())
            .args([
                "token", "create", "--name", name, "--role", "admin", "--envs", envs, "--file",
            ])
            .arg(&file)
            .output()
    };
    let out = create("alice", "staging,production")?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_string();
    assert!(token.len() >= 32);
    let text = std::fs::read_to_string(&file)?;
    assert!(!text.contains(&token), "the file holds only the hash");
    let tokens =
        ferry_controller::auth::Tokens::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let who = tokens
        .authenticate(&token)
        .ok_or_else(|| anyhow::anyhow!("the token is not in the file"))?;
    assert_eq!(who.name, "alice");
    assert!(who.scope.covers("production") && !who.scope.covers("qa"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file)?.permissions().mode() & 0o777,
        0o600
    );
    // A second alice, or a bad environment, is refused and the file is unchanged.
    assert!(!create("alice", "*")?.status.success());
    let out = create("bob", "prod.eu")?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("prod.eu"));
    assert_eq!(std::fs::read_to_string(&file)?, text);
    Ok(())
}
