//! A set of etcd keys this node owns under its lease: routes, client
//! registrations. Changes are coalesced per key (the latest wins), written
//! in batched transactions in the background, retried while etcd is away,
//! and all written again under a new lease when the old one was lost.
//! Each key remembers the etcd revision it was last written at, so that a
//! caller can wait until its key is in etcd ([`LeasedKeys::written`]).

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::cluster::backoff::Backoff;
use crate::cluster::etcd::lease::LeaseWatch;

/// etcd's default limit of operations per transaction.
const TXN_OPS: usize = 128;

#[derive(Default)]
struct Pending {
    /// Every key this node wants to exist, with the revision it was last
    /// written at under the current lease (0: not yet).
    owned: HashMap<String, i64>,
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
    /// Bumped after every successful write, for [`LeasedKeys::written`].
    writes: watch::Sender<u64>,
}

impl LeasedKeys {
    pub fn new(value: Vec<u8>, guarded_delete: bool) -> Arc<LeasedKeys> {
        Arc::new(LeasedKeys {
            value,
            guarded_delete,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            writes: watch::channel(0).0,
        })
    }

    pub fn insert(&self, key: String) {
        let mut pending = self.pending.lock();
        pending.owned.insert(key.clone(), 0);
        pending.dirty.insert(key, true);
        drop(pending);
        self.wake.notify_one();
    }

    /// Inserts `key` unless this node already owns it (no write then).
    pub fn insert_if_absent(&self, key: String) {
        if !self.pending.lock().owned.contains_key(&key) {
            self.insert(key);
        }
    }

    /// Records a key the caller already wrote under the current lease: it is
    /// owned (and rewritten under a new lease) without another write now.
    pub fn adopt(&self, key: String, revision: i64) {
        let mut pending = self.pending.lock();
        pending.dirty.remove(&key);
        pending.owned.insert(key, revision);
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

    /// Waits until `key` is in etcd under the current lease and returns the
    /// revision it was written at; `None` once the key is no longer owned
    /// (removed meanwhile). Waits as long as etcd is away: bound it.
    pub async fn written(&self, key: &str) -> Option<i64> {
        let mut writes = self.writes.subscribe();
        loop {
            writes.borrow_and_update();
            match self.pending.lock().owned.get(key) {
                None => return None,
                Some(&revision) if revision > 0 => return Some(revision),
                Some(_) => {}
            }
            if writes.changed().await.is_err() {
                return None;
            }
        }
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
                    for (key, revision) in pending.owned.iter_mut() {
                        *revision = 0;
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
                Ok(revision) => {
                    backoff.reset();
                    self.record_written(&batch, revision);
                    debug!(changes = batch.len(), revision, "leased keys written");
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

    /// Marks the keys of a written batch with the revision they got, unless
    /// they changed again meanwhile (then a newer write is pending).
    fn record_written(&self, batch: &[(String, bool)], revision: i64) {
        let mut guard = self.pending.lock();
        let pending = &mut *guard;
        for (key, present) in batch {
            if *present
                && !pending.dirty.contains_key(key)
                && let Some(written) = pending.owned.get_mut(key)
            {
                *written = revision;
            }
        }
        drop(guard);
        self.writes.send_modify(|n| *n += 1);
    }

    /// Deletes keys that still hold this node's value: all in one
    /// transaction when none was taken over meanwhile (a wave of
    /// disconnects), else each under its own condition.
    async fn delete_guarded(
        &self,
        client: &mut Client,
        keys: &[&String],
    ) -> Result<(), etcd_client::Error> {
        let guard =
            |key: &String| Compare::value(key.clone(), CompareOp::Equal, self.value.clone());
        let delete = |key: &String| TxnOp::delete(key.clone(), None);
        let all = Txn::new()
            .when(keys.iter().map(|k| guard(k)).collect::<Vec<_>>())
            .and_then(keys.iter().map(|k| delete(k)).collect::<Vec<_>>());
        if keys.len() > 1 && client.txn(all).await?.succeeded() {
            return Ok(());
        }
        for key in keys {
            client
                .txn(
                    Txn::new()
                        .when(vec![guard(key)])
                        .and_then(vec![delete(key)]),
                )
                .await?;
        }
        Ok(())
    }

    /// Writes one batch; returns the revision of its puts.
    async fn write(
        &self,
        client: &mut Client,
        lease: i64,
        batch: &[(String, bool)],
    ) -> Result<i64, etcd_client::Error> {
        let mut puts = Vec::new();
        let mut guarded = Vec::new();
        for (key, present) in batch {
            if *present {
                puts.push(TxnOp::put(
                    key.clone(),
                    self.value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ));
            } else if self.guarded_delete {
                guarded.push(key);
            } else {
                puts.push(TxnOp::delete(key.clone(), None));
            }
        }
        if !guarded.is_empty() {
            self.delete_guarded(client, &guarded).await?;
        }
        let mut revision = 0;
        if !puts.is_empty() {
            let response = client.txn(Txn::new().and_then(puts)).await?;
            revision = response.header().map_or(0, |h| h.revision());
        }
        Ok(revision)
    }
}
