//! Sessions: their state, the queue that feeds them, the registry of client
//! ids, and the lifecycle rules (takeover, expiry, will delay).

pub mod directory;
pub mod lifecycle;
pub mod mailbox;
pub mod registry;
pub mod state;

pub use state::{Outbound, OutboundPhase, SessionState, StoredSubscription};
