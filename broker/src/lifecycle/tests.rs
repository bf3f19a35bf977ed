//! The session lifecycle on one broker, without connections: what `open`,
//! `close`, `give_away` and `adopt` do to the registry, the router and the
//! clocks. Time is tokio's paused clock, so expiry and will delays run in
//! no real time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use starling_codec::topic::parse_filter;
use starling_codec::{ByteString, LastWill, QoS, SubscriptionOptions, WillProperties};

use super::*;
use crate::Config;
use crate::message::Delivery;
use crate::router::trie::Subscriber;
use crate::session::state::StoredSubscription;

fn broker() -> Arc<Broker> {
    Broker::new(Config::default())
}

fn gauge(broker: &Broker, read: impl Fn(&crate::metrics::MetricsSnapshot) -> u64) -> u64 {
    read(&broker.metrics.snapshot())
}

/// Subscribes an opened session to `filter`, as SUBSCRIBE would.
fn subscribe(broker: &Broker, opened: &mut Opened, filter: &str) {
    let Ok(parsed) = parse_filter(filter) else {
        panic!("{filter} is a filter");
    };
    let subscriber = Subscriber {
        mailbox: opened.mailbox.clone(),
        options: SubscriptionOptions::default(),
        identifier: None,
    };
    broker
        .router
        .subscribe(&parsed, opened.state.id, subscriber);
    opened.state.subscriptions.insert(
        ByteString::from(filter),
        StoredSubscription {
            options: SubscriptionOptions::default(),
            identifier: None,
        },
    );
}

/// A listener on `filter`: the mailbox of a session that stays connected.
async fn listener(broker: &Arc<Broker>, filter: &str) -> Opened {
    let mut opened = open(broker, "listener".into(), true, 0).await;
    subscribe(broker, &mut opened, filter);
    opened
}

fn will(topic: &str, delay: Option<u32>) -> Box<LastWill> {
    Box::new(LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            ..WillProperties::default()
        },
    })
}

fn close_with(broker: &Arc<Broker>, opened: Opened, will: Option<Box<LastWill>>, expiry: u32) {
    close(
        broker,
        &opened.slot,
        opened.conn_id,
        opened.state,
        opened.mailbox,
        Closing { will, expiry },
    );
}

fn delivered(mailbox: &Mailbox) -> Vec<Delivery> {
    mailbox.take_all().into()
}

#[tokio::test]
async fn a_session_without_expiry_ends_with_its_connection() {
    let broker = broker();
    let mut opened = open(&broker, "c".into(), true, 0).await;
    assert!(!opened.session_present);
    subscribe(&broker, &mut opened, "a/b");
    assert_eq!(gauge(&broker, |m| m.sessions), 1);
    assert_eq!(broker.router.filter_count(), 1);

    close_with(&broker, opened, None, 0);

    assert_eq!(gauge(&broker, |m| m.sessions), 0);
    assert_eq!(broker.router.filter_count(), 0);
    assert!(!broker.sessions.contains("c"));
}

#[tokio::test]
async fn a_persistent_session_is_resumed_and_a_clean_start_discards_it() {
    let broker = broker();
    let mut opened = open(&broker, "c".into(), false, 60).await;
    subscribe(&broker, &mut opened, "a/+");
    close_with(&broker, opened, None, 60);
    assert_eq!(gauge(&broker, |m| m.session_timers), 1);

    // Messages published while it is away wait in its mailbox.
    broker.router.route(&Arc::new(crate::message::Message::new(
        "a/x".into(),
        Bytes::from_static(b"1"),
        QoS::AtLeastOnce,
        false,
        starling_codec::MessageProperties::default(),
        None,
    )));
    let resumed = open(&broker, "c".into(), false, 60).await;
    assert!(resumed.session_present);
    assert!(resumed.state.subscriptions.contains_key("a/+"));
    assert_eq!(delivered(&resumed.mailbox).len(), 1);
    // The expiry clock of the offline session stopped.
    tokio::task::yield_now().await;
    assert_eq!(gauge(&broker, |m| m.session_timers), 0);
    close_with(&broker, resumed, None, 60);

    let fresh = open(&broker, "c".into(), true, 60).await;
    assert!(!fresh.session_present);
    assert!(fresh.state.subscriptions.is_empty());
    assert_eq!(
        broker.router.filter_count(),
        0,
        "the old subscriptions left"
    );
    assert_eq!(gauge(&broker, |m| m.sessions), 1);
}

#[tokio::test]
async fn a_second_connect_takes_the_session_over() {
    let broker = broker();
    let first = open(&broker, "c".into(), false, 60).await;
    let Opened {
        slot,
        conn_id,
        state,
        mailbox,
        kick,
        ..
    } = first;
    let second = tokio::spawn({
        let broker = broker.clone();
        async move { open(&broker, "c".into(), false, 60).await }
    });
    // The first connection is asked to leave, and gives the session back.
    assert!(matches!(kick.await, Ok(Kick::TakenOver)));
    let closing = Closing {
        will: None,
        expiry: 60,
    };
    close(&broker, &slot, conn_id, state, mailbox, closing);
    let second = second.await.expect("the second connect completes");
    assert!(second.session_present);
    assert_ne!(second.conn_id, conn_id);
    assert_eq!(gauge(&broker, |m| m.sessions), 1);
}

#[tokio::test(start_paused = true)]
async fn an_offline_session_expires_on_time_and_leaves_nothing() {
    let broker = broker();
    let mut opened = open(&broker, "c".into(), false, 30).await;
    subscribe(&broker, &mut opened, "t");
    close_with(&broker, opened, None, 30);

    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(broker.sessions.contains("c"), "not before its expiry");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!broker.sessions.contains("c"));
    assert_eq!(gauge(&broker, |m| m.sessions), 0);
    assert_eq!(gauge(&broker, |m| m.session_timers), 0);
    assert_eq!(broker.router.filter_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_will_waits_and_a_reconnect_cancels_it() {
    let broker = broker();
    let listener = listener(&broker, "wills/#").await;

    // Published after its delay...
    let opened = open(&broker, "a".into(), false, 60).await;
    close_with(&broker, opened, Some(will("wills/a", Some(10))), 60);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(delivered(&listener.mailbox).is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let wills = delivered(&listener.mailbox);
    assert_eq!(wills.len(), 1);
    assert_eq!(&*wills[0].message.topic, "wills/a");

    // ...unless the client is back first (MQTT 5.0 §3.1.3.2.2).
    let opened = open(&broker, "b".into(), false, 60).await;
    close_with(&broker, opened, Some(will("wills/b", Some(10))), 60);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let back = open(&broker, "b".into(), false, 60).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(delivered(&listener.mailbox).is_empty());
    assert_eq!(gauge(&broker, |m| m.wills_published), 1);
    drop(back);
}

#[tokio::test(start_paused = true)]
async fn a_will_goes_at_once_without_delay_and_at_expiry_when_that_comes_first() {
    let broker = broker();
    let listener = listener(&broker, "wills/#").await;

    let opened = open(&broker, "now".into(), false, 60).await;
    close_with(&broker, opened, Some(will("wills/now", None)), 60);
    assert_eq!(delivered(&listener.mailbox).len(), 1);

    // A delay longer than the session's expiry ends with the session.
    let opened = open(&broker, "late".into(), false, 5).await;
    close_with(&broker, opened, Some(will("wills/late", Some(3600))), 5);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let wills = delivered(&listener.mailbox);
    assert_eq!(wills.len(), 1);
    assert_eq!(&*wills[0].message.topic, "wills/late");
    assert!(!broker.sessions.contains("late"));
}

#[tokio::test(start_paused = true)]
async fn a_session_given_away_keeps_or_drops_its_will_and_redirects_for_a_while() {
    let broker = broker();
    let mut opened = open(&broker, "c".into(), false, 60).await;
    subscribe(&broker, &mut opened, "t");
    close_with(&broker, opened, Some(will("wills/c", Some(30))), 60);

    let moved = give_away(&broker, "c", NodeId::from("n2"), WillOnMove::Keep)
        .await
        .expect("an offline session to give");
    assert!(
        moved.state.will.is_some(),
        "a drained node's will goes along"
    );
    assert!(moved.state.subscriptions.contains_key("t"));
    assert_eq!(gauge(&broker, |m| m.sessions), 0);
    assert_eq!(gauge(&broker, |m| m.handovers_active), 1);
    // Its routes stay for the handover grace, then leave.
    assert_eq!(broker.router.filter_count(), 1);
    tokio::time::sleep(HANDOVER_GRACE + Duration::from_millis(100)).await;
    assert_eq!(broker.router.filter_count(), 0);
    assert_eq!(gauge(&broker, |m| m.handovers_active), 0);

    let opened = open(&broker, "d".into(), false, 60).await;
    close_with(&broker, opened, Some(will("wills/d", Some(30))), 60);
    let moved = surrender(&broker, "d", NodeId::from("n2")).await.unwrap();
    assert!(
        moved.state.will.is_none(),
        "a client connected elsewhere: void"
    );
    assert!(
        give_away(&broker, "nobody", NodeId::from("n2"), WillOnMove::Keep)
            .await
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn an_adopted_session_waits_with_its_clocks_unless_one_exists_here() {
    let giver = broker();
    let opened = open(&giver, "c".into(), false, 20).await;
    close_with(&giver, opened, Some(will("wills/c", Some(10))), 20);
    let moved = give_away(&giver, "c", NodeId::from("n2"), WillOnMove::Keep)
        .await
        .unwrap();

    let taker = broker();
    let listener = listener(&taker, "wills/#").await;
    assert!(adopt(&taker, moved).await);
    assert!(taker.sessions.contains("c"));
    assert_eq!(gauge(&taker, |m| m.session_timers), 1);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        delivered(&listener.mailbox).len(),
        1,
        "the will kept its delay"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!taker.sessions.contains("c"), "and the session its expiry");

    // A client that came back here first has the newer session.
    let current = open(&taker, "e".into(), false, 60).await;
    let other = broker();
    let stale = open(&other, "e".into(), false, 60).await;
    close_with(&other, stale, None, 60);
    let moved = give_away(&other, "e", NodeId::from("n1"), WillOnMove::Keep)
        .await
        .unwrap();
    assert!(!adopt(&taker, moved).await);
    drop(current);
}
