//! The real `etcdctl` against `ferry store` and against etcd 3.4: the same session, compared
//! line by line with ids, ports, versions, sizes and timings masked.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{start, Kind, Server};

/// One etcdctl invocation: its arguments and what it reads on stdin.
struct Step {
    args: Vec<String>,
    stdin: Option<&'static str>,
}

fn step(args: &str) -> Step {
    Step {
        args: args.split_whitespace().map(str::to_string).collect(),
        stdin: None,
    }
}

fn with_stdin(args: &str, stdin: &'static str) -> Step {
    Step {
        stdin: Some(stdin),
        ..step(args)
    }
}

fn session(snapshot_path: &str) -> Vec<Step> {
    vec![
        step("put foo bar"),
        step("put foo baz --prev-kv"),
        step("get foo"),
        step("get foo -w json"),
        step("put foo2 two"),
        step("put foo3 three"),
        step("put zed last"),
        step("get foo --prefix --keys-only"),
        step("get foo --prefix --limit 1 -w json"),
        step("get foo --prefix --sort-by=MODIFY --order=DESCEND"),
        step("get foo --prefix --sort-by=VALUE --order=ASCEND --print-value-only"),
        step("get foo --prefix --sort-by=CREATE --order=DESCEND -w json"),
        step("get foo --prefix --sort-by=VERSION"),
        step("get foo --rev=2"),
        step("get foo --from-key"),
        step("get foo --prefix --count-only -w json"),
        step("get foo --consistency=s"),
        step("get foo --prefix --min-mod-revision=4 --max-create-revision=5"),
        step("get foo --prefix --max-mod-revision=3 --min-create-revision=2"),
        step("put foo2 --ignore-value"),
        step("get foo2 -w json"),
        step("put foo3 again --ignore-lease"),
        step("put nothere --ignore-value"),
        step("put foo4 x --lease=1234"),
        step("del foo2"),
        step("del nothing"),
        step("del foo --prefix --prev-kv"),
        step("del zed --prev-kv -w json"),
        with_stdin(
            "txn",
            "value(\"foo\") = \"baz\"\n\nput foo new\nget foo\n\nput foo other\n\n",
        ),
        with_stdin(
            "txn -w json",
            "version(\"foo\") = \"0\"\n\nput foo fresh\n\nget foo\n\n",
        ),
        with_stdin(
            "txn",
            "create(\"foo\") > \"0\"\nmod(\"foo\") < \"1000\"\n\ndel foo\nput a 1\n\n\n",
        ),
        with_stdin("txn", "value(\"foo\") = \"x\"\n\n\nput b 2\nget a\n\n"),
        step("get a --from-key -w json"),
        step("compact 5"),
        step("get a --rev=4"),
        step("get a --rev=5"),
        step("get a --rev=1000"),
        step("compact 3"),
        step("compact 1000"),
        step("compact 12 --physical"),
        step("endpoint health"),
        step("endpoint status -w json"),
        step("endpoint hashkv -w json"),
        step("member list"),
        step("member list -w json"),
        step("alarm list"),
        step("defrag"),
        format_step("snapshot save", snapshot_path),
        step("get a -w fields"),
    ]
}

fn format_step(prefix: &str, arg: &str) -> Step {
    Step {
        args: prefix
            .split_whitespace()
            .chain([arg])
            .map(str::to_string)
            .collect(),
        stdin: None,
    }
}

/// Runs the session and returns its transcript, masked.
fn transcript(server: &Server, snapshot_path: &str) -> anyhow::Result<Vec<String>> {
    transcript_of(server, session(snapshot_path))
}

/// Runs `steps` and returns their transcript, masked.
fn transcript_of(server: &Server, steps: Vec<Step>) -> anyhow::Result<Vec<String>> {
    let etcdctl = ferry_testkit::etcdctl_binary()?;
    let mut lines = Vec::new();
    for s in steps {
        // A step that never ends (a watch that should have been cancelled) ends the
        // transcript's line with exit 124 instead of hanging the suite.
        let mut cmd = Command::new("timeout");
        cmd.arg("20")
            .arg(&etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", server.endpoint()))
            .args(&s.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            if let Some(text) = s.stdin {
                stdin.write_all(text.as_bytes())?;
            }
        }
        let out = child.wait_with_output()?;
        let command = mask(&s.args.join(" "));
        lines.push(format!(
            "$ etcdctl {command} => exit {}",
            out.status.code().unwrap_or(-1)
        ));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            lines.push(mask(line));
        }
        // etcdctl logs retries and progress as JSON with timestamps; the error lines count.
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            if !line.starts_with('{') {
                lines.push(format!("stderr: {}", mask(line)));
            }
        }
    }
    Ok(lines)
}

fn mask(line: &str) -> String {
    // Named numeric fields before hex ids: a decimal id can look like a 16-digit hex id.
    let rules: [(&str, &str); 9] = [
        (r"127\.0\.0\.1:\d+", "ENDPOINT"),
        (
            r#""(cluster_id|member_id|raft_term|leader|raftIndex|raftTerm|raftAppliedIndex|dbSize|dbSizeInUse|ID|hash|memberID|lease)":\d+"#,
            "\"$1\":N",
        ),
        (r"\b[0-9a-f]{8,16}\b", "ID"),
        (r#""version":"[^"]*""#, "\"version\":\"V\""),
        (r"took = \S+", "took = T"),
        (r#"\"(ClusterID|MemberID|RaftTerm)\" : \d+"#, "\"$1\" : N"),
        (r"/tmp/\S+", "PATH"),
        (r#""peerURLs":\["[^"]*"\]"#, "\"peerURLs\":[URL]"),
        (r#""compact_revision":\d+"#, "\"compact_revision\":N"),
    ];
    let mut out = line.to_string();
    for (pattern, replacement) in rules {
        let re = regex::Regex::new(pattern).expect("mask patterns are valid");
        out = re.replace_all(&out, replacement).into_owned();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_session_matches_etcd_line_by_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = start(Kind::Etcd, &[]).await?;
    let ferry = start(Kind::Ferry, &[]).await?;
    let etcd_snap = dir.path().join("etcd.db").display().to_string();
    let ferry_snap = dir.path().join("ferry.db").display().to_string();
    let expected = transcript(&etcd, &etcd_snap)?;
    let actual = transcript(&ferry, &ferry_snap)?;
    let mut mismatches = Vec::new();
    for (i, pair) in expected.iter().zip(actual.iter()).enumerate() {
        if pair.0 != pair.1 {
            mismatches.push(format!(
                "line {i}:\n  etcd:  {}\n  ferry: {}",
                pair.0, pair.1
            ));
        }
    }
    if expected.len() != actual.len() {
        mismatches.push(format!(
            "etcd printed {} lines, ferry {}",
            expected.len(),
            actual.len()
        ));
    }
    assert!(
        mismatches.is_empty(),
        "{} differences:\n{}\n\nfull etcd transcript:\n{}\n\nfull ferry transcript:\n{}",
        mismatches.len(),
        mismatches.join("\n"),
        expected.join("\n"),
        actual.join("\n")
    );
    assert!(
        std::path::Path::new(&ferry_snap).exists(),
        "snapshot save wrote the file"
    );
    Ok(())
}

/// Runs etcdctl commands one by one against one server, keeping a masked transcript.
struct Etcdctl {
    endpoint: String,
    lines: Vec<String>,
}

impl Etcdctl {
    fn command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = Command::new(ferry_testkit::etcdctl_binary()?);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args);
        Ok(cmd)
    }

    /// Runs one command to completion; returns its stdout.
    fn run(&mut self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(args)?.stdin(Stdio::null()).output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        self.record(
            args,
            out.status.code(),
            &stdout,
            &String::from_utf8_lossy(&out.stderr),
        );
        Ok(stdout)
    }

    fn record(&mut self, args: &[&str], code: Option<i32>, stdout: &str, stderr: &str) {
        self.lines.push(format!(
            "$ etcdctl {} => exit {}",
            mask(&args.join(" ")),
            code.unwrap_or(-1)
        ));
        self.lines.extend(stdout.lines().map(mask));
        self.lines.extend(
            stderr
                .lines()
                .filter(|l| !l.starts_with('{'))
                .map(|l| format!("stderr: {}", mask(l))),
        );
    }

    /// Starts a long-running command (a watch); `finish` collects what it printed.
    fn spawn(&self, args: &[&str]) -> anyhow::Result<std::process::Child> {
        Ok(self
            .command(args)?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    fn finish(&mut self, args: &[&str], mut child: std::process::Child) -> anyhow::Result<()> {
        let _ = child.kill();
        let out = child.wait_with_output()?;
        // Killed on purpose: the exit code is not part of the comparison.
        self.record(
            args,
            Some(0),
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        );
        Ok(())
    }
}

fn mask_lease(line: &str) -> String {
    let re = regex::Regex::new(r"remaining\(\d+s\)").expect("valid pattern");
    re.replace_all(line, "remaining(Ns)").into_owned()
}

async fn watch_lease_lock_transcript(server: &Server) -> anyhow::Result<Vec<String>> {
    let mut ctl = Etcdctl {
        endpoint: server.endpoint(),
        lines: Vec::new(),
    };
    ctl.run(&["put", "w/a", "1"])?;
    ctl.run(&["put", "w/a", "2"])?;
    let history = ["watch", "w/a", "--rev=1"];
    let prefix = ["watch", "w/", "--prefix", "--prev-kv"];
    let w1 = ctl.spawn(&history)?;
    let w2 = ctl.spawn(&prefix)?;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    ctl.run(&["put", "w/b", "3"])?;
    ctl.run(&["del", "w/a"])?;
    with_txn(&mut ctl, "put w/c 4\nput w/d 5\n")?;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    ctl.finish(&history, w1)?;
    ctl.finish(&prefix, w2)?;

    let granted = ctl.run(&["lease", "grant", "100"])?;
    let id = granted
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("unexpected lease grant output {granted:?}"))?
        .to_string();
    ctl.run(&["put", "l/k", "v", &format!("--lease={id}")])?;
    ctl.run(&["get", "l/k", "-w", "json"])?;
    ctl.run(&["lease", "timetolive", &id, "--keys"])?;
    ctl.run(&["lease", "list"])?;
    ctl.run(&["lease", "keep-alive", "--once", &id])?;
    ctl.run(&["lease", "revoke", &id])?;
    ctl.run(&["get", "l/k"])?;
    ctl.run(&["lease", "timetolive", &id])?;
    ctl.run(&["lease", "revoke", &id])?;
    ctl.run(&["lease", "grant", "0"])?;
    ctl.run(&["lock", "mylock", "echo", "held"])?;
    ctl.run(&["lock", "mylock", "echo", "held again"])?;
    ctl.run(&["get", "mylock", "--prefix", "--count-only", "-w", "json"])?;
    Ok(ctl.lines.iter().map(|l| mask_lease(l)).collect())
}

fn with_txn(ctl: &mut Etcdctl, success: &str) -> anyhow::Result<()> {
    let mut child = ctl
        .command(&["txn"])?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(format!("\n{success}\n\n").as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ctl.record(
        &["txn"],
        out.status.code(),
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_lease_and_lock_match_etcd() -> anyhow::Result<()> {
    let etcd = start(Kind::Etcd, &[]).await?;
    let ferry = start(Kind::Ferry, &[]).await?;
    let expected = watch_lease_lock_transcript(&etcd).await?;
    let actual = watch_lease_lock_transcript(&ferry).await?;
    assert_same_transcript(&expected, &actual);
    // The session really exercised watches and leases.
    assert!(
        actual.iter().any(|l| l == "DELETE"),
        "no watch event in:\n{}",
        actual.join("\n")
    );
    assert!(actual.iter().any(|l| l.contains("granted with TTL(100s)")));
    assert!(actual.iter().any(|l| l == "held again"));
    Ok(())
}

/// Users, roles, permissions and a session with authentication on: etcdctl 3.4's commands,
/// granted and denied reads, writes and transactions, a wrong password, a password change.
fn auth_session() -> Vec<Step> {
    let root = "--user=root:rootpw";
    let alice = "--user=alice:alicepw";
    let as_root = |args: &str| step(&format!("{root} {args}"));
    let as_alice = |args: &str| step(&format!("{alice} {args}"));
    vec![
        step("auth enable"),
        step("role add reader"),
        step("role add reader"),
        step("role add writer"),
        step("role grant-permission reader read /app/ --prefix"),
        step("role grant-permission reader readwrite /status/a"),
        step("role grant-permission reader read /x /z"),
        step("role grant-permission reader write /m --from-key"),
        step("role grant-permission nobody read /a"),
        step("role get reader"),
        step("role get nobody"),
        step("user add alice --new-user-password=alicepw"),
        step("user add alice --new-user-password=again"),
        step("user add bob --new-user-password=bobpw"),
        step("user grant-role alice reader"),
        step("user grant-role alice reader"),
        step("user grant-role bob writer"),
        step("user grant-role alice nobody"),
        step("user grant-role nobody reader"),
        step("user get alice"),
        step("user get alice --detail"),
        step("user get nobody"),
        step("user list"),
        step("role list"),
        step("user revoke-role bob reader"),
        step("user add root --new-user-password=rootpw"),
        step("auth enable"),
        step("put /app/x 1"),
        as_root("put /app/x 1"),
        as_root("put /secret s"),
        as_alice("get /app/x"),
        as_alice("get /app/ --prefix"),
        as_alice("get / --prefix"),
        as_alice("get /secret"),
        as_alice("put /app/x 2"),
        as_alice("put /status/a up"),
        as_alice("put /status/b up"),
        as_alice("del /app/x"),
        step("--user=alice:wrong get /app/x"),
        step("--user=nobody:pw get /app/x"),
        with_stdin(
            &format!("{alice} txn"),
            "value(\"/app/x\") = \"1\"\n\nput /status/a yes\n\nput /secret no\n\n",
        ),
        with_stdin(
            &format!("{alice} txn"),
            "value(\"/app/x\") = \"1\"\n\nput /status/a yes\nget /app/x\n\n\n",
        ),
        as_alice("get /status/a"),
        as_alice("watch /secret"),
        as_alice("lease grant 60"),
        as_alice("user list"),
        as_alice("user get alice"),
        as_alice("user get root"),
        as_alice("role get reader"),
        as_alice("role get writer"),
        as_alice("auth disable"),
        as_root("user delete root"),
        as_root("user revoke-role root root"),
        as_root("role delete root"),
        as_root("user list"),
        as_root("role revoke-permission reader /x /z"),
        as_root("role revoke-permission reader /x /z"),
        as_root("role revoke-permission reader /app/ --prefix"),
        as_root("role get reader"),
        as_alice("get /app/x"),
        with_stdin(
            &format!("{root} user passwd alice --interactive=false"),
            "newpw\n",
        ),
        as_alice("get /status/a"),
        step("--user=alice:newpw get /status/a"),
        as_root("role delete reader"),
        as_root("user get alice"),
        as_root("user delete bob"),
        as_root("user delete bob"),
        as_root("auth enable"),
        as_root("auth disable"),
        step("auth disable"),
        step("put /app/x 3"),
        step("get /app/x"),
        step("user list"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_auth_session_matches_etcd_line_by_line() -> anyhow::Result<()> {
    let flags = ["--bcrypt-cost", "4"];
    let etcd = start(Kind::Etcd, &flags).await?;
    let ferry = start(Kind::Ferry, &flags).await?;
    let expected = transcript_of(&etcd, auth_session())?;
    let actual = transcript_of(&ferry, auth_session())?;
    assert_same_transcript(&expected, &actual);
    // The session really was refused and allowed where it should be.
    assert!(actual.iter().any(|l| l.contains("permission denied")));
    assert!(actual.iter().any(|l| l == "Authentication Enabled"));
    Ok(())
}

/// Fails naming each line where ferry's transcript differs from etcd's.
fn assert_same_transcript(expected: &[String], actual: &[String]) {
    let mismatches: Vec<String> = expected
        .iter()
        .zip(actual)
        .enumerate()
        .filter(|(_, (e, a))| e != a)
        .map(|(i, (e, a))| format!("line {i}:\n  etcd:  {e}\n  ferry: {a}"))
        .collect();
    assert!(
        mismatches.is_empty() && expected.len() == actual.len(),
        "{} differences ({} vs {} lines):\n{}\n\netcd:\n{}\n\nferry:\n{}",
        mismatches.len(),
        expected.len(),
        actual.len(),
        mismatches.join("\n"),
        expected.join("\n"),
        actual.join("\n")
    );
}
