//! `ferry`: one binary for every ferry component.

mod cmd;

use clap::Parser;

/// mimalloc instead of glibc's malloc: allocation was an eighth of the store's CPU per put
/// under many clients (docs/BENCHMARKS.md, issue 22).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse_from(cmd::confd_style(std::env::args().collect()));
    // confd's levels, mapped onto tracing's.
    let level = cli.log_level.as_deref().map(|l| match l {
        "panic" | "fatal" => "error",
        "warning" => "warn",
        other => other,
    });
    let filter = match level {
        Some(l @ ("error" | "warn" | "info" | "debug" | "trace")) => {
            tracing_subscriber::EnvFilter::new(l)
        }
        Some(other) => {
            eprintln!("error: --log-level {other:?} is not one of error, warn, info, debug, trace");
            return std::process::ExitCode::FAILURE;
        }
        None => tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
