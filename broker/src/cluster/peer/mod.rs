//! The links between nodes, this node's side: a long-lived `Forward`
//! stream to each other node ([`links`], queued by `link_queue`), clients
//! for the other calls ([`client`]), mutual TLS ([`tls`]), and the wire
//! form of a forwarded message ([`wire`]). What this node answers is
//! `cluster::service`.

pub mod client;
mod link_queue;
pub mod links;
pub mod tls;
pub mod wire;

use std::time::Duration;

use crate::node::NodeId;

/// Largest gRPC message between peers: a batch of at most 1 MiB of
/// payloads, or one message up to MQTT's largest packet (256 MiB), or a
/// session with its queue. Peers are authenticated; this only bounds them.
pub const MAX_PEER_MESSAGE: usize = 272 * 1024 * 1024;

/// Why a call to another node brought no usable answer. Cloneable: one
/// failed call can answer several waiting callers (batched claims).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerCallError {
    #[error("node {0} is not a live member")]
    NotMember(NodeId),
    #[error("no serving node in the membership view")]
    NoServingNode,
    #[error("cannot reach the peer at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("{call} got no answer within {after:?}")]
    NoAnswer { call: &'static str, after: Duration },
    #[error("{call} failed: {} ({:?})", .status.message(), .status.code())]
    Failed {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("{call}: {problem}")]
    BadAnswer { call: &'static str, problem: String },
    #[error("{call} was abandoned: this node is stopping")]
    Abandoned { call: &'static str },
}

impl PeerCallError {
    /// `Unreachable`, with the chain of causes of `error` as the reason.
    pub fn unreachable(address: &str, error: &dyn std::error::Error) -> PeerCallError {
        PeerCallError::Unreachable {
            address: address.to_string(),
            reason: describe(error),
        }
    }
}

/// An error and its causes on one line.
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Wrappers (io::Error around a rustls error) often repeat their cause.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A peer call's answer within `after`, or why there is none.
pub async fn answer_within<T>(
    call: &'static str,
    after: Duration,
    pending: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, PeerCallError> {
    tokio::time::timeout(after, pending)
        .await
        .map_err(|_| PeerCallError::NoAnswer { call, after })?
        .map(tonic::Response::into_inner)
        .map_err(|status| PeerCallError::Failed { call, status })
}
