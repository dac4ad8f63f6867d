//! Loopback ports for members the operator starts.

use std::net::TcpListener;

/// `N` different free loopback ports: each is held until all are chosen, so no two are the
/// same (two separate picks can be).
pub(crate) fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        *port = listener.local_addr()?.port();
        held.push(listener);
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_distinct() -> std::io::Result<()> {
        let ports = super::free_ports::<16>()?;
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 16, "{ports:?}");
        assert!(ports.iter().all(|p| *p != 0));
        Ok(())
    }
}
