//! Several replicas in one process, each serving on its own loopback port and peered with all
//! the others: the examples, the tests and the benchmarks start clusters this way.

use crate::{Replica, SyncService};

/// Serves each replica on a free `127.0.0.1` port and makes every replica a peer of all the
/// others; returns their addresses, in order. Needs a Tokio runtime.
pub async fn serve_local_cluster(replicas: &[Replica]) -> std::io::Result<Vec<String>> {
    let mut addrs = Vec::with_capacity(replicas.len());
    for replica in replicas {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?.to_string());
        tokio::spawn(SyncService::new(replica.clone()).serve(listener));
    }
    for (i, replica) in replicas.iter().enumerate() {
        let others: Vec<String> = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| a.clone())
            .collect();
        replica.set_peers(&others);
    }
    Ok(addrs)
}
