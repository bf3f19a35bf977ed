//! The words every part of a node shares: who a node is and where it is in
//! its life. Kept apart so that the router, the sessions, the cluster and
//! the management surface can all name a node without depending on one
//! another.

use std::sync::Arc;

/// A broker node's identity in the cluster (shared, cheap to clone).
pub type NodeId = Arc<str>;

/// Where a node is in its life (`/readyz`, the node record in etcd, the
/// admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Serving,
    /// Refusing new clients and sending the connected ones elsewhere.
    Draining,
    /// No client connection and no session left on the node.
    Drained,
}

impl NodeState {
    /// The name in node records and API answers.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Serving => "serving",
            NodeState::Draining => "draining",
            NodeState::Drained => "drained",
        }
    }

    /// Reads a node record's state; `None` for a name this version does
    /// not know (a newer node's), which counts as not serving.
    pub fn parse(name: &str) -> Option<NodeState> {
        [NodeState::Serving, NodeState::Draining, NodeState::Drained]
            .into_iter()
            .find(|state| state.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reads_back_from_its_name_and_unknown_names_are_none() {
        for state in [NodeState::Serving, NodeState::Draining, NodeState::Drained] {
            assert_eq!(NodeState::parse(state.as_str()), Some(state));
        }
        assert_eq!(NodeState::parse("Serving"), None);
        assert_eq!(NodeState::parse("retiring"), None);
    }
}
