//! The command line: one subcommand per component.

mod store;

use clap::{Parser, Subcommand};

/// ferry: service registration, discovery and configuration distribution on the etcd v3 API.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedded etcd-compatible store (or restore one from a snapshot).
    Store(store::StoreArgs),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Store(args) => args.run().await,
        }
    }
}
