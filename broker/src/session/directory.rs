//! Where sessions are in a cluster. A node asks the directory, when a
//! client connects, to bring that client's session over from whichever node
//! has it; and tells it which sessions it owns. The single-node broker has
//! no directory.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::message::Delivery;
use crate::session::state::SessionState;

/// A session on its way from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub struct MovedSession {
    pub state: SessionState,
    /// Messages queued for the client, oldest first.
    pub queued: Vec<Delivery>,
}

impl MovedSession {
    /// The compact binary form sent between nodes (same broker version on
    /// both ends during a rolling upgrade is not assumed: postcard encodes
    /// by field order, so fields are only ever appended).
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<MovedSession, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Merges `later`, a session of the same client made while this one was
    /// on its way (a racing connect on another node), into this one:
    /// subscriptions this one lacks are added, and its messages, in flight
    /// or queued, are queued after this one's (to be sent afresh).
    pub fn absorb(mut self, later: MovedSession) -> MovedSession {
        for (filter, subscription) in later.state.subscriptions {
            self.state
                .subscriptions
                .entry(filter)
                .or_insert(subscription);
        }
        self.queued
            .extend(later.state.outbound.into_iter().map(|o| o.delivery));
        self.queued.extend(later.queued);
        self
    }
}

pub type Claim<'a> = Pin<Box<dyn Future<Output = Option<MovedSession>> + Send + 'a>>;
/// Why the directory cannot say where a session is (etcd or the home node
/// did not answer); each directory has its own error type.
pub type LookupError = Box<dyn std::error::Error + Send + Sync>;
/// The node the directory names for a client id (`None`: no session), or
/// why it cannot say.
pub type Located<'a> =
    Pin<Box<dyn Future<Output = Result<Option<String>, LookupError>> + Send + 'a>>;

pub trait SessionDirectory: Send + Sync + 'static {
    /// Takes the session of `client_id` from the node that has it (kicking
    /// its connection there), or `None` when no other node has one.
    fn claim<'a>(&'a self, client_id: &'a str) -> Claim<'a>;
    /// This node owns the session of `client_id` now.
    fn register(&self, client_id: &str);
    /// The session of `client_id` ended (or left) this node.
    fn unregister(&self, client_id: &str);
    /// Which node has the session of `client_id`, as the directory knows.
    fn locate<'a>(&'a self, client_id: &'a str) -> Located<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SessionId;
    use crate::session::state::StoredSubscription;

    #[test]
    fn absorbing_a_racers_fresh_session_keeps_the_real_one() {
        let mut real = SessionState::new(SessionId(1), "c".into(), 60);
        real.subscriptions.insert(
            "a/b".into(),
            StoredSubscription {
                options: Default::default(),
                identifier: Some(7),
            },
        );
        let mut racer = SessionState::new(SessionId(2), "c".into(), 60);
        racer.subscriptions.insert(
            "x/#".into(),
            StoredSubscription {
                options: Default::default(),
                identifier: None,
            },
        );
        let first = MovedSession {
            state: real,
            queued: Vec::new(),
        };
        let later = MovedSession {
            state: racer,
            queued: Vec::new(),
        };
        let merged = first.absorb(later);
        assert_eq!(merged.state.id, SessionId(1));
        assert_eq!(merged.state.subscriptions.len(), 2);
        assert_eq!(merged.state.subscriptions["a/b"].identifier, Some(7));
    }
}
