//! This node's etcd lease. Every key the node owns (its node record, its
//! routes, its client registrations) is attached to it, so that a dead node
//! vanishes from etcd within the TTL. When the lease is lost (etcd was away
//! longer than the TTL), a new one is granted and published on a watch
//! channel; owners of keys then write them again under the new lease.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cluster::backoff::Backoff;
use crate::cluster::tasks::Tasks;

/// The current lease id, `None` while there is none.
pub type LeaseWatch = watch::Receiver<Option<i64>>;

pub fn start(client: Client, ttl_secs: u64, tasks: &Tasks) -> LeaseWatch {
    let (tx, rx) = watch::channel(None);
    tasks.spawn(keep(client, ttl_secs, tx));
    rx
}

async fn keep(mut client: Client, ttl_secs: u64, tx: watch::Sender<Option<i64>>) {
    let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX);
    let mut backoff = Backoff::default();
    loop {
        let id = match client.lease_grant(ttl, None).await {
            Ok(lease) => lease.id(),
            Err(error) => {
                warn!(%error, "cannot grant an etcd lease; retrying");
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        info!(lease = id, ttl_secs, "etcd lease granted");
        let _ = tx.send(Some(id));
        keep_alive(&mut client, id, ttl_secs).await;
        warn!(lease = id, "etcd lease lost; granting a new one");
        let _ = tx.send(None);
    }
}

/// Refreshes the lease every third of its TTL; returns when etcd says it
/// expired. While etcd is unreachable it keeps trying: etcd renews leases
/// when it elects a leader again, so a short outage keeps the lease.
async fn keep_alive(client: &mut Client, id: i64, ttl_secs: u64) {
    let period = Duration::from_millis(ttl_secs * 1000 / 3);
    loop {
        match client.lease_keep_alive(id).await {
            Ok((mut keeper, mut responses)) => loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match responses.message().await {
                    Ok(Some(response)) if response.ttl() > 0 => {}
                    Ok(Some(_)) => return,
                    Ok(None) | Err(_) => break,
                }
                tokio::time::sleep(period).await;
            },
            Err(error) => warn!(%error, lease = id, "etcd keep-alive failed; retrying"),
        }
        tokio::time::sleep(period.min(Duration::from_secs(1))).await;
        // A lease that etcd no longer knows is gone for good.
        if let Ok(ttl) = client.lease_time_to_live(id, None).await
            && ttl.ttl() <= 0
        {
            return;
        }
    }
}
