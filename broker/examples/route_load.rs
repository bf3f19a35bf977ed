//! Loads N route keys of a made-up node into etcd, the way a node writes
//! them (128-operation transactions, several in flight), to measure what
//! the cluster costs at scale: etcd's size, a node's start-up resync time
//! and its route-index memory (see docs/architecture.md, "Ceilings").
//!
//!     cargo run --release --example route_load -- http://127.0.0.1:2379 scale 1000000
//!
//! Filters look like per-device subscriptions (`devices/<n>/cmd/#`), the
//! case that makes route counts grow with the fleet.

use std::time::Instant;

use etcd_client::{Client, PutOptions, Txn, TxnOp};

const TXN_OPS: usize = 128;
const IN_FLIGHT: usize = 16;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let cluster = args.next().unwrap_or_else(|| "scale".into());
    let count: usize = args.next().map_or(Ok(1_000_000), |n| n.parse())?;

    let client = Client::connect([endpoint.as_str()], None).await?;
    // A lease like a node's, so that the keys go away with it.
    let lease = client.clone().lease_grant(3600, None).await?.id();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let chunks: Vec<(usize, usize)> = (0..count)
        .step_by(TXN_OPS)
        .map(|start| (start, (start + TXN_OPS).min(count)))
        .collect();
    for (i, (start, end)) in chunks.into_iter().enumerate() {
        if i >= IN_FLIGHT
            && let Some(done) = tasks.join_next().await
        {
            done??;
        }
        let mut client = client.clone();
        let cluster = cluster.clone();
        tasks.spawn(async move {
            let ops = (start..end)
                .map(|n| {
                    let key = format!("/starling/{cluster}/routes/ghost/devices/{n:08}/cmd/#");
                    TxnOp::put(key, Vec::new(), Some(PutOptions::new().with_lease(lease)))
                })
                .collect::<Vec<_>>();
            client.txn(Txn::new().and_then(ops)).await.map(|_| ())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"routes\": {count}, \"seconds\": {seconds:.2}, \"routes_per_second\": {:.0}, \"lease\": {lease}}}",
        count as f64 / seconds
    );
    Ok(())
}
