//! Three replicas in one process, each serving `hellorpc.Sync` on a loopback port: a write on
//! one appears on the others, and a write on two of them at once converges to one winner.
//!
//! ```text
//! cargo run -p ferry-sync --example three_replicas
//! ```

use std::time::Duration;

use ferry_sync::{Replica, SyncService};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::new()).collect();
    let mut addrs = Vec::new();
    for replica in &replicas {
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
    replicas[0].set(1, "greeting", "hello");
    replicas[1].set(1, "colour", "blue");
    replicas[2].set(1, "colour", "green");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, replica) in replicas.iter().enumerate() {
        println!("replica {i} at {}: {:?}", addrs[i], replica.values(1));
    }
    Ok(())
}
