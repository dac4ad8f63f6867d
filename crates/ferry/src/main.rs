//! `ferry`: one binary for every ferry component.

mod cmd;

use clap::Parser;

/// mimalloc instead of glibc's malloc: allocation was an eighth of the store's CPU per put
/// under many clients (docs/BENCHMARKS.md, issue 22).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// No transparent huge pages for this process. mimalloc asks for them on its arenas, and on
/// a kernel that grants them only when asked (`madvise` mode, this machine's and many
/// distributions' default) each arena then occupies memory in 2 MiB pieces: a store's
/// resident memory was 27 MiB idle and 253 MiB at a million keys with them, 16 and 229
/// without, at no cost in CPU per put (docs/BENCHMARKS.md, issue 22).
///
/// Run from the executable's initialisers (`.init_array`), before Rust's runtime makes the
/// first allocation: called at the start of `main`, the pages allocated before it would
/// keep the huge pages they got (4 MiB of them). mimalloc's own switch for this is an
/// environment variable read at that same time, too early for the program to set. Child
/// processes inherit the setting; none of them depends on huge pages.
extern "C" fn disable_transparent_huge_pages() {
    // SAFETY: prctl with integer arguments only; it reads and writes no memory of this
    // process. A kernel without the option answers EINVAL, which changes nothing.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[used]
#[link_section = ".init_array"]
static DISABLE_TRANSPARENT_HUGE_PAGES: extern "C" fn() = disable_transparent_huge_pages;

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
