//! The dashboard in a real browser: Debian's Chromium, driven over WebDriver by selenium
//! (tests/dashboard/dashboard_test.py), against `ferry up` (two environments, six agents
//! with real nginx). Logging in, both environments and their agents, a change applied
//! through the API turning every agent's cell applied without a reload, a failing agent's
//! reason, history with a diff, rollback and its conflict, field-level validation errors,
//! and a read-only token that sees no write control. Each main page's screenshot is saved in
//! the test's temp dir and checked to be non-blank.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// `ferry up`, stopped with SIGTERM (it stops its agents and their nginx) when dropped.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value after `label` on the first line of `lines` that has it.
fn printed(lines: &[String], label: &str) -> Option<String> {
    lines.iter().find_map(|l| {
        l.trim_start()
            .strip_prefix(label)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    })
}

#[test]
fn dashboard_in_a_real_browser() -> anyhow::Result<()> {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        anyhow::ensure!(
            Path::new(path).is_file(),
            "{path} is missing: apt-get install {package} (or run scripts/install-deps.sh)"
        );
    }
    let python = common::venv::program("python")?;
    common::ingress::nginx_binary()?;
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(common::ferry_bin())
        .args(["up", "--api-port", "0", "--log-level", "warn", "--dir"])
        .arg(dir.path().join("demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take();
    let demo = Demo(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Some(out) = stdout {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    let mut lines = Vec::new();
    let until = Instant::now() + Duration::from_secs(120);
    while printed(&lines, "dashboard:").is_none() {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => anyhow::bail!(
                "ferry up did not print its dashboard URL:\n{}",
                lines.join("\n")
            ),
        }
    }
    let field = |label: &str| {
        printed(&lines, label)
            .ok_or_else(|| anyhow::anyhow!("ferry up printed no {label:?}:\n{}", lines.join("\n")))
    };
    let dashboard = field("dashboard:")?;
    let base = dashboard
        .strip_suffix("/ui/")
        .ok_or_else(|| anyhow::anyhow!("dashboard URL {dashboard:?} does not end in /ui/"))?
        .to_string();
    let admin = field("admin token:")?;
    let reader = field("read-only token:")?;
    let screenshots = dir.path().join("screenshots");
    std::fs::create_dir_all(&screenshots)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/dashboard_test.py");
    let out = Command::new(&python)
        .arg("-B")
        .arg(&script)
        .args([
            "--url",
            &base,
            "--admin-token",
            &admin,
            "--read-token",
            &reader,
        ])
        .arg("--screenshots")
        .arg(&screenshots)
        .args(["--chromium", CHROMIUM, "--chromedriver", CHROMEDRIVER])
        .env("SE_OFFLINE", "true")
        .output()?;
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(demo);
    assert!(out.status.success(), "dashboard test failed:\n{report}");
    for page in ["home", "rollout", "failed", "history", "edit", "readonly"] {
        let shot = screenshots.join(format!("{page}.png"));
        let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 1000,
            "{} missing or empty:\n{report}",
            shot.display()
        );
    }
    Ok(())
}
