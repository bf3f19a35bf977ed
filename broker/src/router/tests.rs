use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use parking_lot::Mutex;
use starling_codec::topic::parse_filter;
use starling_codec::{MessageProperties, QoS, SubscriptionOptions};

use super::*;
use crate::config::DropPolicy;
use crate::session::mailbox::Mailbox;
use store::{Forwarded, LocalRouteStore};

/// Another node wants every topic that starts with `remote/`.
struct RemoteWantsRemote;

impl RouteStore for RemoteWantsRemote {
    fn add_route(&self, _: &str) {}
    fn remove_route(&self, _: &str) {}
    fn remote_routes(&self, topic: &str, routes: &mut RemoteRoutes) {
        if topic.starts_with("remote/") {
            routes.nodes.push(NodeId::from("n2"));
        }
    }
    fn local_route_count(&self) -> usize {
        0
    }
}

/// Records the topics it is asked to forward.
#[derive(Default)]
struct Recording(Mutex<Vec<String>>);

impl Forwarder for Recording {
    fn forward(
        &self,
        node: &NodeId,
        message: &Message,
        _: bool,
        _: Vec<Arc<ShareKey>>,
        _: Tracking,
    ) -> Forwarded {
        self.0.lock().push(format!("{node}:{}", &*message.topic));
        Forwarded::default()
    }
    fn drained(&self, _: &NodeId) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(std::future::ready(()))
    }
    fn redirect(&self, _: &NodeId, _: &Arc<str>, _: Delivery) {}
}

fn message(topic: &str) -> Message {
    Message::new(
        topic.into(),
        Bytes::from_static(b"x"),
        QoS::AtMostOnce,
        false,
        MessageProperties::default(),
        None,
    )
}

/// Subscribes a new session to each filter; returns its mailbox.
fn subscribe(router: &Router, id: u64, filters: &[&str]) -> Arc<Mailbox> {
    let mailbox = Arc::new(Mailbox::new(SessionId(id), 100, DropPolicy::Oldest, true));
    for filter in filters {
        let Ok(parsed) = parse_filter(filter) else {
            panic!("{filter} is a valid filter");
        };
        let subscriber = trie::Subscriber {
            mailbox: mailbox.clone(),
            options: SubscriptionOptions::default(),
            identifier: None,
        };
        router.subscribe(&parsed, SessionId(id), subscriber);
    }
    mailbox
}

fn topics(mailbox: &Mailbox) -> Vec<String> {
    mailbox
        .take_all()
        .into_iter()
        .map(|d| d.message.topic.to_string())
        .collect()
}

#[test]
fn a_message_published_here_goes_to_local_subscribers_and_other_nodes() {
    let forwarder = Arc::new(Recording::default());
    let router = Router::new(
        Arc::new(RemoteWantsRemote),
        Some(forwarder.clone()),
        Arc::default(),
    );
    let local = subscribe(&router, 1, &["+/both"]);

    let only_remote = router.route_tracked(ToRoute::owned(message("remote/a")), false, None);
    let both = router.route_tracked(ToRoute::owned(message("remote/both")), false, None);
    let only_local = router.route_tracked(ToRoute::owned(message("local/both")), false, None);
    let nobody = router.route_tracked(ToRoute::owned(message("local/a")), false, None);

    assert_eq!(
        [
            only_remote.delivered,
            both.delivered,
            only_local.delivered,
            nobody.delivered
        ],
        [1, 2, 1, 0]
    );
    assert_eq!(*forwarder.0.lock(), ["n2:remote/a", "n2:remote/both"]);
    assert_eq!(topics(&local), ["remote/both", "local/both"]);
}

#[test]
fn a_run_routes_across_shards_and_lets_subscribes_in_once_dropped() {
    let router = Router::new(Arc::new(LocalRouteStore::default()), None, Arc::default());
    let first = subscribe(&router, 1, &["a/x", "+/y"]);
    let second = subscribe(&router, 2, &["b/#"]);
    assert_ne!(
        shard_of("a"),
        shard_of("b"),
        "the topics must switch shards"
    );

    let mut run = router.local_run();
    let mut delivered = 0;
    for topic in ["a/x", "b/y", "a/y", "b/z", "c/x"] {
        delivered += run.route(&Arc::new(message(topic)), Scope::All);
    }
    drop(run);

    assert_eq!(delivered, 5);
    assert_eq!(topics(&first), ["a/x", "b/y", "a/y"]);
    assert_eq!(topics(&second), ["b/y", "b/z"]);
    // The locks are gone with the run: a subscribe to either trie
    // goes through.
    let third = subscribe(&router, 3, &["c/#", "+/x"]);
    router.route(&Arc::new(message("c/x")));
    assert_eq!(topics(&third), ["c/x"]);
}

#[test]
fn a_run_sees_a_trie_it_skipped_as_empty_once_it_has_a_filter() {
    let router = Router::new(Arc::new(LocalRouteStore::default()), None, Arc::default());
    let mut run = router.local_run();
    assert_eq!(run.route(&Arc::new(message("a/1")), Scope::All), 0);
    // Neither trie is locked by the run while empty, so this goes
    // through with the run still open.
    let late = subscribe(&router, 1, &["a/#"]);
    assert_eq!(run.route(&Arc::new(message("a/2")), Scope::All), 1);
    drop(run);
    assert_eq!(topics(&late), ["a/2"]);
}

#[test]
fn a_gathering_run_queues_each_sessions_messages_in_order_by_the_end() {
    let metrics = Arc::new(Metrics::default());
    let router = Router::new(Arc::new(LocalRouteStore::default()), None, metrics.clone());
    let first = subscribe(&router, 1, &["a/#"]);
    let second = subscribe(&router, 2, &["b/#", "a/2"]);
    first.set_online(true);
    second.set_online(true);

    let mut run = router.gathering_run();
    for topic in ["a/1", "a/2", "b/1", "b/2", "a/3", "c/1", "b/3"] {
        run.route(&Arc::new(message(topic)), Scope::All);
    }
    // Runs of one session's deliveries are queued as the next session
    // comes up; the last run waits for the end (or an explicit call).
    assert_eq!(first.len(), 3, "a/1 and a/2, then a/3");
    assert_eq!(second.len(), 3, "a/2, then b/1 and b/2; b/3 still gathered");
    run.queue_gathered();
    assert_eq!(second.len(), 4);
    run.route(&Arc::new(message("a/4")), Scope::All);
    drop(run);

    assert_eq!(topics(&first), ["a/1", "a/2", "a/3", "a/4"]);
    assert_eq!(topics(&second), ["a/2", "b/1", "b/2", "b/3"]);
    assert_eq!(metrics.snapshot().deliveries, 8);
}

#[test]
fn a_same_topic_run_matches_once_and_delivers_each_message_on_its_own() {
    let metrics = Arc::new(Metrics::default());
    let router = Router::new(Arc::new(LocalRouteStore::default()), None, metrics.clone());
    let own = Arc::new(Mailbox::new(SessionId(1), 100, DropPolicy::Oldest, true));
    let Ok(filter) = parse_filter("a/b") else {
        panic!("a valid filter");
    };
    let no_local = SubscriptionOptions {
        no_local: true,
        ..Default::default()
    };
    router.subscribe(
        &filter,
        SessionId(1),
        trie::Subscriber {
            mailbox: own.clone(),
            options: no_local,
            identifier: None,
        },
    );
    // Two filters matching one topic: one delivery per message.
    let other = subscribe(&router, 2, &["a/b", "a/#"]);

    let published = |payload: &'static [u8], publisher: Option<u64>| {
        let mut m = message("a/b");
        m.payload = Bytes::from_static(payload);
        m.publisher = publisher.map(SessionId);
        Arc::new(m)
    };
    let run = [
        published(b"1", None),
        published(b"2", Some(1)),
        published(b"3", Some(2)),
    ];
    let mut local = router.local_run();
    let delivered = local.route_same_topic("a/b", &run, Scope::All);
    let none = local.route_same_topic(
        "a/b",
        &run,
        Scope::Selected {
            plain: false,
            groups: &[],
        },
    );
    drop(local);

    assert_eq!((delivered, none), (5, 0));
    let payloads = |mailbox: &Mailbox| -> Vec<Bytes> {
        mailbox
            .take_all()
            .into_iter()
            .map(|d| d.message.payload.clone())
            .collect()
    };
    // No Local is looked at for each message: the session's own stays.
    assert_eq!(payloads(&own), [&b"1"[..], b"3"]);
    assert_eq!(payloads(&other), [&b"1"[..], b"2", b"3"]);
    assert_eq!(metrics.snapshot().deliveries, 5);
}

/// Gathers the topics of untracked forwards and records them when
/// queued; what goes alone, [`Recording`] records.
#[derive(Default)]
struct GatheringRecorder(Recording);

impl Forwarder for GatheringRecorder {
    fn forward(
        &self,
        node: &NodeId,
        message: &Message,
        plain: bool,
        groups: Vec<Arc<ShareKey>>,
        tracking: Tracking,
    ) -> Forwarded {
        self.0.forward(node, message, plain, groups, tracking)
    }
    fn gather(
        &self,
        gathered: &mut GatheredForwards,
        node: &NodeId,
        message: &Message,
        _: bool,
        _: Vec<Arc<ShareKey>>,
    ) -> Option<NodeId> {
        let gathering = gathered.for_node(node);
        gathering
            .entries
            .extend_from_slice(message.topic.as_bytes());
        gathering.entries.extend_from_slice(b" ");
        gathering.messages += 1;
        None
    }
    fn queue_gathered(&self, gathered: &mut GatheredForwards) -> Option<NodeId> {
        for gathering in gathered.take() {
            let entries = String::from_utf8_lossy(&gathering.entries).into_owned();
            let line = format!("gathered {}:{}", gathering.node, entries.trim_end());
            self.0.0.lock().push(line);
        }
        None
    }
    fn drained(&self, node: &NodeId) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.0.drained(node)
    }
    fn redirect(&self, node: &NodeId, client_id: &Arc<str>, delivery: Delivery) {
        self.0.redirect(node, client_id, delivery)
    }
}

#[test]
fn a_publishers_forwards_are_gathered_until_queued_and_a_tracked_one_waits_its_turn() {
    let forwarder = Arc::new(GatheringRecorder::default());
    let router = Router::new(
        Arc::new(RemoteWantsRemote),
        Some(forwarder.clone()),
        Arc::default(),
    );
    let mut publisher = PublisherRouting::default();
    for (topic, track) in [
        ("remote/a", false),
        ("remote/b", false),
        ("remote/c", true),
        ("remote/d", false),
    ] {
        let routed =
            router.route_tracked(ToRoute::owned(message(topic)), track, Some(&mut publisher));
        assert_eq!(routed.delivered, 1, "{topic} has a node that wants it");
    }
    assert_eq!(
        *forwarder.0.0.lock(),
        ["gathered n2:remote/a remote/b", "n2:remote/c"]
    );
    assert_eq!(router.queue_gathered(&mut publisher), None);
    let last = || forwarder.0.0.lock().last().cloned();
    assert_eq!(last().as_deref(), Some("gathered n2:remote/d"));
    // Without a publisher's state nothing is gathered.
    router.route_tracked(ToRoute::owned(message("remote/e")), false, None);
    assert_eq!(last().as_deref(), Some("n2:remote/e"));
}

#[test]
fn refresh_takes_each_topics_current_retained_message() {
    let router = Router::new(Arc::new(LocalRouteStore::default()), None, Arc::default());
    let retained = |topic: &str, payload: &'static [u8]| {
        let mut m = message(topic);
        m.payload = Bytes::from_static(payload);
        m.retain = true;
        Arc::new(m)
    };
    router.retain(retained("a", b"1"), false);
    router.retain(retained("b", b"1"), false);
    router.retain(retained("c", b"1"), false);
    let mut read = Vec::new();
    router.retained_matching("+", &mut read);
    let version = router.retained_version();
    router.retain(retained("a", b"2"), false);
    router.retain(retained("b", b""), false);
    assert_ne!(router.retained_version(), version);
    router.refresh_retained(&mut read, |m| m);
    let mut now: Vec<(String, Vec<u8>)> = read
        .iter()
        .map(|m| (m.topic.to_string(), m.payload.to_vec()))
        .collect();
    now.sort();
    assert_eq!(
        now,
        [("a".into(), b"2".to_vec()), ("c".into(), b"1".to_vec())],
        "a replaced, b cleared, c unchanged"
    );
}
