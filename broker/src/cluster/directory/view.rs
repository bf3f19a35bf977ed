//! The membership view the client directory works in: the nodes of
//! `nodes/` with their leases, as of an etcd revision. Every client id has
//! a home among the view's serving nodes, chosen by rendezvous hashing, so
//! that a membership change moves only the ids whose home joined or left.
//!
//! Nodes compare views by [`View::hash`], which depends on the members
//! alone; [`View::label`] is the etcd revision at which this node saw the
//! view, and orders the directory's stamps across views.

use std::sync::Arc;

use crate::node::NodeId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: NodeId,
    /// The lease of the member's record: a node that lost its lease and
    /// came back is a new member (the others forgot what it owned).
    pub lease: i64,
    /// Serving nodes are homes; a draining node still owns sessions but
    /// is home to none.
    pub serving: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub label: i64,
    /// Sorted by node id.
    pub members: Vec<Member>,
    pub hash: u64,
}

impl View {
    /// No members known yet (before the first read of `nodes/`).
    pub fn empty() -> View {
        View::new(0, Vec::new())
    }

    pub fn new(label: i64, mut members: Vec<Member>) -> View {
        members.sort_by(|a, b| a.node.cmp(&b.node));
        let mut hash = Fnv::default();
        for member in &members {
            hash.write(member.node.as_bytes());
            hash.write(&[0xff]);
            hash.write(&member.lease.to_le_bytes());
            hash.write(&[u8::from(member.serving)]);
        }
        View {
            label,
            members,
            hash: hash.finish(),
        }
    }

    pub fn member(&self, node: &str) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.node.as_ref().cmp(node))
            .ok()
            .map(|at| &self.members[at])
    }

    /// Whether `node` under `lease` is a member of this view.
    pub fn has(&self, node: &str, lease: i64) -> bool {
        self.member(node).is_some_and(|m| m.lease == lease)
    }

    /// The home of `client_id`: the serving member with the highest
    /// rendezvous weight. `None` while no node serves.
    pub fn home_of(&self, client_id: &str) -> Option<&Member> {
        self.members
            .iter()
            .filter(|m| m.serving)
            .max_by_key(|m| (weight(&m.node, client_id), &m.node))
    }
}

pub type SharedView = Arc<View>;

/// The rendezvous weight of `node` for `client_id`. It must be the same in
/// every build of the broker (nodes of different versions share a
/// cluster during a rolling upgrade), hence a hash written out here rather
/// than std's, whose algorithm may change between Rust releases.
fn weight(node: &str, client_id: &str) -> u64 {
    let mut hash = Fnv::default();
    hash.write(node.as_bytes());
    hash.write(&[0xff]);
    hash.write(client_id.as_bytes());
    hash.finish()
}

/// FNV-1a, 64 bits, with a final mix (FNV alone spreads strings that
/// differ only at the end poorly over the high bits).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// splitmix64's finaliser.
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: &str, lease: i64) -> Member {
        Member {
            node: Arc::from(node),
            lease,
            serving: true,
        }
    }

    fn view(nodes: &[&str]) -> View {
        View::new(1, nodes.iter().map(|n| member(n, 7)).collect())
    }

    #[test]
    fn the_hash_depends_on_the_members_not_their_order_or_label() {
        let a = View::new(5, vec![member("a", 1), member("b", 2)]);
        let b = View::new(9, vec![member("b", 2), member("a", 1)]);
        assert_eq!(a.hash, b.hash);
        let renewed = View::new(9, vec![member("b", 3), member("a", 1)]);
        assert_ne!(a.hash, renewed.hash);
        let mut draining = b.members.clone();
        draining[0].serving = false;
        assert_ne!(a.hash, View::new(9, draining).hash);
    }

    #[test]
    fn homes_are_spread_and_a_new_node_takes_only_its_share() {
        let three = view(&["n1", "n2", "n3"]);
        let four = view(&["n1", "n2", "n3", "n4"]);
        let ids: Vec<String> = (0..30_000).map(|i| format!("device-{i}")).collect();
        let mut per_node = std::collections::HashMap::<String, usize>::new();
        let mut moved = 0;
        for id in &ids {
            let before = three.home_of(id).map(|m| m.node.clone());
            let after = four.home_of(id).map(|m| m.node.clone());
            *per_node
                .entry(before.as_deref().unwrap_or("").to_string())
                .or_default() += 1;
            if before != after {
                // Only to the newcomer: nobody else's ids move.
                assert_eq!(after.as_deref(), Some("n4"));
                moved += 1;
            }
        }
        for count in per_node.values() {
            assert!((9_000..11_000).contains(count), "uneven: {per_node:?}");
        }
        assert!((6_500..8_500).contains(&moved), "moved {moved} of 30000");
    }

    #[test]
    fn draining_nodes_are_home_to_nobody() {
        let mut members = vec![member("a", 1), member("b", 1)];
        members[1].serving = false;
        let view = View::new(1, members);
        for i in 0..100 {
            let home = view.home_of(&format!("c{i}")).map(|m| m.node.to_string());
            assert_eq!(home.as_deref(), Some("a"));
        }
        assert!(View::empty().home_of("c").is_none());
    }

    #[test]
    fn weights_are_fixed_across_builds() {
        // Pinned: a change here would send ids to different homes on
        // nodes of different versions.
        assert_eq!(weight("n1", "device-1"), 8_180_115_381_187_992_091);
    }
}
