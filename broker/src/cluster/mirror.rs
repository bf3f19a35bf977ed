//! Keeping a local copy of an etcd prefix: a snapshot, then a watch from
//! the snapshot's revision, and a fresh snapshot whenever the watch breaks
//! or falls behind a compaction. A mirror therefore never misses a change
//! and never keeps a key that is gone (no phantom routes or peers).

use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tracing::{debug, warn};

/// What a mirror does with what it learns.
pub trait MirrorSink: Send + 'static {
    /// Replace everything with this snapshot.
    fn reset(&mut self, entries: Vec<(String, Vec<u8>)>);
    fn put(&mut self, key: &str, value: &[u8]);
    fn delete(&mut self, key: &str);
}

/// Mirrors `prefix` into `sink` until the process ends.
pub async fn run(mut client: Client, prefix: String, mut sink: impl MirrorSink) {
    let mut backoff = Backoff::default();
    loop {
        match mirror_once(&mut client, &prefix, &mut sink).await {
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
) -> Result<(), etcd_client::Error> {
    let snapshot = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = snapshot.header().map_or(0, |h| h.revision());
    let entries = snapshot
        .kvs()
        .iter()
        .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value().to_vec())))
        .collect();
    sink.reset(entries);

    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let (_watcher, mut stream) = client.watch(prefix, Some(options)).await?;
    while let Some(response) = stream.message().await? {
        if response.canceled() || response.compact_revision() > 0 {
            // Fell behind a compaction: the only safe answer is a new snapshot.
            return Ok(());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            match event.event_type() {
                EventType::Put => sink.put(key, kv.value()),
                EventType::Delete => sink.delete(key),
            }
        }
    }
    Ok(())
}

/// Exponential backoff from 100 ms to 5 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }

    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}
