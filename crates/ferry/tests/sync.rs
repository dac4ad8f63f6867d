//! `ferry sync` replicas as processes, finding each other through the registry on
//! `ferry store` and on a real etcd 3.4: a write on one is readable on all, bad input changes
//! nothing, a killed replica restarted later bootstraps to the others' state (deletes
//! included), a paused one is repaired by anti-entropy.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ingress::Proc;
use common::{ferry_bin, Server};
use serde_json::Value;

against_both!(&[];
    replicas_converge_through_kills_pauses_and_deletes,
);

struct Replica {
    http: String,
    args: Vec<String>,
    proc: Proc,
}

impl Replica {
    fn start(endpoint: &str, id: &str) -> anyhow::Result<Self> {
        let http = format!("127.0.0.1:{}", ferry_testkit::free_port()?);
        let args: Vec<String> = [
            "sync",
            "--endpoints",
            endpoint,
            "--service",
            "cache",
            "--id",
            id,
            "--http-listen",
            &http,
            "--anti-entropy-interval",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = Proc(spawn(&args)?);
        Ok(Self { http, args, proc })
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.proc = Proc(spawn(&self.args)?);
        Ok(())
    }

    async fn call(&self, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, Value)> {
        let reply =
            ferry_controller::http_client::request(&self.http, method, path, None, &[], body)
                .await?;
        Ok((
            reply.status,
            serde_json::from_str(&reply.body).unwrap_or(Value::Null),
        ))
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = self.call("GET", "/readyz", "").await {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < until, "replica {} never ready", self.http);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn entries(&self) -> anyhow::Result<Value> {
        let (status, body) = self.call("GET", "/v1/cache/1", "").await?;
        anyhow::ensure!(status == 200, "{status} {body}");
        Ok(body["entries"].clone())
    }
}

fn spawn(args: &[String]) -> anyhow::Result<std::process::Child> {
    Ok(Command::new(ferry_bin())
        .args(args)
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?)
}

async fn all_equal(replicas: &[Replica], expected: &Value) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        for r in replicas {
            seen.push(r.entries().await.unwrap_or(Value::Null));
        }
        if seen.iter().all(|s| s == expected) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < until,
            "replicas differ: {seen:?}, want {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn replicas_converge_through_kills_pauses_and_deletes(server: &Server) -> anyhow::Result<()> {
    let endpoint = server.endpoint();
    let mut replicas = Vec::new();
    for id in ["r1", "r2", "r3"] {
        let r = Replica::start(&endpoint, id)?;
        r.wait_ready().await?;
        replicas.push(r);
    }
    let put = |value: &str| serde_json::json!({ "value": value }).to_string();
    let (status, _) = replicas[0]
        .call("PUT", "/v1/cache/1/greeting", &put("hello"))
        .await?;
    assert_eq!(status, 200);
    all_equal(&replicas, &serde_json::json!({"greeting": "hello"})).await?;

    // Bad input: 400 with a reason, nothing changes.
    for (path, body, reason) in [
        ("/v1/cache/x/k", put("v"), "is not a 32-bit integer"),
        (
            "/v1/cache/1/k",
            r#"{"value":"v","ttl":5}"#.to_string(),
            "unknown field",
        ),
        ("/v1/cache/1/k", "not json".to_string(), "must be"),
        ("/v1/cache/1/k", put(&"x".repeat((1 << 20) + 1)), "over"),
    ] {
        let (status, answer) = replicas[1].call("PUT", path, &body).await?;
        assert_eq!(status, 400, "{path} {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains(reason),
            "{answer}"
        );
    }
    all_equal(&replicas, &serde_json::json!({"greeting": "hello"})).await?;

    // kill -9 of a replica; writes and a delete meanwhile; it comes back with all of them.
    replicas[2].proc.kill9();
    for i in 0..10 {
        replicas[0]
            .call("PUT", &format!("/v1/cache/1/k{i}"), &put(&i.to_string()))
            .await?;
    }
    replicas[1]
        .call("DELETE", "/v1/cache/1/greeting", "")
        .await?;
    let expected: Value = (0..10)
        .map(|i| (format!("k{i}"), Value::from(i.to_string())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    replicas[2].restart()?;
    replicas[2].wait_ready().await?;
    all_equal(&replicas, &expected).await?;

    // A paused replica (longer than the fan-out retries) misses writes; anti-entropy repairs it.
    let pid = replicas[1].proc.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()?
        .success());
    replicas[0]
        .call("PUT", "/v1/cache/1/during", &put("pause"))
        .await?;
    replicas[2].call("DELETE", "/v1/cache/1/k0", "").await?;
    // Longer than every fan-out attempt (3 tries of up to 2 s each, with their delays).
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()?
        .success());
    let mut expected = expected;
    if let Some(map) = expected.as_object_mut() {
        map.remove("k0");
        map.insert("during".into(), "pause".into());
    }
    all_equal(&replicas, &expected).await?;
    // The counters say what happened: writes fanned out from r1, r3 bootstrapped.
    let metrics = |r: &Replica| {
        let http = r.http.clone();
        async move {
            ferry_controller::http_client::request(&http, "GET", "/metrics", None, &[], "")
                .await
                .map(|reply| reply.body)
        }
    };
    let r1 = metrics(&replicas[0]).await?;
    assert!(r1.contains("ferry_sync_ready 1"), "{r1}");
    assert!(
        !r1.contains("ferry_sync_fanout_delivered_total 0\n"),
        "{r1}"
    );
    let r3 = metrics(&replicas[2]).await?;
    assert!(!r3.contains("ferry_sync_bootstrap_seconds 0\n"), "{r3}");
    assert!(r3.contains("ferry_sync_entries 10"), "{r3}");
    Ok(())
}
