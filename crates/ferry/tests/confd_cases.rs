//! confd's exact output, pinned: every case under `fixtures/confd-cases/` was rendered by the
//! real confd 0.17 (by `scripts/confd-compare/differential.py`, when it found ferry
//! rendering something else) and `ferry render` must now write the same bytes, or fail with
//! the same exit code and write nothing, against the embedded store and a real etcd.
//!
//! A case directory holds `keys.json` (`[[key, value], ...]`), `template.tmpl`,
//! `resource.toml` (dest `@DEST@`), `confd.rc` and, when confd wrote a file, `confd.out`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ferry_bin, Server};

against_both!(&[];
    every_recorded_case_renders_as_confd_did,
);

/// The environment the harness gives both tools (for `getenv`).
const ENV: [(&str, &str); 3] = [
    ("FERRY_CMP_ENV", "from-env"),
    ("FERRY_CMP_EMPTY", ""),
    ("FERRY_CMP_UNI", "héllo ☃"),
];

fn cases() -> anyhow::Result<Vec<PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/confd-cases");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    dirs.retain(|d| d.join("template.tmpl").is_file());
    dirs.sort();
    anyhow::ensure!(!dirs.is_empty(), "no cases under {}", root.display());
    Ok(dirs)
}

async fn every_recorded_case_renders_as_confd_did(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let mut failures = Vec::new();
    let cases = cases()?;
    for case in &cases {
        // Each case lives under its own key root, so the keys of all cases can coexist.
        let keys: Vec<(String, String)> =
            serde_json::from_str(&std::fs::read_to_string(case.join("keys.json"))?)?;
        for (k, v) in keys {
            c.put(k, v, None).await?;
        }
    }
    for case in &cases {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("conf.d"))?;
        std::fs::create_dir_all(dir.join("templates"))?;
        std::fs::copy(
            case.join("template.tmpl"),
            dir.join("templates/template.tmpl"),
        )?;
        let dest = dir.join("out");
        let resource = std::fs::read_to_string(case.join("resource.toml"))?
            .replace("@DEST@", &dest.display().to_string());
        std::fs::write(dir.join("conf.d/case.toml"), resource)?;
        let out = Command::new(ferry_bin())
            .args(["render", "-onetime", "-backend", "etcdv3", "-confdir"])
            .arg(dir)
            .args(["-node", &server.endpoint(), "-log-level", "error"])
            .envs(ENV)
            // The harness runs both tools in the conf dir (`fileExists "conf.d"`).
            .current_dir(dir)
            .env("FERRY_LOG", "error")
            .output()?;
        let want_rc: i32 = std::fs::read_to_string(case.join("confd.rc"))?
            .trim()
            .parse()?;
        let want_out = std::fs::read(case.join("confd.out")).ok();
        let got_out = std::fs::read(&dest).ok();
        let got_rc = out.status.code().unwrap_or(-1);
        if got_rc != want_rc || got_out != want_out {
            failures.push(format!(
                "{}: exit {got_rc} (confd {want_rc})\n--- confd\n{}\n--- ferry\n{}\n{}",
                case.display(),
                want_out.map_or("<no file>".into(), |b| String::from_utf8_lossy(&b)
                    .into_owned()),
                got_out.map_or("<no file>".into(), |b| String::from_utf8_lossy(&b)
                    .into_owned()),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from confd:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}
