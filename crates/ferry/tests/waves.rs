//! Rollouts in waves with real agents and nginx, on both backends: a version reaches one
//! agent, then half, then all, never more than its wave; a failure in the second wave halts
//! it and returns the agents that had applied it to the previous version, and the status
//! names the agent and nginx's reason; a controller killed with SIGKILL in the middle of a
//! wave is restarted and finishes the rollout where it was; agents killed or paused during a
//! rollout leave it when their registration expires, and get the version once back.

mod common;

use std::time::{Duration, Instant};

use common::ingress::{call, config_path, rollout, Agent, Controller};
use common::Server;
use ferry_controller::api::Rollout;
use ferry_controller::waves::WavePhase;

against_both!(&[];
    waves_grow_one_half_all_and_a_failure_rolls_back,
    a_controller_killed_mid_wave_resumes_the_rollout,
    agents_killed_or_paused_mid_rollout_are_not_waited_for_and_catch_up,
    halt_leaves_every_agent_on_what_it_runs,
);

fn document(host: &str, rollout: Option<serde_json::Value>) -> String {
    let mut doc = serde_json::json!({
        "kind": "ingress",
        "virtual_hosts": [{"hostname": host, "paths": [{"path": "/", "backends": ["127.0.0.1:9"]}]}],
    });
    if let Some(rollout) = rollout {
        doc["rollout"] = rollout;
    }
    doc.to_string()
}

/// How many live agents report `version` applied.
fn applied(r: &Rollout, version: i64) -> usize {
    r.agents
        .iter()
        .filter(|a| a.applied_version == version && a.state != "failed")
        .count()
}

/// Follows the rollout until `done`, checking at every look that no more agents run
/// `version` than its current wave covers; returns the wave sizes seen, in order.
async fn follow(
    addr: &str,
    id: &str,
    version: i64,
    limit: Duration,
    done: impl Fn(&Rollout) -> bool,
) -> anyhow::Result<(Vec<usize>, Rollout)> {
    let until = Instant::now() + limit;
    let mut seen: Vec<usize> = Vec::new();
    loop {
        let r = rollout(addr, id).await?;
        if let Some(w) = &r.waves {
            if r.version == version {
                let targeted = w.targeted.len();
                if w.phase != WavePhase::RolledBack {
                    assert!(
                        applied(&r, version) <= targeted,
                        "more agents run version {version} than its wave covers: {r:#?}"
                    );
                }
                if seen.last() != Some(&targeted) {
                    seen.push(targeted);
                }
            }
        }
        if done(&r) {
            return Ok((seen, r));
        }
        anyhow::ensure!(Instant::now() < until, "rollout never got there: {r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replaces version 1 of `id` with `v2.example.com` rolled out by `strategy`, and waits until
/// the first wave has applied it and is baking.
async fn update_until_the_first_wave_bakes(
    addr: &str,
    id: &str,
    strategy: serde_json::Value,
) -> anyhow::Result<()> {
    let (status, body) = call(
        addr,
        "PUT",
        &config_path(id),
        Some(1),
        &document("v2.example.com", Some(strategy)),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    follow(addr, id, 2, Duration::from_secs(30), |r| {
        r.waves
            .as_ref()
            .is_some_and(|w| w.wave == 1 && w.phase == WavePhase::Baking)
    })
    .await?;
    Ok(())
}

async fn waves_grow_one_half_all_and_a_failure_rolls_back(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let controller = Controller::on_sqlite(&server.endpoint(), tmp.path()).await?;
    let addr = controller.addr.clone();
    // a3 refuses any configuration naming "refusedhost" (a check that fails on its host only).
    let agents: Vec<Agent> = (1..=6)
        .map(|i| {
            let refuse = (i == 3).then_some("refusedhost");
            Agent::start(&server.endpoint(), &format!("a{i}"), tmp.path(), refuse)
        })
        .collect::<anyhow::Result<_>>()?;
    common::ingress::wait_agents(&addr, 6).await?;
    let strategy = serde_json::json!({"waves": [1, "50%", "100%"], "bake_seconds": 1});

    let (status, body) = call(
        &addr,
        "POST",
        "/api/v1/environments/prod/configs",
        None,
        &document("shop.example.com", Some(strategy.clone())),
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_string();
    let (seen, r) = follow(&addr, &id, 1, Duration::from_secs(60), |r| {
        r.summary.complete && r.summary.live == 6
    })
    .await?;
    assert_eq!(seen, vec![1, 3, 6], "waves seen: {seen:?}");
    assert_eq!(r.waves.as_ref().map(|w| w.phase), Some(WavePhase::Complete));
    for agent in &agents {
        assert!(
            agent.nginx_conf().contains("shop.example.com"),
            "{}",
            agent.name
        );
    }

    // Version 2 fails on a3, in the second wave: halted, a1 and a2 back on version 1.
    let (status, body) = call(
        &addr,
        "PUT",
        &config_path(&id),
        Some(1),
        &document("refusedhost.example.com", Some(strategy)),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let (seen, r) = follow(&addr, &id, 2, Duration::from_secs(60), |r| {
        r.waves
            .as_ref()
            .is_some_and(|w| w.phase == WavePhase::RolledBack)
            && ["a1", "a2", "a3"].iter().all(|a| {
                r.agents.iter().any(|row| {
                    row.agent == *a && row.state == "rolled_back" && row.applied_version == 1
                })
            })
    })
    .await?;
    assert_eq!(seen, vec![1, 3], "waves seen: {seen:?}");
    let w = r.waves.as_ref().expect("waves");
    assert_eq!(w.failed_agent.as_deref(), Some("a3"), "{r:#?}");
    // The reason is the agent's own report (its check command's failure).
    let reason = w.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("agent a3 failed version 2 in wave 2") && reason.contains("check_cmd"),
        "{reason}"
    );
    for a in &r.agents[3..] {
        assert_eq!(
            (a.state.as_str(), a.applied_version),
            ("waiting", 1),
            "{a:?}"
        );
    }
    assert!(!r.summary.complete);
    for agent in &agents {
        let conf = agent.nginx_conf();
        assert!(
            conf.contains("shop.example.com") && !conf.contains("refusedhost"),
            "{} runs:\n{conf}",
            agent.name
        );
    }
    // The per-agent keys are gone: agents run the environment's version 1.
    let mut c = server.client().await?;
    let keys = ferry_controller::keys::Keys::default();
    let left = c
        .get(
            keys.all_wave_targets(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    assert_eq!(left.kvs().len(), 0);
    // The command line shows it too.
    let out = std::process::Command::new(common::ferry_bin())
        .args(["config", "status", &id, "--env", "prod", "--api", &addr])
        .env("FERRY_TOKEN", common::ingress::ADMIN)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rolled_back") && text.contains("a3"),
        "{text}"
    );
    Ok(())
}

async fn a_controller_killed_mid_wave_resumes_the_rollout(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut controller = Controller::on_sqlite(&server.endpoint(), tmp.path()).await?;
    let addr = controller.addr.clone();
    let agents = common::ingress::agents(&server.endpoint(), tmp.path(), 3)?;
    common::ingress::wait_agents(&addr, 3).await?;
    let strategy = serde_json::json!({"waves": [1, 2, "100%"], "bake_seconds": 3});
    let (status, body) = call(
        &addr,
        "POST",
        "/api/v1/environments/prod/configs",
        None,
        &document("v1.example.com", None),
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_string();
    common::ingress::wait_complete(&addr, &id, 1, 3).await?;
    // The first wave applied it and is baking: kill the controller there.
    update_until_the_first_wave_bakes(&addr, &id, strategy).await?;
    controller.kill9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Nobody moved it on: a2 and a3 still run version 1.
    for agent in &agents[1..] {
        assert!(
            agent.nginx_conf().contains("v1.example.com"),
            "{}",
            agent.name
        );
    }
    controller.restart().await?;
    let (seen, r) = follow(&addr, &id, 2, Duration::from_secs(60), |r| {
        r.summary.complete && r.version == 2
    })
    .await?;
    // It went on from where it was (waves only grow) to every agent.
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&3), "{seen:?}");
    assert_eq!(applied(&r, 2), 3);
    for agent in &agents {
        assert!(
            agent.nginx_conf().contains("v2.example.com"),
            "{}",
            agent.name
        );
    }
    Ok(())
}

/// a2 is killed -9 and a3 paused (SIGSTOP) while wave 1 bakes: the rollout waits for neither
/// once their registrations expire and completes on the agents left; a2 restarted and a3
/// resumed register again and apply the new version.
async fn agents_killed_or_paused_mid_rollout_are_not_waited_for_and_catch_up(
    server: &Server,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let controller = Controller::on_sqlite(&server.endpoint(), tmp.path()).await?;
    let addr = controller.addr.clone();
    let mut agents = common::ingress::agents(&server.endpoint(), tmp.path(), 4)?;
    common::ingress::wait_agents(&addr, 4).await?;
    let id = common::ingress::create(&addr, "v1.example.com").await?;
    common::ingress::wait_complete(&addr, &id, 1, 4).await?;
    let strategy = serde_json::json!({"waves": [1, 2, "100%"], "bake_seconds": 1});
    update_until_the_first_wave_bakes(&addr, &id, strategy).await?;
    agents[1].kill9();
    agents[2].signal("-STOP")?;
    // Registrations live 5 s: after that the rollout goes on without a2 and a3.
    let (_, r) = follow(&addr, &id, 2, Duration::from_secs(60), |r| {
        r.version == 2 && r.summary.complete
    })
    .await?;
    assert_eq!(r.summary.live, 2, "{r:#?}");
    assert_eq!(applied(&r, 2), 2, "{r:#?}");
    for i in [0, 3] {
        assert!(
            agents[i].nginx_conf().contains("v2.example.com"),
            "{}",
            agents[i].name
        );
    }
    agents[1].restart()?;
    agents[2].signal("-CONT")?;
    let r = common::ingress::wait_complete(&addr, &id, 2, 4).await?;
    assert_eq!(applied(&r, 2), 4, "{r:#?}");
    for agent in &agents {
        assert!(
            agent.nginx_conf().contains("v2.example.com"),
            "{}",
            agent.name
        );
    }
    Ok(())
}

/// `on_failure: halt`: the rollout stops where it failed; agents keep what they run.
async fn halt_leaves_every_agent_on_what_it_runs(server: &Server) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let controller = Controller::on_sqlite(&server.endpoint(), tmp.path()).await?;
    let addr = controller.addr.clone();
    let agents: Vec<Agent> = (1..=3)
        .map(|i| {
            let refuse = (i == 2).then_some("haltedhost");
            Agent::start(&server.endpoint(), &format!("a{i}"), tmp.path(), refuse)
        })
        .collect::<anyhow::Result<_>>()?;
    common::ingress::wait_agents(&addr, 3).await?;
    let (status, body) = call(
        &addr,
        "POST",
        "/api/v1/environments/prod/configs",
        None,
        &document("v1.example.com", None),
    )
    .await?;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_string();
    common::ingress::wait_complete(&addr, &id, 1, 3).await?;
    let strategy = serde_json::json!({"waves": [1, 2, 3], "on_failure": "halt"});
    let (status, body) = call(
        &addr,
        "PUT",
        &config_path(&id),
        Some(1),
        &document("haltedhost.example.com", Some(strategy)),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let (_, r) = follow(&addr, &id, 2, Duration::from_secs(30), |r| {
        r.waves
            .as_ref()
            .is_some_and(|w| w.phase == WavePhase::Halted)
    })
    .await?;
    let w = r.waves.as_ref().expect("waves");
    assert_eq!(
        (w.wave, w.failed_agent.as_deref()),
        (2, Some("a2")),
        "{r:#?}"
    );
    let state = |name: &str| {
        r.agents
            .iter()
            .find(|a| a.agent == name)
            .map(|a| (a.state.clone(), a.applied_version))
    };
    assert_eq!(state("a1"), Some(("applied".to_string(), 2)));
    assert_eq!(state("a2").map(|s| s.0), Some("failed".to_string()));
    assert_eq!(state("a3"), Some(("waiting".to_string(), 1)));
    // Stays halted: a1 keeps the new version, a3 never gets it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(agents[0].nginx_conf().contains("haltedhost.example.com"));
    assert!(agents[2].nginx_conf().contains("v1.example.com"));
    let again = rollout(&addr, &id).await?;
    assert_eq!(again.waves.map(|w| w.phase), Some(WavePhase::Halted));
    Ok(())
}
