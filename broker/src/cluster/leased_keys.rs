//! A set of etcd keys this node owns under its lease: routes, client
//! registrations. Changes are coalesced per key (the latest wins), written
//! in batched transactions in the background, retried while etcd is away,
//! and all written again under a new lease when the old one was lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::lease::LeaseWatch;
use super::mirror::Backoff;

/// etcd's default limit of operations per transaction.
const TXN_OPS: usize = 128;

#[derive(Default)]
struct Pending {
    /// Every key this node wants to exist.
    owned: HashSet<String>,
    /// Writes not yet in etcd: key -> present.
    dirty: HashMap<String, bool>,
}

pub struct LeasedKeys {
    /// The value every key carries.
    value: Vec<u8>,
    /// Delete a key only while it still holds `value`: another node may
    /// have taken it over meanwhile (client registrations).
    guarded_delete: bool,
    pending: Mutex<Pending>,
    wake: Notify,
}

impl LeasedKeys {
    pub fn new(value: Vec<u8>, guarded_delete: bool) -> Arc<LeasedKeys> {
        Arc::new(LeasedKeys {
            value,
            guarded_delete,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
        })
    }

    pub fn insert(&self, key: String) {
        let mut pending = self.pending.lock();
        pending.owned.insert(key.clone());
        pending.dirty.insert(key, true);
        drop(pending);
        self.wake.notify_one();
    }

    /// Inserts `key` unless this node already owns it (no write then).
    pub fn insert_if_absent(&self, key: String) {
        if !self.pending.lock().owned.contains(&key) {
            self.insert(key);
        }
    }

    /// Records a key the caller already wrote under the current lease: it is
    /// owned (and rewritten under a new lease) without another write now.
    pub fn adopt(&self, key: String) {
        let mut pending = self.pending.lock();
        pending.dirty.remove(&key);
        pending.owned.insert(key);
    }

    /// The value every key carries.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    pub fn remove(&self, key: String) {
        let mut pending = self.pending.lock();
        pending.owned.remove(&key);
        pending.dirty.insert(key, false);
        drop(pending);
        self.wake.notify_one();
    }

    /// Keys this node owns.
    pub fn len(&self) -> usize {
        self.pending.lock().owned.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes not yet in etcd.
    pub fn unwritten(&self) -> usize {
        self.pending.lock().dirty.len()
    }

    /// Writes pending changes until the process ends.
    pub async fn run(self: Arc<Self>, mut client: Client, mut lease: LeaseWatch) {
        let mut backoff = Backoff::default();
        let mut current_lease = None;
        loop {
            let lease_id = *lease.borrow_and_update();
            if lease_id != current_lease {
                current_lease = lease_id;
                if lease_id.is_some() {
                    // A new lease: every key must be written under it.
                    let mut guard = self.pending.lock();
                    let pending = &mut *guard;
                    for key in &pending.owned {
                        pending.dirty.insert(key.clone(), true);
                    }
                }
            }
            let Some(lease_id) = current_lease else {
                let _ = lease.changed().await;
                continue;
            };
            let batch: Vec<(String, bool)> = {
                let mut pending = self.pending.lock();
                let keys: Vec<String> = pending.dirty.keys().take(TXN_OPS).cloned().collect();
                keys.into_iter()
                    .filter_map(|k| pending.dirty.remove_entry(&k))
                    .collect()
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = lease.changed() => {}
                }
                continue;
            }
            match self.write(&mut client, lease_id, &batch).await {
                Ok(()) => {
                    backoff.reset();
                    debug!(changes = batch.len(), "leased keys written");
                }
                Err(error) => {
                    warn!(%error, changes = batch.len(), "cannot write to etcd; will retry");
                    {
                        let mut pending = self.pending.lock();
                        for (key, present) in batch {
                            // A newer change of the same key wins.
                            pending.dirty.entry(key).or_insert(present);
                        }
                    }
                    backoff.wait().await;
                }
            }
        }
    }

    async fn write(
        &self,
        client: &mut Client,
        lease: i64,
        batch: &[(String, bool)],
    ) -> Result<(), etcd_client::Error> {
        let mut puts = Vec::new();
        for (key, present) in batch {
            if *present {
                puts.push(TxnOp::put(
                    key.clone(),
                    self.value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ));
            } else if self.guarded_delete {
                // One transaction per guarded delete: its condition is its own.
                let guard = Compare::value(key.clone(), CompareOp::Equal, self.value.clone());
                client
                    .txn(
                        Txn::new()
                            .when(vec![guard])
                            .and_then(vec![TxnOp::delete(key.clone(), None)]),
                    )
                    .await?;
            } else {
                puts.push(TxnOp::delete(key.clone(), None));
            }
        }
        if !puts.is_empty() {
            client.txn(Txn::new().and_then(puts)).await?;
        }
        Ok(())
    }
}
