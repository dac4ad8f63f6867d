//! Free loopback ports, for members and servers a process starts next to itself (the
//! operator's etcd members, `ferry up`'s agents, the test kit's servers).

use std::net::TcpListener;

/// `n` different free ports on 127.0.0.1. Each is held until all are chosen: separate picks
/// can return the same port twice.
pub fn free_loopback_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_distinct() -> std::io::Result<()> {
        let ports = super::free_loopback_ports(16)?;
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 16, "{ports:?}");
        assert!(ports.iter().all(|p| *p != 0));
        Ok(())
    }
}
