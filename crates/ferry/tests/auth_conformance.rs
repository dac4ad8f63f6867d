//! Authentication and RBAC through the `etcd-client` crate, against `ferry store` and real
//! etcd 3.4: the same assertions on both (error codes and messages included).

mod common;

use std::time::Duration;

use common::{assert_etcd_error, Server};
use etcd_client::{
    Client, ConnectOptions, GetOptions, Permission, PutOptions, RoleRevokePermissionOptions, Txn,
    TxnOp, WatchOptions,
};
use tonic::Code;

against_both!(mut &["--bcrypt-cost", "4"];
    enabling_needs_a_root_user_and_then_every_request_needs_a_user,
    a_user_reads_and_writes_only_what_its_roles_grant,
    watches_and_leases_are_checked_too,
    management_errors_are_etcds,
    a_new_password_or_a_deleted_user_signs_the_user_out,
    users_and_roles_survive_a_restart,
    each_component_user_reaches_only_its_own_keys,
);

async fn as_user(server: &Server, user: &str, password: &str) -> anyhow::Result<Client> {
    Ok(Client::connect(
        [server.endpoint()],
        Some(
            ConnectOptions::new()
                .with_user(user, password)
                .with_timeout(Duration::from_secs(5)),
        ),
    )
    .await?)
}

/// Adds `root` (password `rootpw`) with the root role and enables authentication; returns
/// root's client.
async fn enable(server: &Server) -> anyhow::Result<Client> {
    let mut c = server.client().await?;
    c.user_add("root", "rootpw", None).await?;
    c.user_grant_role("root", "root").await?;
    c.auth_enable().await?;
    as_user(server, "root", "rootpw").await
}

/// An agent of `staging`: reads its environment's configurations, writes its own status.
async fn add_agent(root: &mut Client) -> anyhow::Result<()> {
    root.role_add("staging-agent").await?;
    root.role_grant_permission(
        "staging-agent",
        Permission::read("/config/staging/").with_prefix(),
    )
    .await?;
    root.role_grant_permission("staging-agent", Permission::read_write("/status/agent-1"))
        .await?;
    root.user_add("agent-1", "agentpw", None).await?;
    root.user_grant_role("agent-1", "staging-agent").await?;
    Ok(())
}

async fn enabling_needs_a_root_user_and_then_every_request_needs_a_user(
    server: &mut Server,
) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    assert_etcd_error(
        c.auth_enable().await,
        Code::FailedPrecondition,
        "etcdserver: root user does not exist",
    );
    c.user_add("root", "rootpw", None).await?;
    assert_etcd_error(
        c.auth_enable().await,
        Code::FailedPrecondition,
        "etcdserver: root user does not have root role",
    );
    assert_etcd_error(
        c.auth_client()
            .authenticate("root".to_string(), "rootpw".to_string())
            .await,
        Code::FailedPrecondition,
        "etcdserver: authentication is not enabled",
    );
    c.user_grant_role("root", "root").await?;
    c.auth_enable().await?;
    assert_etcd_error(
        c.put("k", "v", None).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    assert_etcd_error(
        c.get("k", None).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    assert_etcd_error(
        c.user_list().await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    let wrong = Client::connect(
        [server.endpoint()],
        Some(ConnectOptions::new().with_user("root", "wrong")),
    )
    .await
    .map(|_| "connected");
    assert_etcd_error(
        wrong,
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    let mut root = as_user(server, "root", "rootpw").await?;
    root.put("k", "v", None).await?;
    assert_eq!(root.get("k", None).await?.kvs()[0].value(), b"v");
    root.auth_disable().await?;
    c.put("k", "anyone", None).await?;
    Ok(())
}

async fn a_user_reads_and_writes_only_what_its_roles_grant(
    server: &mut Server,
) -> anyhow::Result<()> {
    let mut root = enable(server).await?;
    add_agent(&mut root).await?;
    root.put("/config/staging/web", "s", None).await?;
    root.put("/config/production/web", "p", None).await?;
    let mut agent = as_user(server, "agent-1", "agentpw").await?;
    let denied = "etcdserver: permission denied";
    assert_eq!(
        agent.get("/config/staging/web", None).await?.kvs()[0].value(),
        b"s"
    );
    let staging = agent
        .get("/config/staging/", Some(GetOptions::new().with_prefix()))
        .await?;
    assert_eq!(staging.kvs().len(), 1);
    assert_etcd_error(
        agent.get("/config/production/web", None).await,
        Code::PermissionDenied,
        denied,
    );
    assert_etcd_error(
        agent
            .get("/config/", Some(GetOptions::new().with_prefix()))
            .await,
        Code::PermissionDenied,
        denied,
    );
    assert_etcd_error(
        agent.put("/config/staging/web", "x", None).await,
        Code::PermissionDenied,
        denied,
    );
    agent.put("/status/agent-1", "applied 3", None).await?;
    assert_etcd_error(
        agent.put("/status/agent-2", "forged", None).await,
        Code::PermissionDenied,
        denied,
    );
    assert_etcd_error(
        agent.delete("/config/staging/web", None).await,
        Code::PermissionDenied,
        denied,
    );
    // A transaction is refused when any branch touches a denied key, whichever runs.
    let txn = Txn::new()
        .when([etcd_client::Compare::value(
            "/config/staging/web",
            etcd_client::CompareOp::Equal,
            "s",
        )])
        .and_then([TxnOp::put("/status/agent-1", "ok", None)])
        .or_else([TxnOp::put("/config/production/web", "hijack", None)]);
    assert_etcd_error(agent.txn(txn).await, Code::PermissionDenied, denied);
    let txn = Txn::new()
        .when([etcd_client::Compare::value(
            "/config/production/web",
            etcd_client::CompareOp::Equal,
            "p",
        )])
        .and_then([TxnOp::put("/status/agent-1", "ok", None)]);
    assert_etcd_error(agent.txn(txn).await, Code::PermissionDenied, denied);
    let txn = Txn::new()
        .when([etcd_client::Compare::value(
            "/config/staging/web",
            etcd_client::CompareOp::Equal,
            "s",
        )])
        .and_then([TxnOp::put("/status/agent-1", "ok", None)]);
    assert!(agent.txn(txn).await?.succeeded());
    assert_eq!(
        root.get("/config/production/web", None).await?.kvs()[0].value(),
        b"p",
        "nothing refused was written"
    );
    // A user reads itself and its roles, nothing else.
    assert_eq!(agent.user_get("agent-1").await?.roles(), ["staging-agent"]);
    assert_etcd_error(agent.user_get("root").await, Code::PermissionDenied, denied);
    assert_eq!(
        agent.role_get("staging-agent").await?.permissions().len(),
        2
    );
    assert_etcd_error(agent.user_list().await, Code::PermissionDenied, denied);
    assert_etcd_error(agent.role_add("mine").await, Code::PermissionDenied, denied);
    // Lock and Election act with the caller's permissions.
    let lease = agent.lease_grant(30, None).await?.id();
    let refused = agent
        .lock(
            "/config/production/lock",
            Some(etcd_client::LockOptions::new().with_lease(lease)),
        )
        .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("permission denied")),
        "{refused:?}"
    );
    Ok(())
}

async fn watches_and_leases_are_checked_too(server: &mut Server) -> anyhow::Result<()> {
    let mut root = enable(server).await?;
    add_agent(&mut root).await?;
    let mut agent = as_user(server, "agent-1", "agentpw").await?;
    let mut refused = agent
        .watch(
            "/config/production/",
            Some(WatchOptions::new().with_prefix()),
        )
        .await?;
    let first = tokio::time::timeout(Duration::from_secs(10), refused.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("the watch stream ended"))?;
    assert!(first.canceled(), "{first:?}");
    assert_eq!(
        first.cancel_reason(),
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    );
    let mut allowed = agent
        .watch("/config/staging/", Some(WatchOptions::new().with_prefix()))
        .await?;
    let created = tokio::time::timeout(Duration::from_secs(10), allowed.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("the watch stream ended"))?;
    assert!(created.created() && !created.canceled());
    root.put("/config/staging/web", "v2", None).await?;
    let event = tokio::time::timeout(Duration::from_secs(10), allowed.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("the watch stream ended"))?;
    assert_eq!(
        event.events()[0].kv().map(|kv| kv.value()),
        Some(&b"v2"[..])
    );
    // A lease the agent holds its status key with; revoking a lease that holds a key the
    // agent may not write is refused.
    let lease = agent.lease_grant(30, None).await?.id();
    agent
        .put(
            "/status/agent-1",
            "up",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    let foreign = root.lease_grant(30, None).await?.id();
    root.put(
        "/config/staging/web",
        "v3",
        Some(PutOptions::new().with_lease(foreign)),
    )
    .await?;
    assert_etcd_error(
        agent.lease_revoke(foreign).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    agent.lease_revoke(lease).await?;
    assert_eq!(root.get("/status/agent-1", None).await?.count(), 0);
    assert_eq!(root.get("/config/staging/web", None).await?.count(), 1);
    Ok(())
}

async fn management_errors_are_etcds(server: &mut Server) -> anyhow::Result<()> {
    let mut root = enable(server).await?;
    add_agent(&mut root).await?;
    let pre = Code::FailedPrecondition;
    let arg = Code::InvalidArgument;
    assert_etcd_error(
        root.user_add("agent-1", "x", None).await,
        pre,
        "etcdserver: user name already exists",
    );
    assert_etcd_error(
        root.user_add("", "x", None).await,
        arg,
        "etcdserver: user name is empty",
    );
    assert_etcd_error(
        root.user_get("ghost").await,
        pre,
        "etcdserver: user name not found",
    );
    assert_etcd_error(
        root.user_delete("ghost").await,
        pre,
        "etcdserver: user name not found",
    );
    assert_etcd_error(
        root.role_add("staging-agent").await,
        pre,
        "etcdserver: role name already exists",
    );
    assert_etcd_error(
        root.role_add("").await,
        arg,
        "etcdserver: role name is empty",
    );
    assert_etcd_error(
        root.role_get("ghost").await,
        pre,
        "etcdserver: role name not found",
    );
    assert_etcd_error(
        root.user_grant_role("agent-1", "ghost").await,
        pre,
        "etcdserver: role name not found",
    );
    assert_etcd_error(
        root.user_revoke_role("agent-1", "root").await,
        pre,
        "etcdserver: role is not granted to the user",
    );
    assert_etcd_error(
        root.role_revoke_permission(
            "staging-agent",
            "/nothing",
            Some(RoleRevokePermissionOptions::new()),
        )
        .await,
        pre,
        "etcdserver: permission is not granted to the role",
    );
    assert_etcd_error(
        root.user_delete("root").await,
        arg,
        "etcdserver: invalid auth management",
    );
    assert_etcd_error(
        root.role_delete("root").await,
        arg,
        "etcdserver: invalid auth management",
    );
    // Lists are sorted; a role's permissions are sorted by key.
    root.user_add("aaron", "pw", None).await?;
    assert_eq!(
        root.user_list().await?.users(),
        ["aaron", "agent-1", "root"]
    );
    assert_eq!(root.role_list().await?.roles(), ["staging-agent"]);
    let perms = root.role_get("staging-agent").await?;
    let permissions = perms.permissions();
    let keys: Vec<&[u8]> = permissions.iter().map(|p| p.key()).collect();
    assert_eq!(keys, [&b"/config/staging/"[..], b"/status/agent-1"]);
    // Deleting a role takes it from its users.
    root.role_delete("staging-agent").await?;
    assert!(root.user_get("agent-1").await?.roles().is_empty());
    Ok(())
}

async fn a_new_password_or_a_deleted_user_signs_the_user_out(
    server: &mut Server,
) -> anyhow::Result<()> {
    let mut root = enable(server).await?;
    add_agent(&mut root).await?;
    let mut agent = as_user(server, "agent-1", "agentpw").await?;
    agent.put("/status/agent-1", "1", None).await?;
    root.user_change_password("agent-1", "newpw").await?;
    // The old token is gone.
    assert_etcd_error(
        agent.put("/status/agent-1", "2", None).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    assert_etcd_error(
        Client::connect(
            [server.endpoint()],
            Some(ConnectOptions::new().with_user("agent-1", "agentpw")),
        )
        .await
        .map(|_| "connected"),
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    let mut renewed = as_user(server, "agent-1", "newpw").await?;
    renewed.put("/status/agent-1", "3", None).await?;
    root.user_delete("agent-1").await?;
    assert_etcd_error(
        renewed.put("/status/agent-1", "4", None).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    Ok(())
}

async fn users_and_roles_survive_a_restart(server: &mut Server) -> anyhow::Result<()> {
    let mut root = enable(server).await?;
    add_agent(&mut root).await?;
    drop(root);
    server.restart().await?;
    let mut agent = as_user(server, "agent-1", "agentpw").await?;
    agent.put("/status/agent-1", "after restart", None).await?;
    assert_etcd_error(
        agent.put("/status/agent-2", "x", None).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    let mut anonymous = server.client().await?;
    assert_etcd_error(
        anonymous.get("/status/agent-1", None).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    Ok(())
}

/// `ferry store auth-bootstrap`, then each component's user tried on what it must and must
/// not reach.
async fn each_component_user_reaches_only_its_own_keys(server: &mut Server) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let credentials = dir.path().join("credentials");
    let bootstrap = |extra: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(std::process::Command::new(common::ferry_bin())
            .args(["store", "auth-bootstrap", "--endpoints", &server.endpoint()])
            .arg("--credentials-dir")
            .arg(&credentials)
            .args([
                "--controller",
                "c1",
                "--agent",
                "staging/a1",
                "--agent",
                "production/p1",
            ])
            .args(["--announcer", "web/w1"])
            .args(extra)
            .output()?)
    };
    let out = bootstrap(&[])?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Run again (authentication is on now) to add an agent: the others keep their passwords.
    let out = bootstrap(&["--agent", "staging/a2"])?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let password = |user: &str| std::fs::read_to_string(credentials.join(user));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(credentials.join("root"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "passwords are private");
    let mut root = as_user(server, "root", &password("root")?).await?;
    root.put("/ingress/ingress_config/staging/u1", "{}", None)
        .await?;
    root.put("/ingress/ingress_config/production/u2", "{}", None)
        .await?;
    let denied = "etcdserver: permission denied";

    let mut agent = as_user(server, "agent-staging-a1", &password("agent-staging-a1")?).await?;
    let own = agent
        .get(
            "/ingress/ingress_config/staging/",
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    assert_eq!(own.kvs().len(), 1);
    agent
        .get("/services/", Some(GetOptions::new().with_prefix()))
        .await?;
    assert_etcd_error(
        agent
            .get(
                "/ingress/ingress_config/production/",
                Some(GetOptions::new().with_prefix()),
            )
            .await,
        Code::PermissionDenied,
        denied,
    );
    agent
        .put("/ingress/ingress_config_status/staging/u1/a1", "{}", None)
        .await?;
    assert_etcd_error(
        agent
            .put(
                "/ingress/ingress_config_status/production/u2/p1",
                "{}",
                None,
            )
            .await,
        Code::PermissionDenied,
        denied,
    );
    agent.put("/ingress/agent/staging/a1", "{}", None).await?;
    assert_etcd_error(
        agent.put("/ingress/agent/staging/a2", "{}", None).await,
        Code::PermissionDenied,
        denied,
    );
    assert_etcd_error(
        agent
            .put("/ingress/ingress_config/staging/u1", "{}", None)
            .await,
        Code::PermissionDenied,
        denied,
    );

    let mut controller = as_user(server, "controller-c1", &password("controller-c1")?).await?;
    controller
        .put("/ingress/ingress_config/production/u3", "{}", None)
        .await?;
    controller
        .get("/ingress/agent/", Some(GetOptions::new().with_prefix()))
        .await?;
    assert_etcd_error(
        controller
            .put("/ingress/agent/staging/a1", "{}", None)
            .await,
        Code::PermissionDenied,
        denied,
    );

    let mut announcer = as_user(server, "announcer-web-w1", &password("announcer-web-w1")?).await?;
    announcer.put("/services/web/w1", "{}", None).await?;
    assert_etcd_error(
        announcer.put("/services/db/d1", "{}", None).await,
        Code::PermissionDenied,
        denied,
    );
    let mut added = as_user(server, "agent-staging-a2", &password("agent-staging-a2")?).await?;
    added.put("/ingress/agent/staging/a2", "{}", None).await?;
    // A controller signed in as an agent stops at start, naming what it may not read.
    let (tokens, _) = ferry_controller::auth::Tokens::generate("admin");
    let refused = ferry_controller::server::start(
        agent.clone(),
        ferry_controller::server::ControllerConfig {
            name: "c1".into(),
            database: format!("sqlite://{}", dir.path().join("c.db").display()),
            listen: "127.0.0.1:0".parse()?,
            root: "/ingress".into(),
            tokens,
            tokens_file: None,
            audit_log: None,
            tls: None,
            reconcile_interval: Duration::from_secs(30),
            preflight: Default::default(),
        },
    )
    .await;
    match refused {
        Ok(_) => anyhow::bail!("a controller started with an agent's user"),
        Err(e) => assert_eq!(
            e.to_string(),
            "the store refuses reading the configurations (/ingress/ingress_config/): etcdserver: permission denied"
        ),
    }
    Ok(())
}

/// With `--client-cert-auth`, a request without a token is the user its client
/// certificate's common name names; a token, when there is one, decides.
async fn certificate_common_names_are_users(kind: common::Kind) -> anyhow::Result<()> {
    let certs = common::certs::Certs::generate()?;
    let cert = certs.server_cert.display().to_string();
    let key = certs.server_key.display().to_string();
    let ca = certs.ca.display().to_string();
    let flags = [
        "--cert-file",
        cert.as_str(),
        "--key-file",
        key.as_str(),
        "--trusted-ca-file",
        ca.as_str(),
        "--client-cert-auth",
        "--bcrypt-cost",
        "4",
    ];
    let server = Server::start_tls(kind, common::ferry_bin(), &flags, certs.client()).await?;
    let mut setup = server.client().await?;
    setup.user_add("root", "rootpw", None).await?;
    setup.user_grant_role("root", "root").await?;
    // The client certificate's common name; it signs in with the certificate only.
    let cn = "ferry test client";
    setup
        .user_add(
            cn,
            "",
            Some(etcd_client::UserAddOptions::new().with_no_pwd()),
        )
        .await?;
    setup.role_add("cn-reader").await?;
    setup
        .role_grant_permission("cn-reader", Permission::read("/cn/").with_prefix())
        .await?;
    setup.user_grant_role(cn, "cn-reader").await?;
    setup.put("/cn/a", "1", None).await?;
    setup.auth_enable().await?;
    let mut by_certificate = server.client().await?;
    assert_eq!(
        by_certificate.get("/cn/a", None).await?.kvs()[0].value(),
        b"1"
    );
    assert_etcd_error(
        by_certificate.put("/cn/a", "2", None).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    assert_etcd_error(
        by_certificate.get("/other", None).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    // A token wins over the certificate.
    let mut config = server.connect_config();
    config.credentials = Some(("root".into(), "rootpw".into()));
    let mut root = ferry_client::connect(&config).await?;
    root.put("/cn/a", "2", None).await?;
    // A certificate user has no password to sign in with.
    let mut with_password = server.connect_config();
    with_password.credentials = Some((cn.into(), String::new()));
    assert!(ferry_client::connect(&with_password).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_ferry_certificate_common_names_are_users() -> anyhow::Result<()> {
    certificate_common_names_are_users(common::Kind::Ferry).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_certificate_common_names_are_users() -> anyhow::Result<()> {
    certificate_common_names_are_users(common::Kind::Etcd).await
}

/// Users, roles and the enabled flag travel in a snapshot: a store restored from one asks for
/// the same users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_roles_travel_in_a_snapshot() -> anyhow::Result<()> {
    let server = common::start(common::Kind::Ferry, &["--bcrypt-cost", "4"]).await?;
    let mut root = enable(&server).await?;
    add_agent(&mut root).await?;
    let dir = tempfile::tempdir()?;
    let snapshot = dir.path().join("snap.db");
    let mut stream = root.snapshot().await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(chunk.blob());
    }
    std::fs::write(&snapshot, bytes)?;
    let restored_dir = dir.path().join("restored");
    let out = std::process::Command::new(common::ferry_bin())
        .args(["store", "restore", "--snapshot"])
        .arg(&snapshot)
        .arg("--data-dir")
        .arg(&restored_dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = ferry_testkit::Server::ferry_on(common::ferry_bin(), &restored_dir, &[]).await?;
    let mut anonymous = restored.client().await?;
    assert_etcd_error(
        anonymous.put("/status/agent-1", "x", None).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    let mut agent = as_user(&restored, "agent-1", "agentpw").await?;
    agent.put("/status/agent-1", "restored", None).await?;
    assert_etcd_error(
        agent.get("/config/production/web", None).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    Ok(())
}
