//! The controller's API keeps the contract of its own OpenAPI document: schemathesis (from
//! PyPI, in the test virtual environment) runs every check it has (all enabled in
//! tests/fixtures/schemathesis.toml, with two documented exceptions) against a
//! live controller, through its examples, coverage, fuzzing and stateful phases (create,
//! then get, replace with If-Match, history, rollback, delete, following the document's
//! links), and any finding fails the test.

mod common;

use std::process::Command;

use common::ingress::{sqlite_url, token_line, Controller, ADMIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_openapi_contract() -> anyhow::Result<()> {
    let schemathesis = common::venv::program("schemathesis")?;
    let server = common::start(common::Kind::Ferry, &[]).await?;
    let tmp = tempfile::tempdir()?;
    let controller = Controller::start_with_tokens(
        &server.endpoint(),
        &sqlite_url(tmp.path()),
        "contract",
        tmp.path(),
        &format!("{}\n", token_line("admin", "admin", "*", ADMIN)),
    )
    .await?;
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schemathesis.toml");
    let reports = tmp.path().join("reports");
    // Run from the temp dir: schemathesis writes its caches next to where it runs.
    let out = Command::new(&schemathesis)
        .current_dir(tmp.path())
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("http://{}/openapi.json", controller.addr)])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["-H", &format!("Authorization: Bearer {ADMIN}")])
        .args(["--max-examples", "40", "--seed", "42"])
        .args(["--generation-database", "none", "--workers", "1"])
        .args(["--request-timeout", "10", "--no-color"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&reports)
        .env("SCHEMATHESIS_HOOKS", "")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found contract violations (exit {:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
    // The stateful phase ran: links were followed, not skipped.
    let links = stdout
        .lines()
        .find(|l| l.contains("API Links"))
        .unwrap_or_default();
    // "API Links:    12 covered / 24 selected / 24 total (11 inferred)"
    let covered: u32 = links
        .split_whitespace()
        .skip_while(|w| *w != "Links:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        covered >= 6,
        "the stateful phase followed {covered} links, expected at least 6:\n{stdout}"
    );
    Ok(())
}
