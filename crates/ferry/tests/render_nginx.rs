//! The original use: nginx load-balancing across registry instances, driven by
//! `ferry render -watch`, with the real nginx (Debian's nginx-light) on its own prefix and
//! ports. Runs against `ferry store` and a real etcd 3.4.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{backend, get};
use common::{ferry_bin, Server};

against_both!(&[];
    nginx_follows_the_registry_and_never_installs_a_broken_config,
);

fn nginx_binary() -> anyhow::Result<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("nginx is needed for this test: install it with `apt-get install nginx-light` (or run scripts/install-deps.sh)"))
}

async fn who_answers(port: u16) -> anyhow::Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        seen.insert(get(port, "test").await?);
    }
    Ok(seen)
}

struct Killer(Vec<Child>);
impl Drop for Killer {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn announce(server: &Server, id: &str, port: u16) -> anyhow::Result<Child> {
    Ok(Command::new(ferry_bin())
        .args([
            "registry",
            "announce",
            "--endpoints",
            &server.endpoint(),
            "--service",
            "apache",
            "--id",
            id,
        ])
        .args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--ttl",
            "2",
            "--keepalive",
            "500ms",
        ])
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?)
}

fn write_confdir(dir: &Path, prefix: &Path, nginx: &Path, listen: u16) -> anyhow::Result<()> {
    for d in [
        "conf.d",
        "templates",
        "nginx/conf",
        "nginx/logs",
        "nginx/tmp",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let p = prefix.display();
    let template = format!(
        "worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n\
         access_log off;\nclient_body_temp_path {p}/tmp/body;\nproxy_temp_path {p}/tmp/proxy;\nfastcgi_temp_path {p}/tmp/fastcgi;\n\
         uwsgi_temp_path {p}/tmp/uwsgi;\nscgi_temp_path {p}/tmp/scgi;\nupstream apache {{\n\
         {{{{- range gets \"/services/apache/*\"}}}}{{{{$i := json .Value}}}}\n    server {{{{$i.addr}}}};\n{{{{- end}}}}\n}}\n\
         server {{ listen 127.0.0.1:{listen}; location / {{ proxy_pass http://apache; proxy_next_upstream error timeout http_502; }} }}\n}}\n"
    );
    std::fs::write(dir.join("templates/nginx.tmpl"), template)?;
    let n = nginx.display();
    std::fs::write(
        dir.join("conf.d/nginx.toml"),
        format!(
            "[template]\nsrc = \"nginx.tmpl\"\ndest = \"{p}/conf/nginx.conf\"\nkeys = [\"/services/apache\"]\n\
             check_cmd = \"{n} -t -q -p {p} -c {{{{.src}}}}\"\nreload_cmd = \"{n} -s reload -p {p} -c {p}/conf/nginx.conf\"\n\
             wait = \"200ms:1s\"\n"
        ),
    )?;
    Ok(())
}

async fn nginx_follows_the_registry_and_never_installs_a_broken_config(
    server: &Server,
) -> anyhow::Result<()> {
    let nginx = nginx_binary()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let prefix = dir.join("nginx");
    let listen = ferry_testkit::free_port()?;
    write_confdir(dir, &prefix, &nginx, listen)?;
    let mut procs = Killer(Vec::new());
    let mut backends = Vec::new();
    for name in ["backend-1", "backend-2", "backend-3"] {
        let (port, task) = backend(name.to_string()).await?;
        procs.0.push(announce(server, name, port)?);
        backends.push((port, task));
    }
    let conf = prefix.join("conf/nginx.conf");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new(ferry_bin())
            .args(["render", "-onetime", "-confdir"])
            .arg(dir)
            .args(["-node", &server.endpoint()])
            .env("FERRY_LOG", "error")
            .output()?;
        let ports_in_conf = std::fs::read_to_string(&conf).unwrap_or_default();
        if out.status.success()
            && backends
                .iter()
                .all(|(p, _)| ports_in_conf.contains(&p.to_string()))
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "initial render failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Command::new(&nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .output()?;
    anyhow::ensure!(
        started.status.success(),
        "nginx did not start: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    struct StopNginx(PathBuf, PathBuf, PathBuf);
    impl Drop for StopNginx {
        fn drop(&mut self) {
            let _ = Command::new(&self.0)
                .arg("-s")
                .arg("stop")
                .arg("-p")
                .arg(&self.1)
                .arg("-c")
                .arg(&self.2)
                .output();
        }
    }
    let _stop = StopNginx(nginx.clone(), prefix.clone(), conf.clone());
    procs.0.push(
        Command::new(ferry_bin())
            .args(["render", "-watch", "-confdir"])
            .arg(dir)
            .args(["-node", &server.endpoint()])
            .env("FERRY_LOG", "warn")
            .spawn()?,
    );
    let all: BTreeSet<String> = ["backend-1", "backend-2", "backend-3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        who_answers(listen).await?,
        all,
        "requests reach all three backends"
    );

    // backend-2 crashes: its announcer dies with it, so its lease expires.
    let killed_port = backends[1].0;
    procs.0[1].kill()?;
    procs.0[1].wait()?;
    backends[1].1.abort();
    let killed = Instant::now();
    while std::fs::read_to_string(&conf)?.contains(&killed_port.to_string()) {
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(2 + 1 + 2),
            "backend-2 still in the upstream after {:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // nginx reload takes effect
    let rest: BTreeSet<String> = ["backend-1", "backend-3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(who_answers(listen).await?, rest);

    // An instance whose address breaks the config: nginx -t refuses it, nothing is installed.
    let good = std::fs::read_to_string(&conf)?;
    let mut c = server.client().await?;
    c.put("/services/apache/broken", r#"{"service":"apache","id":"broken","addr":"bad host name:::","start_time":"2026-01-01T00:00:00Z"}"#, None)
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        std::fs::read_to_string(&conf)?,
        good,
        "a config failing nginx -t was installed"
    );
    assert_eq!(
        who_answers(listen).await?,
        rest,
        "nginx keeps serving the last good config"
    );
    Ok(())
}
