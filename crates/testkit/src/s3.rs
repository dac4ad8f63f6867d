//! An S3-compatible server for backup tests: the standalone server of the `moto` Python
//! package (none is packaged in Debian), on a free loopback port, with one bucket.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, bail, Context};

use crate::free_port;
use crate::sql::wait_tcp;

/// A running S3 server, killed when dropped. Any access key and secret are accepted.
pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    /// Starts the server and creates `bucket` (needs `pip install 'moto[server]'`).
    pub fn start(bucket: &str) -> anyhow::Result<Self> {
        let probe = Command::new("python3")
            .args(["-c", "import moto.server, flask"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            bail!("an S3 server is needed for this test: install moto's with `python3 -m pip install 'moto[server]'` (or run scripts/install-deps.sh)");
        }
        let port = free_port()?;
        let mut child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto's S3 server")?;
        if let Err(e) = wait_tcp(port, &mut child, "moto_server") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let server = Self { child, port };
        server.create_bucket(bucket)?;
        Ok(server)
    }

    /// The endpoint URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An unsigned path-style `PUT /bucket`, which moto accepts.
    fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let status = answer.lines().next().unwrap_or_default();
        if !status.contains(" 200 ") {
            return Err(anyhow!("creating bucket {bucket}: {status}"));
        }
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
