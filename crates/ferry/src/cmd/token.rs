//! `ferry token`: API tokens for the controller's token file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use ferry_controller::auth::{new_token, parse_role, parse_scope, token_line, Tokens};

/// Arguments of `ferry token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    action: TokenAction,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Make a new random token: prints it once; the file keeps only its hash.
    Create {
        /// Who holds it (recorded in history and the audit log).
        #[arg(long)]
        name: String,
        /// admin (read and change) or read.
        #[arg(long, default_value = "read")]
        role: String,
        /// Environments it covers: `*` or a comma-separated list.
        #[arg(long, default_value = "*")]
        envs: String,
        /// Append the line to this token file (created with mode 0600); without it the line
        /// is printed on stderr.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

impl TokenArgs {
    /// Runs the chosen action.
    pub async fn run(self) -> anyhow::Result<()> {
        let TokenAction::Create {
            name,
            role,
            envs,
            file,
        } = self.action;
        let role = parse_role(&role).map_err(|e| anyhow!("--role: {e}"))?;
        let scope = parse_scope(&envs).map_err(|e| anyhow!("--envs: {e}"))?;
        let token = new_token();
        let line = token_line(&name, role, &scope, &token);
        // The whole file must still parse with the new line: a duplicate name is refused.
        let existing = match &file {
            Some(path) if path.exists() => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
            _ => String::new(),
        };
        Tokens::parse(&format!("{existing}\n{line}\n")).map_err(|e| anyhow!("{e}"))?;
        match file {
            Some(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let sep = if existing.is_empty() || existing.ends_with('\n') {
                    ""
                } else {
                    "\n"
                };
                writeln!(f, "{sep}{line}")
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None => eprintln!("add this line to the controller's token file:\n{line}"),
        }
        println!("{token}");
        Ok(())
    }
}
