//! What the cluster keeps in etcd and how: the key schema ([`keys`]), the
//! node's lease ([`lease`]), the keys it owns under that lease, written in
//! batches and rewritten after a new lease ([`leased_keys`]), and local
//! copies of other nodes' keys ([`mirror`]).

pub mod keys;
pub mod lease;
pub mod leased_keys;
pub mod mirror;
