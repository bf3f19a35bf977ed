//! Which other node wants which filter: a trie from filter to node ids, fed
//! by the mirror of `routes/`. Read on every publish, rebuilt on resync.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::keys::Keys;
use super::mirror::MirrorSink;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    nodes: Vec<Arc<str>>,
}

#[derive(Debug, Default)]
struct Trie {
    root: Node,
    routes: usize,
}

impl Trie {
    fn insert(&mut self, filter: &str, node: &Arc<str>) {
        let mut at = &mut self.root;
        for level in filter.split('/') {
            at = at.children.entry(level.into()).or_default();
        }
        if !at.nodes.iter().any(|n| n == node) {
            at.nodes.push(node.clone());
            self.routes += 1;
        }
    }

    fn remove(&mut self, filter: &str, node: &str) {
        let levels: Vec<&str> = filter.split('/').collect();
        if remove_at(&mut self.root, &levels, node) {
            self.routes -= 1;
        }
    }

    fn matches(&self, topic: &str, out: &mut Vec<Arc<str>>) {
        collect(
            &self.root,
            topic.split('/'),
            topic.starts_with('$'),
            true,
            out,
        );
    }
}

fn remove_at(at: &mut Node, levels: &[&str], node: &str) -> bool {
    match levels.split_first() {
        None => {
            let before = at.nodes.len();
            at.nodes.retain(|n| &**n != node);
            at.nodes.len() != before
        }
        Some((level, rest)) => {
            let Some(child) = at.children.get_mut(*level) else {
                return false;
            };
            let removed = remove_at(child, rest, node);
            if child.nodes.is_empty() && child.children.is_empty() {
                at.children.remove(*level);
            }
            removed
        }
    }
}

fn collect<'a>(
    at: &Node,
    mut levels: impl Iterator<Item = &'a str> + Clone,
    dollar: bool,
    first: bool,
    out: &mut Vec<Arc<str>>,
) {
    match levels.next() {
        None => {
            out.extend(at.nodes.iter().cloned());
            if let Some(hash) = at.children.get("#") {
                out.extend(hash.nodes.iter().cloned());
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
                    out.extend(hash.nodes.iter().cloned());
                }
            }
        }
    }
}

/// The remote route index shared by the router (reads) and the mirror
/// (writes).
#[derive(Debug)]
pub struct RouteIndex {
    own_node: String,
    keys: Keys,
    trie: RwLock<Trie>,
}

impl RouteIndex {
    pub fn new(own_node: &str, keys: Keys) -> Arc<RouteIndex> {
        Arc::new(RouteIndex {
            own_node: own_node.to_string(),
            keys,
            trie: RwLock::new(Trie::default()),
        })
    }

    /// Appends each remote node with a route matching `topic`, once.
    pub fn matching_nodes(&self, topic: &str, out: &mut Vec<Arc<str>>) {
        let start = out.len();
        self.trie.read().matches(topic, out);
        if out.len() - start > 1 {
            out[start..].sort_unstable();
            let mut unique: Vec<Arc<str>> = out.drain(start..).collect();
            unique.dedup();
            out.extend(unique);
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
}

impl MirrorSink for IndexSink {
    fn reset(&mut self, entries: Vec<(String, Vec<u8>)>) {
        // Build aside and swap, so publishes never see a half-built index.
        let mut fresh = Trie::default();
        for (key, _) in &entries {
            if let Some((node, filter)) = self.index.keys.parse_route(key)
                && node != self.index.own_node
            {
                let name = self.node_name(node);
                fresh.insert(filter, &name);
            }
        }
        *self.index.trie.write() = fresh;
    }

    fn put(&mut self, key: &str, _value: &[u8]) {
        if let Some((node, filter)) = self.index.keys.parse_route(key)
            && node != self.index.own_node
        {
            let name = self.node_name(node);
            self.index.trie.write().insert(filter, &name);
        }
    }

    fn delete(&mut self, key: &str) {
        if let Some((node, filter)) = self.index.keys.parse_route(key) {
            self.index.trie.write().remove(filter, node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_replaces_everything_and_skips_own_routes() {
        let keys = Keys::new("c");
        let index = RouteIndex::new("me", keys.clone());
        let mut sink = index.sink();
        sink.put(&keys.route("n2", "old/#"), b"");
        sink.reset(vec![
            (keys.route("n2", "a/+"), vec![]),
            (keys.route("n3", "a/#"), vec![]),
            (keys.route("me", "a/b"), vec![]),
        ]);
        let mut out = Vec::new();
        index.matching_nodes("a/b", &mut out);
        let names: Vec<&str> = out.iter().map(|n| &**n).collect();
        assert_eq!(names, vec!["n2", "n3"]);
        out.clear();
        index.matching_nodes("old/x", &mut out);
        assert!(out.is_empty(), "a resync drops routes that are gone");
        sink.delete(&keys.route("n3", "a/#"));
        out.clear();
        index.matching_nodes("a", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_node_is_returned_once_however_many_filters_match() {
        let keys = Keys::new("c");
        let index = RouteIndex::new("me", keys.clone());
        let mut sink = index.sink();
        for filter in ["x/#", "x/+", "x/y", "#"] {
            sink.put(&keys.route("n2", filter), b"");
        }
        let mut out = Vec::new();
        index.matching_nodes("x/y", &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        index.matching_nodes("$SYS/x", &mut out);
        assert!(out.is_empty(), "a leading wildcard does not match $ topics");
    }
}
