//! The process's limit on open files. Every client connection (pending or
//! not) is a file; a default soft limit of 1,024 let 1,100 silent sockets
//! starve a broker configured for 100,000 connections. At start-up the soft
//! limit is raised to the hard one, and a limit still below what the
//! configuration may open is reported, naming the settings.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tracing::{info, warn};

use crate::config::Config;

/// Files the broker needs besides client connections: listeners, peer
/// links, etcd, the admin API, logs, and some slack.
const FILES_BESIDES_CLIENTS: u64 = 1024;

/// Raises the soft limit to the hard limit and warns when the result is
/// below `max_connections + max_pending_connects` plus the broker's own.
pub fn raise_limit(config: &Config) {
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current;
    if limit.current != limit.maximum {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        ) {
            Ok(()) => {
                info!(from = ?limit.current, to = ?limit.maximum, "raised the open files limit");
                soft = limit.maximum;
            }
            Err(error) => warn!(%error, "cannot raise the open files limit"),
        }
    }
    let needed = config.limits.max_connections as u64
        + config.limits.max_pending_connects as u64
        + FILES_BESIDES_CLIENTS;
    if let Some(soft) = soft
        && soft < needed
    {
        warn!(
            open_files_limit = soft,
            needed,
            "the open files limit is below max_connections + max_pending_connects + {FILES_BESIDES_CLIENTS}: lower those settings or raise the limit (ulimit -n, LimitNOFILE)"
        );
    }
}
