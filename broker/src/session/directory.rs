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
}

pub type Claim<'a> = Pin<Box<dyn Future<Output = Option<MovedSession>> + Send + 'a>>;

pub trait SessionDirectory: Send + Sync + 'static {
    /// Takes the session of `client_id` from the node that has it (kicking
    /// its connection there), or `None` when no other node has one.
    fn claim<'a>(&'a self, client_id: &'a str) -> Claim<'a>;
    /// This node owns the session of `client_id` now.
    fn register(&self, client_id: &str);
    /// The session of `client_id` ended (or left) this node.
    fn unregister(&self, client_id: &str);
}
