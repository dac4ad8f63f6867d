//! Running a resource's `check_cmd` and `reload_cmd` as confd does: `/bin/sh -c <command>`.
//!
//! A command that is one absolute program path followed by plain words (`/usr/sbin/nginx -t
//! -q -p /srv/nginx -c /srv/nginx/conf/.nginx.confX1`) means the same to the shell as to
//! `execve`: no quoting, expansion, redirection or builtin can change it. Such a command is
//! started directly, which saves starting the shell first (2 of the 5 ms an `nginx -t`
//! took through `sh`, on the path of every controller change's pre-flight check). Anything
//! else, and a program that cannot be started directly, goes through the shell, which also
//! words the errors as confd users know them.

/// Runs `command`; on failure, its exit status and what it printed.
pub(crate) async fn run(command: &str) -> Result<(), (String, String)> {
    let started = match plain_words(command) {
        Some(words) => tokio::process::Command::new(words[0])
            .args(&words[1..])
            .output()
            .await
            .ok(),
        None => None,
    };
    let output = match started {
        Some(output) => Ok(output),
        None => {
            tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(command)
                .output()
                .await
        }
    };
    match output {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Err((out.status.to_string(), text.trim().to_string()))
        }
        Err(e) => Err(("not started".into(), e.to_string())),
    }
}

/// The words of `command` when the shell would run it as they are: the first an absolute
/// path, every word made of characters no shell gives a meaning to.
fn plain_words(command: &str) -> Option<Vec<&str>> {
    let words: Vec<&str> = command
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    let plain = |w: &str| {
        w.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'/' | b'.' | b'_' | b'-' | b'+' | b',' | b':' | b'@' | b'%' | b'='
                )
        })
    };
    let program = words.first()?;
    // `=` in the first word would make it an assignment; a relative name could be a builtin.
    (program.starts_with('/') && !program.contains('=') && words.iter().all(|w| plain(w)))
        .then_some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_absolute_program_with_plain_words_skips_the_shell() {
        assert_eq!(
            plain_words("/usr/sbin/nginx -t -q -p /srv/x -c /srv/x/conf/.nginx.confA1"),
            Some(vec![
                "/usr/sbin/nginx",
                "-t",
                "-q",
                "-p",
                "/srv/x",
                "-c",
                "/srv/x/conf/.nginx.confA1"
            ])
        );
        for shell_only in [
            "nginx -t",
            "exit 1",
            "/bin/echo $HOME",
            "/bin/echo a > /tmp/f",
            "/bin/echo 'quoted word'",
            "/bin/ls *",
            "/bin/true && /bin/false",
            "/bin/echo ~",
            "/bin/echo a; /bin/echo b",
            "/bin/echo `id`",
            "/bin/echo a # comment",
            "A=/b /bin/true",
            "/bin/echo a\nb",
            "",
        ] {
            assert_eq!(plain_words(shell_only), None, "{shell_only:?}");
        }
    }

    #[tokio::test]
    async fn a_direct_command_and_a_shell_command_report_the_same_way() {
        assert_eq!(run("/bin/true").await, Ok(()));
        let direct = run("/bin/sh -c false").await;
        assert!(
            matches!(&direct, Err((status, _)) if status.contains('1')),
            "{direct:?}"
        );
        // Through the shell: its own words for a missing program, as confd users see them.
        let missing = run("/no/such/program -t").await;
        assert!(
            matches!(&missing, Err((status, output)) if status.contains("127") && output.contains("/no/such/program")),
            "{missing:?}"
        );
        let shell = run("echo out; echo err >&2; exit 3").await;
        assert_eq!(
            shell,
            Err(("exit status: 3".to_string(), "out\nerr".to_string()))
        );
    }
}
