//! Where each client's session is, cluster-wide: the session directory
//! the broker asks on every CONNECT (`session::directory::SessionDirectory`).
//!
//! - `client_directory = "home"` (the default): each client id has a home
//!   node ([`view`]: rendezvous hashing over the serving nodes) that knows
//!   where its session is ([`home`]); the owners tell the homes
//!   ([`owner`]).
//! - `client_directory = "etcd"`: `clients/<client-id>` keys ([`etcd`]).
//!
//! Either way a session that is elsewhere is fetched from the node that
//! has it, or handed to another, over gRPC ([`moves`]).

pub mod etcd;
pub mod home;
pub mod moves;
pub mod owner;
pub mod view;
