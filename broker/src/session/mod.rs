//! Sessions: their state ([`state`]), the queue that feeds them
//! ([`mailbox`]), the registry of client ids ([`registry`]), and the
//! directory that says where a session lives in a cluster ([`directory`]).
//! How a session begins and ends is `crate::lifecycle`.

pub mod directory;
pub mod mailbox;
pub mod registry;
pub mod state;

pub use state::{Outbound, OutboundPhase, SessionState, StoredSubscription};
