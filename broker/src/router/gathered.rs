//! Forwards one publisher makes while it handles what it read, encoded as
//! they are routed and queued on their links together once the read is
//! handled ([`Forwarder::queue_gathered`](super::store::Forwarder::queue_gathered)).
//!
//! Why: queuing each forwarded message on its own took the map of links'
//! read lock and the link queue's mutex for every message, four locked
//! instructions that together were about a tenth of the publishing node's
//! CPU under QoS 0 fan-in. Gathered, they are taken once per read for each
//! node (and every [`GATHER_MESSAGES`] messages).
//!
//! Only messages nobody waits on (no forward ticket) are gathered: a
//! publisher's tracked messages, and any message too large to gather, go
//! straight to their link after what was gathered before them. The buffers
//! live only while a read is handled, so an idle publisher keeps none.

use bytes::BytesMut;
use smallvec::SmallVec;

use crate::node::NodeId;

/// A node's gathering is queued once it holds this many messages...
pub const GATHER_MESSAGES: usize = 64;
/// ...or this many bytes.
pub const GATHER_BYTES: usize = 16 * 1024;
/// Larger messages (as encoded for the wire) are not gathered.
pub const GATHER_LARGEST: usize = 2 * 1024;

/// The encoded messages gathered for each node, in the order they came.
#[derive(Debug, Default)]
pub struct GatheredForwards {
    nodes: SmallVec<[Gathering; 1]>,
}

/// What was gathered for one node.
#[derive(Debug)]
pub struct Gathering {
    pub node: NodeId,
    /// Batch entries, as the forwarder encodes them.
    pub entries: BytesMut,
    pub messages: usize,
}

impl Gathering {
    /// Big enough to be queued now rather than at the end of the read.
    pub fn is_full(&self) -> bool {
        self.messages >= GATHER_MESSAGES || self.entries.len() >= GATHER_BYTES
    }
}

impl GatheredForwards {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Where messages for `node` are gathered (started if need be).
    pub fn for_node(&mut self, node: &NodeId) -> &mut Gathering {
        let at = match self.nodes.iter().position(|g| g.node == *node) {
            Some(at) => at,
            None => {
                self.nodes.push(Gathering {
                    node: node.clone(),
                    entries: BytesMut::with_capacity(GATHER_BYTES / 4),
                    messages: 0,
                });
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[at]
    }

    /// Everything gathered, leaving nothing.
    pub fn take(&mut self) -> SmallVec<[Gathering; 1]> {
        std::mem::take(&mut self.nodes)
    }
}

impl Drop for GatheredForwards {
    fn drop(&mut self) {
        // Every path that gathers queues before it returns: what is left
        // here would be lost without a count.
        debug_assert!(
            self.nodes.is_empty() || std::thread::panicking(),
            "gathered forwards dropped without being queued"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gathers_apart_in_order_of_first_use() {
        let (a, b): (NodeId, NodeId) = ("a".into(), "b".into());
        let mut gathered = GatheredForwards::default();
        assert!(gathered.is_empty());
        for (node, entry) in [(&a, b"1"), (&b, b"2"), (&a, b"3")] {
            let gathering = gathered.for_node(node);
            gathering.entries.extend_from_slice(entry);
            gathering.messages += 1;
        }
        let taken = gathered.take();
        assert!(gathered.is_empty());
        let summary: Vec<(&str, &[u8], usize)> = taken
            .iter()
            .map(|g| (&*g.node, &g.entries[..], g.messages))
            .collect();
        assert_eq!(summary, [("a", &b"13"[..], 2), ("b", &b"2"[..], 1)]);
    }

    #[test]
    fn a_gathering_is_full_by_count_or_by_size() {
        let node: NodeId = "a".into();
        let mut gathered = GatheredForwards::default();
        let gathering = gathered.for_node(&node);
        gathering.messages = GATHER_MESSAGES - 1;
        assert!(!gathering.is_full());
        gathering.messages += 1;
        assert!(gathering.is_full());
        gathering.messages = 1;
        gathering.entries.resize(GATHER_BYTES, 0);
        assert!(gathering.is_full());
        gathered.take();
    }
}
