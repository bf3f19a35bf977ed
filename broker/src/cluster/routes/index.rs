//! Which other node wants which filter: a trie from filter to node ids, fed
//! by the mirror of `routes/`. Read on every publish, rebuilt on resync.
//!
//! Built to hold millions of routes: most trie nodes of per-device filters
//! (`devices/<id>/cmd/#`) have one child and one node id, so children stay
//! a small vector until there are many of them, and node ids sit inline.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;
use starling_codec::topic::parse_filter;
use tokio::sync::Notify;
use tracing::warn;

use crate::cluster::etcd::keys::Keys;
use crate::cluster::etcd::mirror::{MirrorProgress, MirrorSink};
use crate::cluster::routes::lapses::Lapses;
use crate::config::TopicLimits;
use crate::message::ShareKey;
use crate::node::NodeId;

/// Hashed on every publish: foldhash rather than SipHash (see the trie).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Up to this many children a node keeps them in a vector, searched
/// linearly; beyond, in a hash map.
const FEW_CHILDREN: usize = 8;

/// A trie node's children by level.
#[derive(Debug)]
enum Children {
    Few(Vec<(Box<str>, Node)>),
    Many(Box<FastMap<Box<str>, Node>>),
}

impl Default for Children {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl Children {
    fn get(&self, level: &str) -> Option<&Node> {
        match self {
            Children::Few(few) => few.iter().find(|(l, _)| &**l == level).map(|(_, n)| n),
            Children::Many(many) => many.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node> {
        match self {
            Children::Few(few) => few.iter_mut().find(|(l, _)| &**l == level).map(|(_, n)| n),
            Children::Many(many) => many.get_mut(level),
        }
    }

    fn get_or_insert(&mut self, level: &str) -> &mut Node {
        if let Children::Few(few) = self
            && few.len() >= FEW_CHILDREN
            && !few.iter().any(|(l, _)| &**l == level)
        {
            let many: FastMap<Box<str>, Node> = std::mem::take(few).into_iter().collect();
            *self = Children::Many(Box::new(many));
        }
        match self {
            Children::Few(few) => {
                let index = match few.iter().position(|(l, _)| &**l == level) {
                    Some(index) => index,
                    None => {
                        // Grow by one: most nodes keep a single child.
                        few.reserve_exact(1);
                        few.push((level.into(), Node::default()));
                        few.len() - 1
                    }
                };
                &mut few[index].1
            }
            Children::Many(many) => many.entry(level.into()).or_default(),
        }
    }

    fn remove(&mut self, level: &str) {
        match self {
            Children::Few(few) => {
                few.retain(|(l, _)| &**l != level);
                few.shrink_to_fit();
            }
            Children::Many(many) => {
                many.remove(level);
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Children::Few(few) => few.is_empty(),
            Children::Many(many) => many.is_empty(),
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    children: Children,
    /// Nodes with plain subscriptions of this filter (usually one).
    nodes: SmallVec<[Arc<str>; 1]>,
    /// Share groups of this filter and the nodes with members.
    groups: Vec<(Arc<ShareKey>, Vec<Arc<str>>)>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.groups.is_empty() && self.children.is_empty()
    }
}

/// A route's filter: `$share/<group>/<filter>` names a share group.
fn split_route(route: &str) -> (Option<&str>, &str) {
    match route
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((group, filter)) => (Some(group), filter),
        None => (None, route),
    }
}

#[derive(Debug, Default)]
struct Trie {
    root: Node,
    routes: usize,
}

impl Trie {
    fn insert(&mut self, route: &str, node: &Arc<str>) {
        let (group, filter) = split_route(route);
        let mut at = &mut self.root;
        for level in filter.split('/') {
            at = at.children.get_or_insert(level);
        }
        let added = match group {
            None => {
                let known = at.nodes.contains(node);
                if !known {
                    at.nodes.push(node.clone());
                }
                !known
            }
            Some(group) => {
                let index = match at.groups.iter().position(|(k, _)| &*k.group == group) {
                    Some(index) => index,
                    None => {
                        let key = Arc::new(ShareKey {
                            group: group.into(),
                            filter: filter.into(),
                        });
                        at.groups.push((key, Vec::new()));
                        at.groups.len() - 1
                    }
                };
                let nodes = &mut at.groups[index].1;
                let known = nodes.contains(node);
                if !known {
                    nodes.push(node.clone());
                }
                !known
            }
        };
        if added {
            self.routes += 1;
        }
    }

    fn remove(&mut self, route: &str, node: &str) {
        let (group, filter) = split_route(route);
        let levels: Vec<&str> = filter.split('/').collect();
        if remove_at(&mut self.root, &levels, group, node) {
            self.routes -= 1;
        }
    }

    fn matches<'a>(&'a self, topic: &str, out: &mut SmallVec<[&'a Node; 8]>) {
        collect(
            &self.root,
            starling_codec::topic::levels(topic),
            topic.starts_with('$'),
            true,
            out,
        );
    }
}

fn remove_at(at: &mut Node, levels: &[&str], group: Option<&str>, node: &str) -> bool {
    match levels.split_first() {
        None => match group {
            None => {
                let before = at.nodes.len();
                at.nodes.retain(|n| &**n != node);
                at.nodes.len() != before
            }
            Some(group) => {
                let Some(index) = at.groups.iter().position(|(k, _)| &*k.group == group) else {
                    return false;
                };
                let nodes = &mut at.groups[index].1;
                let before = nodes.len();
                nodes.retain(|n| &**n != node);
                let removed = nodes.len() != before;
                if nodes.is_empty() {
                    at.groups.swap_remove(index);
                }
                removed
            }
        },
        Some((level, rest)) => {
            let Some(child) = at.children.get_mut(level) else {
                return false;
            };
            let removed = remove_at(child, rest, group, node);
            if child.is_empty() {
                at.children.remove(level);
            }
            removed
        }
    }
}

/// Every trie node whose filter matches the topic.
fn collect<'a, 'b>(
    at: &'a Node,
    mut levels: impl Iterator<Item = &'b str> + Clone,
    dollar: bool,
    first: bool,
    out: &mut SmallVec<[&'a Node; 8]>,
) {
    match levels.next() {
        None => {
            out.push(at);
            if let Some(hash) = at.children.get("#") {
                out.push(hash);
            }
        }
        Some(level) => {
            if let Some(child) = at.children.get(level) {
                collect(child, levels.clone(), dollar, false, out);
            }
            if !(first && dollar) {
                if let Some(plus) = at.children.get("+") {
                    collect(plus, levels, dollar, false, out);
                }
                if let Some(hash) = at.children.get("#") {
                    out.push(hash);
                }
            }
        }
    }
}

/// How long the resolver waits for the `nodes/` mirror to reach a route
/// deletion's revision before deciding on what it knows.
const LAPSE_PATIENCE: Duration = Duration::from_secs(2);

/// The remote route index shared by the router (reads) and the mirror
/// (writes).
#[derive(Debug)]
pub struct RouteIndex {
    own_node: NodeId,
    keys: Keys,
    /// Routes whose filter breaks these are not indexed (see `admit`).
    limits: TopicLimits,
    trie: RwLock<Trie>,
    /// Bumped with every change of the trie, under its write lock: an
    /// answer of [`matching`](RouteIndex::matching) read at one version
    /// holds for as long as the version stays.
    version: AtomicU64,
    /// Routes of lapsed nodes, and deletions not decided yet
    /// (`cluster::lapses`).
    lapses: Mutex<Lapses>,
    /// Wakes the resolver: a deletion waits, or a node lapsed.
    lapse_work: Notify,
    /// Some node's routes are kept for it: publishes to share groups look.
    any_lapsed: std::sync::atomic::AtomicBool,
}

impl RouteIndex {
    pub fn new(
        own_node: &str,
        keys: Keys,
        limits: TopicLimits,
        lapse_grace: Duration,
    ) -> Arc<RouteIndex> {
        Arc::new(RouteIndex {
            own_node: NodeId::from(own_node),
            keys,
            limits,
            trie: RwLock::new(Trie::default()),
            version: AtomicU64::new(1),
            lapses: Mutex::new(Lapses::new(lapse_grace)),
            lapse_work: Notify::new(),
            any_lapsed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// `node`'s record vanished at `revision` while it was serving: its
    /// routes stay, suspect (see `cluster::lapses`).
    pub fn lapse(&self, node: &NodeId, revision: i64) {
        let mut lapses = self.lapses.lock();
        lapses.lapse(node, revision);
        self.any_lapsed
            .store(lapses.any_suspect(), Ordering::Release);
        drop(lapses);
        self.lapse_work.notify_one();
    }

    /// `node` has a record again.
    pub fn returned(&self, node: &NodeId) {
        self.lapses.lock().returned(node);
    }

    /// Decides route deletions once the `nodes/` mirror has their
    /// revision, and drops suspect routes whose grace ended; runs until
    /// the process ends.
    pub async fn resolve_lapses(self: Arc<Self>, nodes: Arc<MirrorProgress>) {
        loop {
            let wake = self.lapse_work.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let (waiting_for, next_expiry) = {
                let lapses = self.lapses.lock();
                (lapses.waiting_for(), lapses.next_expiry())
            };
            let reached = match waiting_for {
                // Not reached within the patience: decided on what is known.
                Some(revision) => {
                    nodes.reach(revision, LAPSE_PATIENCE).await;
                    revision
                }
                None => 0,
            };
            let remove = {
                let mut lapses = self.lapses.lock();
                let remove = lapses.resolve(reached, Instant::now());
                self.any_lapsed
                    .store(lapses.any_suspect(), Ordering::Release);
                remove
            };
            if !remove.is_empty() {
                self.change(|trie| {
                    for (node, route) in &remove {
                        trie.remove(route, node);
                    }
                });
            }
            if waiting_for.is_none() {
                match next_expiry {
                    Some(at) => {
                        let _ = tokio::time::timeout_at(at.into(), wake).await;
                    }
                    None => wake.await,
                }
            }
        }
    }

    /// See the field; never 0.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Changes the trie and bumps the version, under the write lock.
    fn change(&self, f: impl FnOnce(&mut Trie)) {
        let mut trie = self.trie.write();
        f(&mut trie);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// One walk for a publish: appends each remote node with a plain route
    /// matching `topic` (once), and each share group with a filter matching
    /// `topic` that has members on other nodes, with those nodes.
    pub fn matching(
        &self,
        topic: &str,
        nodes: &mut Vec<Arc<str>>,
        groups: &mut Vec<(Arc<ShareKey>, Vec<Arc<str>>)>,
    ) {
        let start = nodes.len();
        let trie = self.trie.read();
        let mut matched = SmallVec::<[&Node; 8]>::new();
        trie.matches(topic, &mut matched);
        let groups_from = groups.len();
        for node in matched {
            nodes.extend(node.nodes.iter().cloned());
            groups.extend(node.groups.iter().cloned());
        }
        drop(trie);
        if groups.len() > groups_from && self.any_lapsed.load(Ordering::Acquire) {
            // A share group's message goes to one member: not to one on a
            // node that lapsed while another can take it.
            let lapses = self.lapses.lock();
            for (_, members) in &mut groups[groups_from..] {
                if members.iter().any(|node| !lapses.is_suspect(node)) {
                    members.retain(|node| !lapses.is_suspect(node));
                }
            }
        }
        if nodes.len() - start > 1 {
            nodes[start..].sort_unstable();
            let mut unique: Vec<Arc<str>> = nodes.drain(start..).collect();
            unique.dedup();
            nodes.extend(unique);
        }
    }

    /// Remote routes known, for metrics and tests.
    pub fn len(&self) -> usize {
        self.trie.read().routes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A sink for the mirror of the `routes/` prefix.
    pub fn sink(self: &Arc<Self>) -> IndexSink {
        IndexSink {
            index: self.clone(),
            interned: HashMap::new(),
        }
    }
}

pub struct IndexSink {
    index: Arc<RouteIndex>,
    /// One `Arc<str>` per node id, shared by all its routes.
    interned: HashMap<String, Arc<str>>,
}

impl IndexSink {
    fn node_name(&mut self, node: &str) -> Arc<str> {
        self.interned
            .entry(node.to_string())
            .or_insert_with(|| Arc::from(node))
            .clone()
    }

    /// The node and filter of a route key of another node, if it is one
    /// this node can index: a filter that is not one, or that breaks this
    /// node's topic limits (another node's limits may differ; etcd may be
    /// written by hand), is skipped and logged, never indexed. Every node
    /// reads every route, so one bad key must never be fatal.
    fn admit<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let (node, filter) = self.index.keys.parse_route(key)?;
        if node == &*self.index.own_node {
            return None;
        }
        if !self.index.limits.admit(filter) || parse_filter(filter).is_err() {
            warn!(
                node,
                filter_bytes = filter.len(),
                "route in etcd is not a topic filter within max_topic_length and max_topic_levels: skipped"
            );
            return None;
        }
        Some((node, filter))
    }
}

impl MirrorSink for IndexSink {
    fn reset(&mut self, entries: Vec<(String, Vec<u8>)>, _revision: i64) {
        // Build aside and swap, so publishes never see a half-built index.
        let mut fresh = Trie::default();
        for (key, _) in &entries {
            if let Some((node, filter)) = self.admit(key) {
                let name = self.node_name(node);
                fresh.insert(filter, &name);
            }
        }
        // Routes kept for lapsed nodes, or not decided yet, stay.
        for (node, route) in self.index.lapses.lock().kept() {
            fresh.insert(&route, &node);
        }
        self.index.change(|trie| *trie = fresh);
    }

    fn put(&mut self, key: &str, _value: &[u8], _revision: i64) {
        if let Some((node, filter)) = self.admit(key) {
            let name = self.node_name(node);
            self.index.lapses.lock().route_put(&name, filter);
            self.index.change(|trie| trie.insert(filter, &name));
        }
    }

    fn delete(&mut self, key: &str, revision: i64) {
        if let Some((node, filter)) = self.index.keys.parse_route(key)
            && node != &*self.index.own_node
            && self.index.limits.admit(filter)
        {
            // Not removed yet: its node may have lapsed (`cluster::lapses`).
            let name = self.node_name(node);
            let mut lapses = self.index.lapses.lock();
            lapses.route_deleted(&name, filter, revision);
            self.index
                .any_lapsed
                .store(lapses.any_suspect(), Ordering::Release);
            drop(lapses);
            self.index.lapse_work.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The index of node "me", with the default limits and grace.
    fn index_of(keys: &Keys) -> Arc<RouteIndex> {
        RouteIndex::new(
            "me",
            keys.clone(),
            Config::default().topic_limits(),
            Duration::from_secs(60),
        )
    }

    impl RouteIndex {
        /// Decides every route deletion at once, as the resolver does once
        /// the `nodes/` mirror caught up (no node lapsed in these tests).
        fn settle(&self) {
            let remove = self.lapses.lock().resolve(i64::MAX, Instant::now());
            self.change(|trie| {
                for (node, route) in &remove {
                    trie.remove(route, node);
                }
            });
        }

        /// The plain-route part of [`RouteIndex::matching`].
        fn matching_nodes(&self, topic: &str, out: &mut Vec<Arc<str>>) {
            self.matching(topic, out, &mut Vec::new());
        }

        /// The share-group part of [`RouteIndex::matching`].
        fn matching_groups(&self, topic: &str, out: &mut Vec<(Arc<ShareKey>, Vec<Arc<str>>)>) {
            self.matching(topic, &mut Vec::new(), out);
        }
    }

    #[test]
    fn a_share_group_prefers_members_on_nodes_that_did_not_lapse() {
        let keys = Keys::new("c");
        let index = index_of(&keys);
        let mut sink = index.sink();
        sink.put(&keys.route("n2", "$share/g/t"), b"", 1);
        sink.put(&keys.route("n3", "$share/g/t"), b"", 1);
        sink.put(&keys.route("n3", "plain"), b"", 1);
        // n3's lease runs out: its record and routes go at revision 5.
        index.lapse(&Arc::from("n3"), 5);
        sink.delete(&keys.route("n3", "$share/g/t"), 5);
        sink.delete(&keys.route("n3", "plain"), 5);
        index.settle();
        let (mut nodes, mut groups) = (Vec::new(), Vec::new());
        index.matching("t", &mut nodes, &mut groups);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].1, vec![Arc::<str>::from("n2")], "n3 is kept out");
        nodes.clear();
        index.matching("plain", &mut nodes, &mut groups);
        assert_eq!(
            nodes,
            vec![Arc::<str>::from("n3")],
            "its plain route is kept"
        );
    }

    #[test]
    fn resync_replaces_everything_and_skips_own_routes() {
        let keys = Keys::new("c");
        let index = index_of(&keys);
        let mut sink = index.sink();
        sink.put(&keys.route("n2", "old/#"), b"", 0);
        sink.reset(
            vec![
                (keys.route("n2", "a/+"), vec![]),
                (keys.route("n3", "a/#"), vec![]),
                (keys.route("me", "a/b"), vec![]),
            ],
            0,
        );
        let mut out = Vec::new();
        index.matching_nodes("a/b", &mut out);
        let names: Vec<&str> = out.iter().map(|n| &**n).collect();
        assert_eq!(names, vec!["n2", "n3"]);
        out.clear();
        index.matching_nodes("old/x", &mut out);
        assert!(out.is_empty(), "a resync drops routes that are gone");
        sink.delete(&keys.route("n3", "a/#"), 0);
        index.settle();
        out.clear();
        index.matching_nodes("a", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn share_group_routes_are_indexed_apart_from_plain_ones() {
        let keys = Keys::new("c");
        let index = index_of(&keys);
        let mut sink = index.sink();
        sink.put(&keys.route("n2", "$share/g/s/+"), b"", 0);
        sink.put(&keys.route("n3", "$share/g/s/+"), b"", 0);
        sink.put(&keys.route("n3", "s/#"), b"", 0);
        let mut plain = Vec::new();
        index.matching_nodes("s/1", &mut plain);
        assert_eq!(plain.iter().map(|n| &**n).collect::<Vec<_>>(), vec!["n3"]);
        let mut groups = Vec::new();
        index.matching_groups("s/1", &mut groups);
        assert_eq!(groups.len(), 1);
        assert_eq!(&*groups[0].0.group, "g");
        assert_eq!(&*groups[0].0.filter, "s/+");
        assert_eq!(groups[0].1.len(), 2);
        sink.delete(&keys.route("n2", "$share/g/s/+"), 0);
        index.settle();
        sink.delete(&keys.route("n3", "$share/g/s/+"), 0);
        index.settle();
        groups.clear();
        index.matching_groups("s/1", &mut groups);
        assert!(groups.is_empty());
    }

    #[test]
    fn many_children_of_one_level_still_match_and_go_away() {
        let keys = Keys::new("c");
        let index = index_of(&keys);
        let mut sink = index.sink();
        // Past FEW_CHILDREN the children move to a hash map.
        let count = 3 * FEW_CHILDREN;
        for n in 0..count {
            sink.put(&keys.route("n2", &format!("dev/{n}/cmd/#")), b"", 0);
        }
        sink.put(&keys.route("n3", "dev/+/cmd/#"), b"", 0);
        assert_eq!(index.len(), count + 1);
        for n in 0..count {
            let mut out = Vec::new();
            index.matching_nodes(&format!("dev/{n}/cmd/reboot"), &mut out);
            let names: Vec<&str> = out.iter().map(|n| &**n).collect();
            assert_eq!(names, vec!["n2", "n3"], "device {n}");
        }
        for n in 0..count {
            sink.delete(&keys.route("n2", &format!("dev/{n}/cmd/#")), 0);
            index.settle();
        }
        sink.delete(&keys.route("n3", "dev/+/cmd/#"), 0);
        index.settle();
        assert!(index.is_empty());
        assert!(
            index.trie.read().root.is_empty(),
            "empty trie nodes are pruned"
        );
    }

    #[test]
    fn every_change_bumps_the_version() {
        let keys = Keys::new("c");
        let index = index_of(&keys);
        let mut sink = index.sink();
        let mut seen = vec![index.version()];
        sink.put(&keys.route("n2", "a/#"), b"", 0);
        seen.push(index.version());
        sink.delete(&keys.route("n2", "a/#"), 0);
        index.settle();
        seen.push(index.version());
        sink.reset(vec![(keys.route("n3", "b"), vec![])], 0);
        seen.push(index.version());
        assert!(seen[0] != 0, "0 means uncachable");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    }

    #[test]
    fn a_node_is_returned_once_however_many_filters_match() {
        let keys = Keys::new("c");
        let index = index_of(&keys);
        let mut sink = index.sink();
        for filter in ["x/#", "x/+", "x/y", "#"] {
            sink.put(&keys.route("n2", filter), b"", 0);
        }
        let mut out = Vec::new();
        index.matching_nodes("x/y", &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        index.matching_nodes("$SYS/x", &mut out);
        assert!(out.is_empty(), "a leading wildcard does not match $ topics");
    }
}
