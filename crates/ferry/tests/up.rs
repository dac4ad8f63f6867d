//! `ferry up`, the README's main command: everything starts, both environments' rollouts
//! complete, and everything stops cleanly.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_up_rolls_out_to_every_agent_and_stops_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stdout = common::ferry_up(|up| {
        up.arg("--dir").arg(dir.path());
    })?;
    assert!(stdout.contains("admin token:"), "{stdout}");
    assert!(
        stdout.contains("rollout complete in every environment"),
        "{stdout}"
    );
    for env in ["staging", "production"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(env) && l.trim_end().ends_with("true")),
            "{env} not complete:\n{stdout}"
        );
        let conf = dir
            .path()
            .join(format!("agents/{env}-agent-1/conf/nginx.conf"));
        let text = std::fs::read_to_string(&conf)?;
        assert!(
            text.contains(&format!("server_name \"shop.{env}.example\";")),
            "{text}"
        );
    }
    // The demo ran with authentication on and a least-privilege user per component: its
    // store, opened again, refuses anonymous requests and keeps staging's agents out of
    // production.
    assert!(stdout.contains("authentication on"), "{stdout}");
    let store =
        ferry_testkit::Server::ferry_on(common::ferry_bin(), &dir.path().join("store"), &[])
            .await?;
    let mut anonymous = store.client().await?;
    common::assert_etcd_error(
        anonymous.get("/ingress", None).await,
        tonic::Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    let credentials = dir.path().join("credentials");
    let sign_in = |user: &str| -> anyhow::Result<etcd_client::ConnectOptions> {
        let password = std::fs::read_to_string(credentials.join(user))?;
        Ok(etcd_client::ConnectOptions::new().with_user(user, password))
    };
    let mut agent = etcd_client::Client::connect(
        [store.endpoint()],
        Some(sign_in("agent-staging-staging-agent-1")?),
    )
    .await?;
    let opts = || Some(etcd_client::GetOptions::new().with_prefix());
    let staging = agent
        .get("/ingress/ingress_config/staging/", opts())
        .await?;
    assert_eq!(staging.kvs().len(), 1);
    common::assert_etcd_error(
        agent
            .get("/ingress/ingress_config/production/", opts())
            .await,
        tonic::Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    let mut root = etcd_client::Client::connect([store.endpoint()], Some(sign_in("root")?)).await?;
    assert_eq!(
        root.get("/ingress/ingress_config/", opts())
            .await?
            .kvs()
            .len(),
        2
    );
    // nginx was stopped with the agents.
    let pid_file = dir.path().join("agents/staging-agent-1/nginx.pid");
    assert!(
        !pid_file.exists(),
        "nginx still running (pid file {} left)",
        pid_file.display()
    );
    Ok(())
}

/// Without `--dir`, everything `ferry up` makes goes in a temporary directory it removes on
/// exit (its own and the controller's pre-flight work directory alike): a demo run leaves
/// nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_up_without_a_directory_leaves_nothing_behind() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    common::ferry_up(|up| {
        up.env("TMPDIR", tmp.path());
    })?;
    let left: Vec<_> = std::fs::read_dir(tmp.path())?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    Ok(())
}
