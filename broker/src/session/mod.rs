//! Sessions: their state, the queue that feeds them, the registry of client
//! ids, and the directory that says where a session lives (cluster).

pub mod directory;
pub mod mailbox;
pub mod registry;
pub mod state;

pub use state::{Outbound, OutboundPhase, SessionState, StoredSubscription};
