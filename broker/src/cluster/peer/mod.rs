//! The links between nodes, this node's side: a long-lived `Forward`
//! stream to each other node ([`links`], queued by [`link_queue`]), clients
//! for the other calls ([`client`]), mutual TLS ([`tls`]), and the wire
//! form of a forwarded message ([`wire`]). What this node answers is
//! `cluster::service`.

pub mod client;
mod link_queue;
pub mod links;
pub mod tls;
pub mod wire;

/// Largest gRPC message between peers: a batch of at most 1 MiB of
/// payloads, or one message up to MQTT's largest packet (256 MiB), or a
/// session with its queue. Peers are authenticated; this only bounds them.
pub const MAX_PEER_MESSAGE: usize = 272 * 1024 * 1024;
