//! Least privilege for ferry's components: the etcd roles and users each one runs as, and
//! `bootstrap`, which creates them (idempotently) and turns authentication on through etcd's
//! own Auth API, so it works the same on the embedded store and on a real etcd.
//!
//! | user | may read | may write |
//! |---|---|---|
//! | `controller-<name>` | everything under the root prefix | configurations, their status keys, its registry key, the election |
//! | `agent-<env>-<name>` | `<env>`'s configurations, its own wave targets, the services prefix | `<env>`'s status keys, its own registry key |
//! | `announcer-<service>-<name>` | its service's prefix | its service's prefix |
//!
//! etcd permissions are key ranges; an agent's status keys
//! (`<root>/ingress_config_status/<env>/<uuid>/<agent>`) share no range that excludes the
//! other agents of its environment, so agents may write any status key of their own
//! environment (never another environment's, never a configuration).

use etcd_client::{Client, Permission};

use crate::keys::{validate_env, validate_name, KeyError, Keys};

/// The users a deployment runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principals {
    /// Controller names.
    pub controllers: Vec<String>,
    /// Agents: (environment, name).
    pub agents: Vec<(String, String)>,
    /// Service announcers: (service, name).
    pub announcers: Vec<(String, String)>,
}

/// One role and its permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSpec {
    /// The role's name.
    pub name: String,
    /// Read-only prefixes.
    pub read_prefixes: Vec<String>,
    /// Read-only single keys.
    pub read_keys: Vec<String>,
    /// Read-write prefixes.
    pub write_prefixes: Vec<String>,
    /// Read-write single keys.
    pub write_keys: Vec<String>,
}

/// One user and its roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// The user's name.
    pub name: String,
    /// Its roles.
    pub roles: Vec<String>,
}

/// What `bootstrap` creates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// The roles.
    pub roles: Vec<RoleSpec>,
    /// The users.
    pub users: Vec<UserSpec>,
}

/// The user name of a controller.
pub fn controller_user(name: &str) -> String {
    format!("controller-{name}")
}

/// The user name of an agent.
pub fn agent_user(env: &str, name: &str) -> String {
    format!("agent-{env}-{name}")
}

/// The user name of a service announcer.
pub fn announcer_user(service: &str, name: &str) -> String {
    format!("announcer-{service}-{name}")
}

fn prefix(path: &str) -> String {
    format!("{}/", path.trim_end_matches('/'))
}

/// The roles and users of `principals` for ferry's keys under `keys` and the registry under
/// `services_prefix`. Names are checked as the key layout checks them.
pub fn layout(
    keys: &Keys,
    services_prefix: &str,
    principals: &Principals,
) -> Result<Layout, KeyError> {
    let mut layout = Layout::default();
    let services = prefix(services_prefix);
    if !principals.controllers.is_empty() {
        layout.roles.push(RoleSpec {
            name: "ferry-controller".into(),
            read_prefixes: vec![prefix(keys.root())],
            // Its readiness probe: a linearizable read of the root key itself.
            read_keys: vec![keys.root().to_string()],
            write_prefixes: vec![
                keys.all_configs(),
                prefix(&format!("{}/ingress_config_status", keys.root())),
                prefix(&keys.controller_registry()),
                prefix(&format!("{}/election", keys.root())),
            ],
            write_keys: Vec::new(),
        });
    }
    for name in &principals.controllers {
        validate_name("controller name", name)?;
        layout.users.push(UserSpec {
            name: controller_user(name),
            roles: vec!["ferry-controller".into()],
        });
    }
    let mut envs: Vec<&str> = principals.agents.iter().map(|(e, _)| e.as_str()).collect();
    envs.sort_unstable();
    envs.dedup();
    for env in envs {
        validate_env(env)?;
        layout.roles.push(RoleSpec {
            name: format!("ferry-agent-{env}"),
            read_prefixes: vec![keys.configs(env), services.clone()],
            read_keys: Vec::new(),
            write_prefixes: vec![prefix(&format!(
                "{}/ingress_config_status/{env}",
                keys.root()
            ))],
            write_keys: Vec::new(),
        });
    }
    for (env, name) in &principals.agents {
        validate_name("agent name", name)?;
        let own = format!("ferry-agent-{env}-{name}");
        layout.roles.push(RoleSpec {
            name: own.clone(),
            // Its own wave targets only: no agent reads what a rollout gave another.
            read_prefixes: vec![keys.wave_targets(env, name)],
            read_keys: Vec::new(),
            write_prefixes: Vec::new(),
            write_keys: vec![keys.agent(env, name)],
        });
        layout.users.push(UserSpec {
            name: agent_user(env, name),
            roles: vec![format!("ferry-agent-{env}"), own],
        });
    }
    for (service, name) in &principals.announcers {
        validate_name("service name", service)?;
        validate_name("announcer name", name)?;
        let role = format!("ferry-announcer-{service}");
        if !layout.roles.iter().any(|r| r.name == role) {
            layout.roles.push(RoleSpec {
                name: role.clone(),
                read_prefixes: Vec::new(),
                read_keys: Vec::new(),
                write_prefixes: vec![format!("{services}{service}/")],
                write_keys: Vec::new(),
            });
        }
        layout.users.push(UserSpec {
            name: announcer_user(service, name),
            roles: vec![role],
        });
    }
    Ok(layout)
}

/// Why bootstrapping failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The store refused a step (the message is etcd's).
    #[error("{step}: {source}")]
    Store {
        /// What was being done.
        step: String,
        /// The store's error.
        #[source]
        source: etcd_client::Error,
    },
}

fn step(step: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> BootstrapError {
    let step = step.into();
    move |source| BootstrapError::Store { step, source }
}

/// Whether an error says the user or role already exists (bootstrap runs again).
fn exists(e: &etcd_client::Error) -> bool {
    e.to_string().contains("already exists")
}

/// Creates `layout`'s roles and users (with the given passwords) and a root user with
/// `root_password`, then enables authentication. Run against a store without
/// authentication, or again with root's credentials: existing users keep their passwords,
/// roles get the layout's permissions.
pub async fn bootstrap(
    client: &mut Client,
    layout: &Layout,
    root_password: &str,
    password_of: impl Fn(&str) -> String,
) -> Result<(), BootstrapError> {
    match client.user_add("root", root_password, None).await {
        Err(e) if !exists(&e) => return Err(step("adding user root")(e)),
        _ => {}
    }
    client
        .user_grant_role("root", "root")
        .await
        .map_err(step("granting root the root role"))?;
    for role in &layout.roles {
        match client.role_add(role.name.as_str()).await {
            Err(e) if !exists(&e) => return Err(step(format!("adding role {}", role.name))(e)),
            _ => {}
        }
        let grants = role
            .read_prefixes
            .iter()
            .map(|p| Permission::read(p.as_str()).with_prefix())
            .chain(role.read_keys.iter().map(|k| Permission::read(k.as_str())))
            .chain(
                role.write_prefixes
                    .iter()
                    .map(|p| Permission::read_write(p.as_str()).with_prefix()),
            )
            .chain(
                role.write_keys
                    .iter()
                    .map(|k| Permission::read_write(k.as_str())),
            );
        for permission in grants {
            client
                .role_grant_permission(role.name.as_str(), permission)
                .await
                .map_err(step(format!("granting {} its permissions", role.name)))?;
        }
    }
    for user in &layout.users {
        match client
            .user_add(user.name.as_str(), password_of(&user.name), None)
            .await
        {
            Err(e) if !exists(&e) => return Err(step(format!("adding user {}", user.name))(e)),
            _ => {}
        }
        for role in &user.roles {
            client
                .user_grant_role(user.name.as_str(), role.as_str())
                .await
                .map_err(step(format!("granting {} role {role}", user.name)))?;
        }
    }
    client
        .auth_enable()
        .await
        .map_err(step("enabling authentication"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_component_gets_only_its_keys() {
        let principals = Principals {
            controllers: vec!["c1".into()],
            agents: vec![
                ("staging".into(), "a1".into()),
                ("staging".into(), "a2".into()),
                ("production".into(), "p1".into()),
            ],
            announcers: vec![("web".into(), "w1".into())],
        };
        let layout = layout(&Keys::default(), "/services", &principals).expect("valid names");
        let role = |name: &str| {
            layout
                .roles
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("no role {name}"))
        };
        assert_eq!(
            role("ferry-agent-staging").read_prefixes,
            ["/ingress/ingress_config/staging/", "/services/"]
        );
        assert_eq!(
            role("ferry-agent-staging").write_prefixes,
            ["/ingress/ingress_config_status/staging/"]
        );
        assert_eq!(
            role("ferry-agent-staging-a1").write_keys,
            ["/ingress/agent/staging/a1"]
        );
        assert_eq!(
            role("ferry-announcer-web").write_prefixes,
            ["/services/web/"]
        );
        let users: Vec<&str> = layout.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            users,
            [
                "controller-c1",
                "agent-staging-a1",
                "agent-staging-a2",
                "agent-production-p1",
                "announcer-web-w1"
            ]
        );
        let bad = Principals {
            agents: vec![("stag/ing".into(), "a1".into())],
            ..Principals::default()
        };
        assert!(super::layout(&Keys::default(), "/services", &bad).is_err());
    }
}
