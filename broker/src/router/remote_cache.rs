//! One publisher's last answer from the remote route index, kept between
//! its publishes.
//!
//! A device publishes on one topic, or a few, again and again; in a
//! cluster each publish asked the remote route index which other nodes
//! want its topic — a trie walk behind a read lock that every publisher of
//! the node takes, its cache line going from core to core. The answer only
//! changes when the index does, and the index says when by its version
//! ([`RouteStore::remote_version`]), so a connection keeps the answer for
//! its last topic and asks again only when the topic or the version is
//! new.

use super::store::{RemoteRoutes, RouteStore};

/// The remote routes of one publisher's last topic.
#[derive(Debug, Default)]
pub struct RemoteRouteCache {
    /// The store's version the routes were read at; 0: nothing kept.
    version: u64,
    /// A copy, not a slice of the message: a slice would keep the read
    /// buffer it came from alive for as long as the topic stays.
    topic: String,
    routes: RemoteRoutes,
}

impl RemoteRouteCache {
    /// The other nodes that want `topic`: kept from the last call when the
    /// topic and the store's version are the same, asked of the store
    /// otherwise.
    pub fn resolve(&mut self, store: &dyn RouteStore, topic: &str) -> &RemoteRoutes {
        // Read before asking: a change made while the store answers leaves
        // a newer version behind, and the next call asks again.
        let version = store.remote_version();
        if version == 0 || version != self.version || self.topic != topic {
            self.routes.clear();
            store.remote_routes(topic, &mut self.routes);
            self.version = version;
            self.topic.clear();
            self.topic.push_str(topic);
        }
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeId;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// Answers one node, `n2:<topic>`, for every topic and counts the
    /// questions.
    #[derive(Default)]
    struct Counting {
        version: AtomicU64,
        asked: AtomicUsize,
    }

    impl Counting {
        fn at_version(version: u64) -> Counting {
            Counting {
                version: AtomicU64::new(version),
                ..Counting::default()
            }
        }
    }

    impl RouteStore for Counting {
        fn add_route(&self, _: &str) {}
        fn remove_route(&self, _: &str) {}
        fn remote_routes(&self, topic: &str, routes: &mut RemoteRoutes) {
            self.asked.fetch_add(1, Ordering::Relaxed);
            routes.nodes.push(NodeId::from(format!("n2:{topic}")));
        }
        fn remote_version(&self) -> u64 {
            self.version.load(Ordering::Relaxed)
        }
        fn local_route_count(&self) -> usize {
            0
        }
    }

    fn nodes(routes: &RemoteRoutes) -> Vec<&str> {
        routes.nodes.iter().map(|n| &**n).collect()
    }

    #[test]
    fn the_same_topic_at_the_same_version_is_answered_from_the_cache() {
        let store = Counting::at_version(1);
        let mut cache = RemoteRouteCache::default();
        assert_eq!(nodes(cache.resolve(&store, "a/b")), ["n2:a/b"]);
        assert_eq!(nodes(cache.resolve(&store, "a/b")), ["n2:a/b"]);
        assert_eq!(store.asked.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_new_topic_or_a_new_version_asks_the_store_again() {
        let store = Counting::at_version(1);
        let mut cache = RemoteRouteCache::default();
        cache.resolve(&store, "a/b");
        assert_eq!(nodes(cache.resolve(&store, "a/c")), ["n2:a/c"]);
        assert_eq!(store.asked.load(Ordering::Relaxed), 2);
        store.version.store(2, Ordering::Relaxed);
        assert_eq!(nodes(cache.resolve(&store, "a/c")), ["n2:a/c"]);
        assert_eq!(store.asked.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_store_without_versions_is_asked_every_time() {
        let store = Counting::default();
        let mut cache = RemoteRouteCache::default();
        cache.resolve(&store, "a/b");
        cache.resolve(&store, "a/b");
        assert_eq!(store.asked.load(Ordering::Relaxed), 2);
    }
}
