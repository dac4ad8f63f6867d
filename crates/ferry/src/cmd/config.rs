//! `ferry config`: the controller's API from the command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand, ValueEnum};
use ferry_controller::api::Rollout;

use ferry_client::tls::ClientTlsFiles;
use ferry_controller::http_client::ApiClient;

/// How long one API call may take: a controller answers in milliseconds, so anything longer
/// is a wrong address (a port that accepts and never answers).
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// Ids are the controller's UUIDs; anything else would change the request path.
fn check_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(anyhow!(
            "configuration id {id:?}: ids use letters, digits and - (a UUID)"
        ));
    }
    Ok(())
}

/// One API call; the status and the body.
async fn request_with(
    api: &ApiClient,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, String)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let call = api.request(method, path, Some(token), headers, body);
    let reply = tokio::time::timeout(API_TIMEOUT, call)
        .await
        .map_err(|_| {
            anyhow!(
                "the controller API at {} did not answer within {API_TIMEOUT:?}",
                api.addr()
            )
        })?
        .map_err(|e| anyhow!("cannot reach the controller API at {}: {e}", api.addr()))?;
    if reply.status == 0 {
        return Err(anyhow!(
            "{} gave no HTTP answer: is it the ferry controller's API (--api, FERRY_API)?",
            api.addr()
        ));
    }
    Ok((reply.status, reply.body))
}

/// One call to the controller API with a bearer token: status and body.
pub(crate) async fn request(
    api: &ApiClient,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    request_with(api, method, path, token, &[], body).await
}

/// Arguments of `ferry config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: ConfigAction,
    /// The controller API.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        env = "FERRY_API",
        global = true
    )]
    api: String,
    /// Bearer token.
    #[arg(long, env = "FERRY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// CA that signed the API's certificate (for an https:// --api).
    #[arg(long, env = "FERRY_API_CACERT", global = true)]
    api_cacert: Option<PathBuf>,
    /// Client certificate for an API that requires mutual TLS.
    #[arg(long, env = "FERRY_API_CERT", global = true)]
    api_cert: Option<PathBuf>,
    /// Key of --api-cert.
    #[arg(long, env = "FERRY_API_KEY", global = true)]
    api_key: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    output: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Create a configuration from a JSON file, or replace one (--id).
    Apply {
        /// The document (JSON).
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Environment.
        #[arg(long)]
        env: String,
        /// Replace this configuration instead of creating one.
        #[arg(long)]
        id: Option<String>,
    },
    /// Show one configuration.
    Get {
        /// Configuration id.
        id: String,
        /// Environment.
        #[arg(long)]
        env: String,
    },
    /// List an environment's configurations.
    List {
        /// Environment.
        #[arg(long)]
        env: String,
    },
    /// Delete a configuration.
    Delete {
        /// Configuration id.
        id: String,
        /// Environment.
        #[arg(long)]
        env: String,
    },
    /// Every version of a configuration.
    History {
        /// Configuration id.
        id: String,
        /// Environment.
        #[arg(long)]
        env: String,
    },
    /// Make an earlier version current again.
    Rollback {
        /// Configuration id.
        id: String,
        /// Environment.
        #[arg(long)]
        env: String,
        /// The version to restore.
        #[arg(long)]
        version: i64,
    },
    /// Rollout status: every live agent and what it applied.
    Status {
        /// Configuration id.
        id: String,
        /// Environment.
        #[arg(long)]
        env: String,
        /// Keep watching until interrupted.
        #[arg(long)]
        watch: bool,
    },
}

fn check(status: u16, body: &str) -> anyhow::Result<serde_json::Value> {
    let parsed = serde_json::from_str::<serde_json::Value>(body);
    if (200..300).contains(&status) {
        return parsed.map_err(|e| {
            anyhow!("{status}: the answer is not JSON ({e}): is --api the ferry controller's API?")
        });
    }
    let value = parsed.unwrap_or(serde_json::Value::Null);
    let message = value["error"].as_str().unwrap_or(body).to_string();
    match value["field"].as_str() {
        Some(field) => Err(anyhow!("{status}: {field}: {message}")),
        None => Err(anyhow!("{status}: {message}")),
    }
}

fn print_record(value: &serde_json::Value, output: Output) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Table => println!(
            "{}/{} version {} by {} at {}{}",
            value["env"].as_str().unwrap_or_default(),
            value["id"].as_str().unwrap_or_default(),
            value["version"],
            value["changed_by"].as_str().unwrap_or_default(),
            value["changed_at"].as_str().unwrap_or_default(),
            if value["deleted"].as_bool() == Some(true) {
                " (deleted)"
            } else {
                ""
            }
        ),
    }
}

fn print_rollout(r: &Rollout, output: Output) {
    match output {
        Output::Json => println!("{}", serde_json::to_string(r).unwrap_or_default()),
        Output::Table => {
            println!(
                "version {}: {} live, {} applied, {} failed, {} pending, complete: {}",
                r.version,
                r.summary.live,
                r.summary.applied,
                r.summary.failed,
                r.summary.pending,
                r.summary.complete
            );
            if let Some(reason) = &r.publish_pending {
                println!("not published: {reason}");
            }
            if let Some(w) = &r.waves {
                let phase = serde_json::to_value(w.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let per_version: Vec<String> = w
                    .agents_per_version
                    .iter()
                    .map(|(v, n)| format!("{n} on version {v}"))
                    .collect();
                println!(
                    "waves: {phase}, wave {} of {} ({} of {} agents reached), previous version {}; {}",
                    w.wave,
                    w.sizes.len(),
                    w.targeted.len(),
                    w.sizes.last().copied().unwrap_or(0),
                    w.previous_version.map_or("none".to_string(), |v| v.to_string()),
                    per_version.join(", ")
                );
                if let Some(reason) = &w.reason {
                    println!("stopped: {reason}");
                }
            }
            println!(
                "{:<24} {:<16} {:>8}  {:<11} MESSAGE",
                "AGENT", "IP", "APPLIED", "STATE"
            );
            for a in &r.agents {
                println!(
                    "{:<24} {:<16} {:>8}  {:<11} {}",
                    a.agent, a.ip, a.applied_version, a.state, a.message
                );
            }
        }
    }
}

impl ConfigArgs {
    /// Runs the chosen action.
    pub async fn run(self) -> anyhow::Result<()> {
        let token = self
            .token
            .clone()
            .ok_or_else(|| anyhow!("--token (or FERRY_TOKEN) is required"))?;
        let client = ApiClient::new(
            &self.api,
            &ClientTlsFiles {
                ca: self.api_cacert.clone(),
                cert: self.api_cert.clone(),
                key: self.api_key.clone(),
            },
        )?;
        let api = &client;
        let (env, id) = match &self.action {
            ConfigAction::Apply { env, id, .. } => (env, id.as_deref()),
            ConfigAction::List { env } => (env, None),
            ConfigAction::Get { env, id }
            | ConfigAction::Delete { env, id }
            | ConfigAction::History { env, id }
            | ConfigAction::Rollback { env, id, .. }
            | ConfigAction::Status { env, id, .. } => (env, Some(id.as_str())),
        };
        ferry_controller::keys::validate_env(env).map_err(|e| anyhow!("--env: {e}"))?;
        if let Some(id) = id {
            check_id(id)?;
        }
        let base = |env: &str| format!("/api/v1/environments/{env}/configs");
        let version_of = async |env: &str, id: &str| -> anyhow::Result<i64> {
            let path = format!("{}/{id}", base(env));
            let (status, body): (u16, String) = request(api, "GET", &path, &token, "").await?;
            check(status, &body)?["version"]
                .as_i64()
                .ok_or_else(|| anyhow!("no version in the answer"))
        };
        match self.action {
            ConfigAction::Apply { file, env, id } => {
                let body = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let (status, reply) = match id {
                    None => request(api, "POST", &base(&env), &token, &body).await?,
                    Some(id) => {
                        let version = version_of(&env, &id).await?;
                        request_with(
                            api,
                            "PUT",
                            &format!("{}/{id}", base(&env)),
                            &token,
                            &[("If-Match", version.to_string())],
                            &body,
                        )
                        .await?
                    }
                };
                print_record(&check(status, &reply)?, self.output);
            }
            ConfigAction::Get { id, env } => {
                let (status, body) =
                    request(api, "GET", &format!("{}/{id}", base(&env)), &token, "").await?;
                print_record(&check(status, &body)?, self.output);
            }
            ConfigAction::List { env } => {
                let (status, body) = request(api, "GET", &base(&env), &token, "").await?;
                for rec in check(status, &body)?
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    print_record(&rec, self.output);
                }
            }
            ConfigAction::Delete { id, env } => {
                let version = version_of(&env, &id).await?;
                let (status, body) = request_with(
                    api,
                    "DELETE",
                    &format!("{}/{id}", base(&env)),
                    &token,
                    &[("If-Match", version.to_string())],
                    "",
                )
                .await?;
                print_record(&check(status, &body)?, self.output);
            }
            ConfigAction::History { id, env } => {
                let (status, body) = request(
                    api,
                    "GET",
                    &format!("{}/{id}/history", base(&env)),
                    &token,
                    "",
                )
                .await?;
                for rec in check(status, &body)?
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    print_record(&rec, self.output);
                }
            }
            ConfigAction::Rollback { id, env, version } => {
                let current = version_of(&env, &id).await?;
                let path = format!("{}/{id}/rollback?version={version}", base(&env));
                let (status, body) = request_with(
                    api,
                    "POST",
                    &path,
                    &token,
                    &[("If-Match", current.to_string())],
                    "",
                )
                .await?;
                print_record(&check(status, &body)?, self.output);
            }
            ConfigAction::Status { id, env, watch } => loop {
                let (status, body) = request(
                    api,
                    "GET",
                    &format!("{}/{id}/status", base(&env)),
                    &token,
                    "",
                )
                .await?;
                let rollout: Rollout = serde_json::from_value(check(status, &body)?)?;
                print_rollout(&rollout, self.output);
                if !watch {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            },
        }
        Ok(())
    }
}
