//! `ferry up`, the README's main command: everything starts, both environments' rollouts
//! complete, and everything stops cleanly.

mod common;

use std::process::Command;

#[test]
fn ferry_up_rolls_out_to_every_agent_and_stops_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(common::ferry_bin())
        .args([
            "up",
            "--api-port",
            "0",
            "--exit-when-complete",
            "--log-level",
            "warn",
            "--dir",
        ])
        .arg(dir.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("admin token:"), "{stdout}");
    assert!(
        stdout.contains("rollout complete in every environment"),
        "{stdout}"
    );
    for env in ["staging", "production"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(env) && l.trim_end().ends_with("true")),
            "{env} not complete:\n{stdout}"
        );
        let conf = dir
            .path()
            .join(format!("agents/{env}-agent-1/conf/nginx.conf"));
        let text = std::fs::read_to_string(&conf)?;
        assert!(
            text.contains(&format!("server_name \"shop.{env}.example\";")),
            "{text}"
        );
    }
    // nginx was stopped with the agents.
    let pid_file = dir.path().join("agents/staging-agent-1/nginx.pid");
    assert!(
        !pid_file.exists(),
        "nginx still running (pid file {} left)",
        pid_file.display()
    );
    Ok(())
}
