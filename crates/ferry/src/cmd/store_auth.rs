//! `ferry store auth-bootstrap`: least-privilege users for ferry's components (on the
//! embedded store or a real etcd), then authentication on.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Args;
use ferry_client::ConnectionArgs;
use ferry_controller::keys::Keys;
use ferry_controller::roles::{self, Principals};

/// Arguments of `ferry store auth-bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Root prefix of ferry's keys.
    #[arg(long, default_value = ferry_controller::keys::DEFAULT_ROOT)]
    prefix: String,
    /// Registry prefix of the services.
    #[arg(long, default_value = ferry_registry::DEFAULT_PREFIX)]
    services_prefix: String,
    /// A controller's name (repeatable): user `controller-<name>`.
    #[arg(long = "controller")]
    controllers: Vec<String>,
    /// An agent as `ENV/NAME` (repeatable): user `agent-<env>-<name>`.
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// A service announcer as `SERVICE/NAME` (repeatable): user `announcer-<service>-<name>`.
    #[arg(long = "announcer")]
    announcers: Vec<String>,
    /// Where each user's password is kept, one file per user (`root` included), mode 0600;
    /// a file already there is the user's password (run again to add users).
    #[arg(long)]
    credentials_dir: PathBuf,
}

fn pair(flag: &str, value: &str) -> anyhow::Result<(String, String)> {
    value
        .split_once('/')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| anyhow!("{flag} {value:?}: expected two names separated by '/'"))
}

/// The password kept for `user` in `dir`, made (random) and written on first use.
fn password(dir: &Path, user: &str) -> anyhow::Result<String> {
    let file = dir.join(user);
    if let Ok(existing) = std::fs::read_to_string(&file) {
        let existing = existing.trim().to_string();
        if !existing.is_empty() {
            return Ok(existing);
        }
    }
    let fresh: String = (0..32)
        .map(|_| format!("{:x}", rand::random::<u8>() & 0xf))
        .collect();
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| format!("writing {}", file.display()))?;
    std::io::Write::write_all(&mut out, fresh.as_bytes())
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(fresh)
}

/// Creates `layout` (and root) with the passwords kept in `dir` and enables
/// authentication; returns every user's password, root's included.
pub(crate) async fn bootstrap_into(
    client: &mut etcd_client::Client,
    layout: &roles::Layout,
    dir: &Path,
) -> anyhow::Result<BTreeMap<String, String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut passwords = BTreeMap::new();
    passwords.insert("root".to_string(), password(dir, "root")?);
    for user in &layout.users {
        passwords.insert(user.name.clone(), password(dir, &user.name)?);
    }
    let root_password = passwords.get("root").cloned().unwrap_or_default();
    roles::bootstrap(client, layout, &root_password, |user| {
        passwords.get(user).cloned().unwrap_or_default()
    })
    .await?;
    Ok(passwords)
}

impl BootstrapArgs {
    /// Creates the roles and users, writes the passwords, enables authentication.
    pub async fn run(self) -> anyhow::Result<()> {
        let keys = Keys::parse(&self.prefix).map_err(|e| anyhow!("--prefix: {e}"))?;
        let principals = Principals {
            controllers: self.controllers.clone(),
            agents: self
                .agents
                .iter()
                .map(|a| pair("--agent", a))
                .collect::<Result<_, _>>()?,
            announcers: self
                .announcers
                .iter()
                .map(|a| pair("--announcer", a))
                .collect::<Result<_, _>>()?,
        };
        let layout =
            roles::layout(&keys, &self.services_prefix, &principals).map_err(|e| anyhow!("{e}"))?;
        std::fs::create_dir_all(&self.credentials_dir)
            .with_context(|| format!("creating {}", self.credentials_dir.display()))?;
        let root_password = password(&self.credentials_dir, "root")?;
        let mut client = self.connection.connect().await?;
        // A second run finds authentication on: it signs in as root.
        let auth_on = matches!(client.user_list().await,
            Err(e) if e.to_string().contains("user name is empty"));
        if auth_on && self.connection.user.is_none() {
            let mut as_root = self.connection.clone();
            as_root.user = Some(format!("root:{root_password}"));
            client = as_root.connect().await.with_context(|| {
                format!(
                    "authentication is on: signing in as root with the password in {}",
                    self.credentials_dir.join("root").display()
                )
            })?;
        }
        bootstrap_into(&mut client, &layout, &self.credentials_dir).await?;
        println!(
            "authentication enabled; passwords in {} (root: {}/root)",
            self.credentials_dir.display(),
            self.credentials_dir.display()
        );
        for role in &layout.roles {
            println!("role {}", role.name);
        }
        for user in &layout.users {
            println!("user {} ({})", user.name, user.roles.join(", "));
        }
        Ok(())
    }
}
