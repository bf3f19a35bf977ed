//! How long a cluster task waits before it tries etcd or a peer again:
//! doubling from 100 ms up to 5 s, back to the start after a success.

use std::time::Duration;

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
