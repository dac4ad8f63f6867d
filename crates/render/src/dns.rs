//! confd's `lookupSRV`: one DNS SRV query over UDP, made synchronously because template
//! functions run inside a synchronous render. Written here (about a hundred lines) rather
//! than pulling an async resolver into every template call.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// One SRV record, with Go's `net.SRV` field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Target host, with the trailing dot as Go returns it.
    pub target: String,
    /// Port.
    pub port: u16,
    /// Priority.
    pub priority: u16,
    /// Weight.
    pub weight: u16,
}

/// The first `nameserver` of /etc/resolv.conf.
pub fn system_nameserver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len().min(63) as u8);
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.push(0);
}

/// Reads a possibly compressed name at `pos`; returns it and the position after it.
fn decode_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(pos)? as usize;
        if len == 0 {
            name.push('.');
            return Some((name, end.unwrap_or(pos + 1)));
        }
        if len & 0xC0 == 0xC0 {
            let ptr = ((len & 0x3F) << 8) | *msg.get(pos + 1)? as usize;
            end.get_or_insert(pos + 2);
            pos = ptr;
            continue;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(msg.get(pos + 1..pos + 1 + len)?));
        pos += 1 + len;
    }
    None
}

fn u16_at(msg: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]))
}

/// Queries `_service._proto.name` SRV records from `server`; confd returns an empty list on
/// any failure, and so does this.
pub fn lookup_srv(server: SocketAddr, service: &str, proto: &str, name: &str) -> Vec<Srv> {
    let qname = if service.is_empty() && proto.is_empty() {
        name.to_string()
    } else {
        format!("_{service}._{proto}.{name}")
    };
    query(server, &qname).unwrap_or_default()
}

fn query(server: SocketAddr, qname: &str) -> Option<Vec<Srv>> {
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let id: u16 = rand_id();
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    encode_name(qname, &mut msg);
    msg.extend_from_slice(&[0, 33, 0, 1]);
    socket.send_to(&msg, server).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    let resp = &buf[..n];
    if u16_at(resp, 0)? != id || resp.get(3)? & 0x0F != 0 {
        return None;
    }
    let questions = u16_at(resp, 4)?;
    let answers = u16_at(resp, 6)?;
    let mut pos = 12;
    for _ in 0..questions {
        pos = decode_name(resp, pos)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        pos = decode_name(resp, pos)?.1;
        let rtype = u16_at(resp, pos)?;
        let rdlen = u16_at(resp, pos + 8)? as usize;
        let rdata = pos + 10;
        if rtype == 33 {
            let (target, _) = decode_name(resp, rdata + 6)?;
            out.push(Srv {
                priority: u16_at(resp, rdata)?,
                weight: u16_at(resp, rdata + 2)?,
                port: u16_at(resp, rdata + 4)?,
                target,
            });
        }
        pos = rdata + rdlen;
    }
    // confd sorts by target, port, priority and weight so output is stable.
    out.sort_by_key(|s| format!("{}{}{}{}", s.target, s.port, s.priority, s.weight));
    Some(out)
}

fn rand_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A DNS server on loopback answering every SRV query with two records.
    pub fn fake_dns() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        let addr = socket.local_addr().expect("address");
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let q = &buf[..n];
                let qend = decode_name(q, 12).map(|(_, e)| e + 4).unwrap_or(n);
                let mut r = q[..2].to_vec();
                r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]);
                r.extend_from_slice(&q[12..qend]);
                for (prio, port, host) in [(10u16, 8080u16, "b.example"), (5, 80, "a.example")] {
                    r.extend_from_slice(&[0xC0, 12, 0, 33, 0, 1, 0, 0, 0, 60]);
                    let mut rdata = Vec::new();
                    rdata.extend_from_slice(&prio.to_be_bytes());
                    rdata.extend_from_slice(&1u16.to_be_bytes());
                    rdata.extend_from_slice(&port.to_be_bytes());
                    encode_name(host, &mut rdata);
                    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                    r.extend_from_slice(&rdata);
                }
                let _ = socket.send_to(&r, peer);
            }
        });
        addr
    }

    #[test]
    fn srv_records_come_back_sorted_like_confd() {
        let server = fake_dns();
        let got = lookup_srv(server, "http", "tcp", "example");
        assert_eq!(
            got,
            vec![
                Srv {
                    target: "a.example.".into(),
                    port: 80,
                    priority: 5,
                    weight: 1
                },
                Srv {
                    target: "b.example.".into(),
                    port: 8080,
                    priority: 10,
                    weight: 1
                },
            ]
        );
        // Nothing listening: an empty list, as confd returns.
        let closed = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("port");
        assert!(lookup_srv(closed, "http", "tcp", "example").is_empty());
    }
}
