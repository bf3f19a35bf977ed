//! The cluster's background tasks. Every long-lived loop (mirrors, key
//! writers, the lease, peer links, the client directory, the peer server)
//! is spawned through [`Tasks`], so that leaving the cluster stops them all
//! and waits until they have, instead of leaving them to die with the
//! runtime in whatever state they were.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns and tracks the cluster's tasks; clones share them.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// Runs `task` until it ends or the tasks are stopped.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// Stops every task (each at its next await) and waits, at most
    /// `patience`, until they ended. Returns how many were still running.
    pub async fn stop(&self, patience: Duration) -> usize {
        self.stop.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(patience, self.tracker.wait()).await;
        self.tracker.len()
    }

    /// No task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stopping_ends_endless_tasks_and_waits_for_them() {
        let tasks = Tasks::default();
        for _ in 0..3 {
            tasks.spawn(std::future::pending());
        }
        tasks.spawn(async {});
        assert_eq!(tasks.stop(Duration::from_secs(5)).await, 0);
        assert!(tasks.is_empty());
    }
}
