//! Three replicas in one process, each serving `hellorpc.Sync` on a loopback port: a write on
//! one appears on the others, and a write on two of them at once converges to one winner.
//!
//! ```text
//! cargo run -p ferry-sync --example three_replicas
//! ```

use std::time::Duration;

use ferry_sync::Replica;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::new()).collect();
    let addrs = ferry_sync::serve_local_cluster(&replicas).await?;
    replicas[0].set(1, "greeting", "hello");
    replicas[1].set(1, "colour", "blue");
    replicas[2].set(1, "colour", "green");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, replica) in replicas.iter().enumerate() {
        println!("replica {i} at {}: {:?}", addrs[i], replica.values(1));
    }
    Ok(())
}
