//! The Python virtual environment `scripts/install-deps.sh` fills with the test tools that
//! come from PyPI (schemathesis, selenium).

use std::path::PathBuf;

/// Where install-deps.sh puts it: `$FERRY_VENV`, else `~/.cache/ferry/venv`.
pub fn dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_VENV") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/ferry/venv")
}

/// A program of the environment, or how to install it.
pub fn program(name: &str) -> anyhow::Result<PathBuf> {
    let path = dir().join("bin").join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: run scripts/install-deps.sh (it creates the Python virtual environment \
         {} with schemathesis and selenium)",
        path.display(),
        dir().display()
    );
    Ok(path)
}
