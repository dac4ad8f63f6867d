//! Helpers shared by ferry's integration tests.
#![allow(dead_code)]

use std::path::Path;

pub mod certs;
pub mod http;
pub mod ingress;
pub mod venv;

pub use ferry_testkit::{Kind, Server};

/// The `ferry` binary built for these tests.
pub fn ferry_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

/// Runs `ferry up --exit-when-complete` (API on a free port, warnings only) with what
/// `configure` adds, checks that it exited successfully with every environment's rollout
/// complete, and returns what it printed.
pub fn ferry_up(configure: impl FnOnce(&mut std::process::Command)) -> anyhow::Result<String> {
    let mut command = std::process::Command::new(ferry_bin());
    command.args([
        "up",
        "--api-port",
        "0",
        "--exit-when-complete",
        "--log-level",
        "warn",
    ]);
    configure(&mut command);
    let out = command.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("rollout complete in every environment"),
        "{stdout}"
    );
    Ok(stdout)
}

/// Starts a server of `kind` with extra etcd-style flags.
pub async fn start(kind: Kind, extra: &[&str]) -> anyhow::Result<Server> {
    Server::start(kind, ferry_bin(), extra).await
}

/// Waits (up to `limit`) until the file at `path` contains `needle`.
pub async fn wait_for_content(
    path: &Path,
    needle: &str,
    limit: std::time::Duration,
) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + limit;
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        anyhow::ensure!(
            std::time::Instant::now() < until,
            "{needle} never appeared in {}",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The gRPC status behind a client error, or a test failure naming what came instead.
pub fn status(err: etcd_client::Error) -> tonic::Status {
    match err {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status error, got {other:?}"),
    }
}

/// Asserts that `result` failed with etcd's `code` and exact `message`.
pub fn assert_etcd_error<T: std::fmt::Debug>(
    result: Result<T, etcd_client::Error>,
    code: tonic::Code,
    message: &str,
) {
    match result {
        Ok(v) => panic!("expected error {message:?}, got success {v:?}"),
        Err(e) => {
            let s = status(e);
            assert_eq!((s.code(), s.message()), (code, message), "wrong error");
        }
    }
}

/// Generates one test per case and backend: `on_ferry::case` and `on_etcd::case`. With
/// `mut` first, cases take `&mut Server` (to kill and restart it).
#[macro_export]
macro_rules! against_both {
    (mut $flags:expr; $($case:ident),* $(,)?) => {
        mod on_ferry {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let mut server = super::common::start(super::common::Kind::Ferry, $flags).await?;
                    super::$case(&mut server).await
                }
            )*
        }
        mod on_etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let mut server = super::common::start(super::common::Kind::Etcd, $flags).await?;
                    super::$case(&mut server).await
                }
            )*
        }
    };
    ($flags:expr; $($case:ident),* $(,)?) => {
        mod on_ferry {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let server = super::common::start(super::common::Kind::Ferry, $flags).await?;
                    super::$case(&server).await
                }
            )*
        }
        mod on_etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let server = super::common::start(super::common::Kind::Etcd, $flags).await?;
                    super::$case(&server).await
                }
            )*
        }
    };
}

/// A `grpc-message` as gRPC percent-encodes it (tonic encodes spaces, Go does not).
pub fn percent_decoded(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
