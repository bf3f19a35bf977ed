//! Keeping a local copy of an etcd prefix: a snapshot, then a watch from
//! the snapshot's revision, and a fresh snapshot whenever the watch breaks
//! or falls behind a compaction. A mirror therefore never misses a change
//! and never keeps a key that is gone (no phantom routes or peers).
//!
//! [`MirrorProgress`] tells how far the copy has caught up (an etcd
//! revision), and can ask etcd to confirm it, for route sync.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::cluster::backoff::Backoff;

/// The etcd revision up to which a mirror holds every change of its
/// prefix.
#[derive(Debug, Default)]
pub struct MirrorProgress {
    applied: watch::Sender<i64>,
    /// Someone waits for a revision the mirror has not seen: ask etcd for a
    /// progress notification (the prefix may have no change at that
    /// revision, so no event would ever say it was reached).
    asked: Notify,
}

/// How often a waiter asks again: etcd ignores a progress request while
/// the watch is catching up.
const PROGRESS_RETRY: Duration = Duration::from_millis(100);

impl MirrorProgress {
    pub fn new() -> Arc<MirrorProgress> {
        Arc::default()
    }

    /// Waits until the mirror holds every change up to `revision`; returns
    /// the revision reached, which is below `revision` if `patience` ran
    /// out first.
    pub async fn reach(&self, revision: i64, patience: Duration) -> i64 {
        let deadline = tokio::time::Instant::now() + patience;
        let mut applied = self.applied.subscribe();
        loop {
            let now = *applied.borrow_and_update();
            if now >= revision || tokio::time::Instant::now() >= deadline {
                return now;
            }
            self.asked.notify_one();
            let wake = (tokio::time::Instant::now() + PROGRESS_RETRY).min(deadline);
            let _ = tokio::time::timeout_at(wake, applied.changed()).await;
        }
    }

    fn advance(&self, revision: i64) {
        self.applied.send_if_modified(|applied| {
            let moved = revision > *applied;
            if moved {
                *applied = revision;
            }
            moved
        });
    }
}

/// What a mirror does with what it learns.
pub trait MirrorSink: Send + 'static {
    /// Replace everything with this snapshot, taken at `revision`.
    fn reset(&mut self, entries: Vec<(String, Vec<u8>)>, revision: i64);
    /// `key` was set at `revision`.
    fn put(&mut self, key: &str, value: &[u8], revision: i64);
    /// `key` was deleted at `revision`.
    fn delete(&mut self, key: &str, revision: i64);
    /// The copy now holds every change up to `revision` (after a snapshot,
    /// and after each batch of events).
    fn caught_up(&mut self, _revision: i64) {}
}

/// Mirrors `prefix` into `sink` until the process ends.
pub async fn run(
    mut client: Client,
    prefix: String,
    mut sink: impl MirrorSink,
    progress: Arc<MirrorProgress>,
) {
    let mut backoff = Backoff::default();
    loop {
        match mirror_once(&mut client, &prefix, &mut sink, &progress).await {
            Ok(()) => debug!(%prefix, "watch ended; resynchronising"),
            Err(error) => warn!(%prefix, %error, "etcd watch failed; resynchronising"),
        }
        backoff.wait().await;
    }
}

async fn mirror_once(
    client: &mut Client,
    prefix: &str,
    sink: &mut impl MirrorSink,
    progress: &MirrorProgress,
) -> Result<(), etcd_client::Error> {
    let (entries, revision) = snapshot(client, prefix).await?;
    sink.reset(entries, revision);
    sink.caught_up(revision);
    progress.advance(revision);

    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let (mut watcher, mut stream) = client.watch(prefix, Some(options)).await?;
    loop {
        let response = tokio::select! {
            response = stream.message() => match response? {
                Some(response) => response,
                None => return Ok(()),
            },
            _ = progress.asked.notified() => {
                watcher.request_progress().await?;
                continue;
            }
        };
        if response.canceled() || response.compact_revision() > 0 {
            // Fell behind a compaction: the only safe answer is a new snapshot.
            return Ok(());
        }
        let mut reached = 0;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            reached = reached.max(kv.mod_revision());
            let Ok(key) = kv.key_str() else { continue };
            match event.event_type() {
                EventType::Put => sink.put(key, kv.value(), kv.mod_revision()),
                EventType::Delete => sink.delete(key, kv.mod_revision()),
            }
        }
        if response.events().is_empty() && !response.created() {
            // A progress notification: every change up to the header's
            // revision has been sent.
            reached = response.header().map_or(0, |h| h.revision());
        }
        if reached > 0 {
            sink.caught_up(reached);
        }
        progress.advance(reached);
    }
}

/// Keys per snapshot page: a whole prefix in one response would exceed
/// gRPC's message limit long before etcd's limits (1M routes ~ 100 MB).
const PAGE: i64 = 10_000;

/// Every key under `prefix` as of one revision, read in pages pinned to
/// that revision so that the pages form one consistent snapshot.
async fn snapshot(
    client: &mut Client,
    prefix: &str,
) -> Result<(Vec<(String, Vec<u8>)>, i64), etcd_client::Error> {
    let end = prefix_end(prefix.as_bytes());
    let mut entries = Vec::new();
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let page = client.get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = page.header().map_or(0, |h| h.revision());
        }
        for kv in page.kvs() {
            if let Ok(key) = kv.key_str() {
                entries.push((key.to_string(), kv.value().to_vec()));
            }
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                // The next page starts right after the last key.
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((entries, revision)),
        }
    }
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(
            prefix_end(b"/starling/c/routes/"),
            b"/starling/c/routes0".to_vec()
        );
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }
}
