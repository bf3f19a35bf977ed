//! Registering new client ids in batches. In a connect storm (a fleet
//! coming back after an outage, a node's clients moving during a rollout)
//! almost every client id is new or already gone from etcd: one
//! transaction per connect would cap the cluster at etcd's transaction
//! rate. The connects waiting at the same moment are registered by one
//! transaction instead: "if none of these keys exists, put them all";
//! only when some key exists do its connects go the one-by-one way (read
//! who holds it, take the session over).

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::warn;

use crate::cluster::directory::etcd::{ClusterSessions, LOOKUP_TIMEOUT, Registration};

/// etcd's default limit of operations (and comparisons) per transaction.
const BATCH: usize = 128;
/// Batches in flight at once.
const PARALLEL: usize = 4;

/// One connect's request: register `key`, expected absent.
pub struct FreshClaim {
    pub client_id: String,
    pub key: String,
    pub reply: oneshot::Sender<Option<Registration>>,
}

/// Serves the claims until every sender is gone.
pub async fn run(sessions: Weak<ClusterSessions>, mut claims: mpsc::Receiver<FreshClaim>) {
    let slots = Arc::new(Semaphore::new(PARALLEL));
    let mut batch = Vec::with_capacity(BATCH);
    while claims.recv_many(&mut batch, BATCH).await > 0 {
        let Some(sessions) = sessions.upgrade() else {
            return;
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        tokio::spawn(async move {
            register_batch(&sessions, taken).await;
            drop(slot);
        });
    }
}

async fn register_batch(sessions: &Arc<ClusterSessions>, batch: Vec<FreshClaim>) {
    let Some(lease) = sessions.current_lease() else {
        // Each connect looks again on its own (the no-lease path).
        for claim in batch {
            let _ = claim.reply.send(None);
        }
        return;
    };
    // The same key twice in one batch (one client connecting twice at
    // once) cannot be put twice in one transaction: one by one then.
    let mut seen = HashSet::new();
    let (together, alone): (Vec<FreshClaim>, Vec<FreshClaim>) =
        batch.into_iter().partition(|c| seen.insert(c.key.clone()));
    let mut one_by_one = alone;
    if together.len() == 1 {
        one_by_one.extend(together);
    } else if !together.is_empty() {
        one_by_one.extend(register_together(sessions, lease, together).await);
    }
    let mut singles = JoinSet::new();
    for claim in one_by_one {
        let sessions = sessions.clone();
        singles.spawn(async move {
            let found = sessions
                .register_or_read(&claim.client_id, &claim.key, 0, lease)
                .await;
            let _ = claim.reply.send(found);
        });
    }
    while singles.join_next().await.is_some() {}
}

/// One transaction for every claim; returns the claims it could not
/// settle (their key was absent, but another key of the batch was not).
async fn register_together(
    sessions: &ClusterSessions,
    lease: i64,
    claims: Vec<FreshClaim>,
) -> Vec<FreshClaim> {
    let value = sessions.registrations.value().to_vec();
    let txn = Txn::new()
        .when(
            claims
                .iter()
                .map(|c| Compare::mod_revision(c.key.clone(), CompareOp::Equal, 0))
                .collect::<Vec<_>>(),
        )
        .and_then(
            claims
                .iter()
                .map(|c| {
                    TxnOp::put(
                        c.key.clone(),
                        value.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .or_else(
            claims
                .iter()
                .map(|c| TxnOp::get(c.key.clone(), None))
                .collect::<Vec<_>>(),
        );
    let mut client = sessions.etcd();
    let response = match tokio::time::timeout(LOOKUP_TIMEOUT, client.txn(txn)).await {
        Ok(Ok(response)) => response,
        failed => {
            let why = match failed {
                Ok(Err(error)) => error.to_string(),
                _ => "timed out".to_string(),
            };
            warn!(error = %why, clients = claims.len(), "cannot register clients in etcd; serving them locally");
            for claim in claims {
                let _ = claim.reply.send(None);
            }
            return Vec::new();
        }
    };
    if response.succeeded() {
        let revision = response.header().map_or(0, |h| h.revision());
        for claim in claims {
            let _ = claim.reply.send(Some(Registration::Ours(revision)));
        }
        return Vec::new();
    }
    // Some key exists: the gets, in order, say which.
    let gets = response.op_responses();
    let mut unsettled = Vec::new();
    for (claim, op) in claims.into_iter().zip(gets) {
        let kv = match &op {
            TxnOpResponse::Get(get) => get.kvs().first(),
            _ => None,
        };
        match kv {
            Some(kv) => {
                let _ = claim.reply.send(Some(sessions.registration_of(kv)));
            }
            None => unsettled.push(claim),
        }
    }
    unsettled
}
