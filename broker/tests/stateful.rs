//! Stateful fuzzing: random sequences of packets from
//! a few clients that share client ids — connects (both versions, clean or
//! not, with wills), subscriptions with odd filters, publishes with topic
//! aliases and retain, acks for packets never sent, DISCONNECTs, dropped
//! sockets, takeovers and garbage — against an in-process broker with
//! small limits. After each sequence the broker must still serve a new
//! client, no task may have panicked, and nothing may have outgrown its
//! bound once every client is gone.
//!
//! A bounded run is part of the test suite (`STARLING_STATEFUL_CASES`,
//! default 24 sequences); a longer one:
//!
//! ```text
//! STARLING_STATEFUL_CASES=2000 cargo test --release -p starling-broker --test stateful
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use starling::{Broker, Config};
use starling_codec::{
    ByteString, Connect, ConnectProperties, Disconnect, LastWill, Packet, ProtocolVersion, PubAck,
    Publish, PublishProperties, QoS, ReasonCode, RetainHandling, Subscribe, SubscribeFilter,
    SubscribeProperties, SubscriptionOptions, Unsubscribe, WillProperties,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Client ids the clients use: few, so that connects take sessions over.
const CLIENT_IDS: usize = 3;
/// Sockets a sequence may open in all.
const MAX_SOCKETS: usize = 12;

/// Topic names, the odd ones included (`$SYS`, empty levels, too deep).
fn topic(index: usize) -> String {
    match index % 8 {
        0 => "a".into(),
        1 => "a/b".into(),
        2 => "a/b/c".into(),
        3 => "$SYS/forged".into(),
        4 => "/".into(),
        5 => "a//b".into(),
        6 => vec!["l"; 200].join("/"),
        _ => "x/y".into(),
    }
}

/// Filters, the odd ones included (invalid, shared, too deep, `$`).
fn filter(index: usize) -> String {
    match index % 14 {
        0 => "#".into(),
        1 => "+".into(),
        2 => "a/#".into(),
        3 => "a/+/c".into(),
        4 => "$share/g/a/#".into(),
        5 => "$share/g/+".into(),
        6 => "$SYS/#".into(),
        7 => "a//b".into(),
        8 => "+/+/+".into(),
        9 => vec!["l"; 200].join("/"),
        10 => "$share/g".into(),
        11 => "a#".into(),
        12 => "$queue/a".into(),
        _ => "x/+".into(),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Connect {
        id: usize,
        v5: bool,
        clean: bool,
        expiry: u32,
        will: Option<(usize, bool)>,
    },
    Subscribe {
        socket: usize,
        filter: usize,
        qos: u8,
        handling: u8,
    },
    Unsubscribe {
        socket: usize,
        filter: usize,
    },
    Publish {
        socket: usize,
        topic: usize,
        qos: u8,
        retain: bool,
        alias: Option<u16>,
        alias_only: bool,
        size: usize,
        pid: u16,
    },
    Ack {
        socket: usize,
        kind: u8,
        pid: u16,
    },
    Ping {
        socket: usize,
    },
    Disconnect {
        socket: usize,
        with_will: bool,
    },
    Drop {
        socket: usize,
    },
    Garbage {
        socket: usize,
        bytes: Vec<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Mostly the newest open socket, sometimes an older one.
    let socket = prop_oneof![4 => Just(0usize), 1 => 0..MAX_SOCKETS];
    prop_oneof![
        3 => (0..CLIENT_IDS, any::<bool>(), any::<bool>(), prop_oneof![Just(0u32), Just(60)], proptest::option::of((0..8usize, any::<bool>())))
            .prop_map(|(id, v5, clean, expiry, will)| Op::Connect { id, v5, clean, expiry, will }),
        3 => (socket.clone(), 0..14usize, 0..3u8, 0..3u8)
            .prop_map(|(socket, filter, qos, handling)| Op::Subscribe { socket, filter, qos, handling }),
        1 => (socket.clone(), 0..14usize).prop_map(|(socket, filter)| Op::Unsubscribe { socket, filter }),
        8 => (socket.clone(), 0..8usize, 0..3u8, any::<bool>(), proptest::option::of(1..4u16), any::<bool>(), prop_oneof![Just(0usize), Just(10), Just(3000)], 1..6u16)
            .prop_map(|(socket, topic, qos, retain, alias, alias_only, size, pid)| Op::Publish { socket, topic, qos, retain, alias, alias_only, size, pid }),
        2 => (socket.clone(), 0..4u8, 1..8u16).prop_map(|(socket, kind, pid)| Op::Ack { socket, kind, pid }),
        1 => socket.clone().prop_map(|socket| Op::Ping { socket }),
        1 => (socket.clone(), any::<bool>()).prop_map(|(socket, with_will)| Op::Disconnect { socket, with_will }),
        1 => socket.clone().prop_map(|socket| Op::Drop { socket }),
        // Rare: it ends its connection, mostly.
        1 => (socket, proptest::collection::vec(any::<u8>(), 1..40)).prop_filter("rare", |(_, bytes)| bytes.len() > 30).prop_map(|(socket, bytes)| Op::Garbage { socket, bytes }),
    ]
}

/// One client socket: the version it spoke at CONNECT, and its writer (a
/// task reads and discards what the broker sends).
struct Socket {
    version: ProtocolVersion,
    stream: Option<tokio::net::tcp::OwnedWriteHalf>,
}

impl Socket {
    async fn send(&mut self, packet: &Packet) {
        let mut buf = BytesMut::new();
        if starling_codec::encode(packet, self.version, &mut buf).is_err() {
            return;
        }
        self.send_raw(&buf).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        if let Some(stream) = &mut self.stream {
            // A broker that stopped reading (a closed connection, a full
            // buffer) is no failure of the test; a hang would be.
            let written = tokio::time::timeout(Duration::from_secs(2), stream.write_all(bytes));
            if !matches!(written.await, Ok(Ok(()))) {
                self.stream = None;
            }
        }
    }
}

async fn open(addr: SocketAddr, version: ProtocolVersion) -> Socket {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return Socket {
            version,
            stream: None,
        };
    };
    let (mut read, write) = stream.into_split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    Socket {
        version,
        stream: Some(write),
    }
}

async fn apply(addr: SocketAddr, sockets: &mut Vec<Socket>, op: Op) {
    // The `i`-th socket still open counting from the newest (wrapping),
    // if any is: older ones have mostly been taken over.
    let at = |sockets: &Vec<Socket>, i: usize| {
        let open: Vec<usize> = (0..sockets.len())
            .filter(|&s| sockets[s].stream.is_some())
            .collect();
        (!open.is_empty()).then(|| open[open.len() - 1 - i % open.len()])
    };
    match op {
        Op::Connect {
            id,
            v5,
            clean,
            expiry,
            will,
        } => {
            if sockets.len() >= MAX_SOCKETS {
                return;
            }
            let version = if v5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V3_1_1
            };
            let mut socket = open(addr, version).await;
            let connect = Connect {
                protocol: version,
                clean_start: clean,
                keep_alive: 0,
                client_id: ByteString::from(format!("c{id}")),
                will: will.map(|(t, retain)| LastWill {
                    topic: ByteString::from(topic(t)),
                    payload: Bytes::from_static(b"will"),
                    qos: QoS::AtLeastOnce,
                    retain,
                    properties: WillProperties::default(),
                }),
                username: None,
                password: None,
                properties: ConnectProperties {
                    session_expiry_interval: (v5 && expiry > 0).then_some(expiry),
                    topic_alias_maximum: v5.then_some(3),
                    ..ConnectProperties::default()
                },
            };
            socket.send(&Packet::Connect(Box::new(connect))).await;
            sockets.push(socket);
        }
        Op::Subscribe {
            socket,
            filter: f,
            qos,
            handling,
        } => {
            let Some(i) = at(sockets, socket) else { return };
            let subscribe = Subscribe {
                packet_id: 7,
                properties: SubscribeProperties::default(),
                filters: vec![SubscribeFilter {
                    filter: ByteString::from(filter(f)),
                    options: SubscriptionOptions {
                        qos: QoS::from_u8(qos).unwrap_or(QoS::AtMostOnce),
                        no_local: false,
                        retain_as_published: handling == 1,
                        retain_handling: match handling {
                            0 => RetainHandling::SendAtSubscribe,
                            1 => RetainHandling::SendIfNew,
                            _ => RetainHandling::DoNotSend,
                        },
                    },
                }],
            };
            sockets[i].send(&Packet::Subscribe(subscribe)).await;
        }
        Op::Unsubscribe { socket, filter: f } => {
            let Some(i) = at(sockets, socket) else { return };
            let unsubscribe = Unsubscribe {
                packet_id: 8,
                properties: Default::default(),
                filters: vec![ByteString::from(filter(f))],
            };
            sockets[i].send(&Packet::Unsubscribe(unsubscribe)).await;
        }
        Op::Publish {
            socket,
            topic: t,
            qos,
            retain,
            alias,
            alias_only,
            size,
            pid,
        } => {
            let Some(i) = at(sockets, socket) else { return };
            let v5 = sockets[i].version == ProtocolVersion::V5;
            let alias = alias.filter(|_| v5);
            let qos = QoS::from_u8(qos).unwrap_or(QoS::AtMostOnce);
            let publish = Publish {
                dup: false,
                qos,
                retain,
                topic: if alias.is_some() && alias_only {
                    ByteString::new()
                } else {
                    ByteString::from(topic(t))
                },
                packet_id: if qos == QoS::AtMostOnce { 0 } else { pid },
                properties: PublishProperties {
                    topic_alias: alias,
                    ..PublishProperties::default()
                }
                .into(),
                payload: Bytes::from(vec![b'p'; size]),
            };
            sockets[i].send(&Packet::Publish(publish)).await;
        }
        Op::Ack { socket, kind, pid } => {
            let Some(i) = at(sockets, socket) else { return };
            let ack = PubAck::new(pid);
            let packet = match kind {
                0 => Packet::PubAck(ack),
                1 => Packet::PubRec(ack),
                2 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            };
            sockets[i].send(&packet).await;
        }
        Op::Ping { socket } => {
            let Some(i) = at(sockets, socket) else { return };
            sockets[i].send(&Packet::PingReq).await;
        }
        Op::Disconnect { socket, with_will } => {
            let Some(i) = at(sockets, socket) else { return };
            let code = if with_will {
                ReasonCode(0x04)
            } else {
                ReasonCode::NORMAL_DISCONNECTION
            };
            sockets[i]
                .send(&Packet::Disconnect(Disconnect::new(code)))
                .await;
            sockets[i].stream = None;
        }
        Op::Drop { socket } => {
            let Some(i) = at(sockets, socket) else { return };
            sockets[i].stream = None;
        }
        Op::Garbage { socket, bytes } => {
            let Some(i) = at(sockets, socket) else { return };
            sockets[i].send_raw(&bytes).await;
        }
    }
}

/// A new client can connect and get a PINGRESP: the broker still serves.
async fn still_serves(addr: SocketAddr) -> bool {
    let check = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let mut buf = BytesMut::new();
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 0,
            client_id: ByteString::from_static("checker"),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        };
        starling_codec::encode(
            &Packet::Connect(Box::new(connect)),
            ProtocolVersion::V5,
            &mut buf,
        )
        .ok()?;
        starling_codec::encode(&Packet::PingReq, ProtocolVersion::V5, &mut buf).ok()?;
        stream.write_all(&buf).await.ok()?;
        let mut got = BytesMut::new();
        loop {
            while let Ok(Some(packet)) =
                starling_codec::decode(&mut got, ProtocolVersion::V5, 1 << 20)
            {
                if matches!(packet, Packet::PingResp) {
                    return Some(());
                }
            }
            if stream.read_buf(&mut got).await.ok()? == 0 {
                return None;
            }
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), check).await,
        Ok(Some(()))
    )
}

/// Panics anywhere in the process (broker tasks included) since start.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

fn limits() -> Config {
    let mut config = Config::default();
    config.limits.max_subscriptions_per_client = 4;
    config.limits.max_retained_messages = 5;
    config.limits.max_sessions = 4;
    config.limits.max_topic_levels = 16;
    config.sessions.max_queued_messages = 20;
    config.sessions.max_queued_bytes = 64 * 1024 * 1024;
    config.sessions.topic_alias_maximum = 3;
    config.sessions.max_inflight = 4;
    config.sessions.max_awaiting_rel = 4;
    config.sessions.park_idle_after_ms = 50;
    config
}

async fn run_sequence(ops: Vec<Op>) -> Result<(), String> {
    let broker = Broker::new(limits());
    let listener = starling::listener::tcp::bind("127.0.0.1:0".parse().map_err(|_| "addr")?)
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let auth = starling::auth::Authenticator::from_config(&broker.config, broker.metrics.clone())
        .map_err(|e| e.to_string())?;
    tokio::spawn(starling::listener::tcp::serve(
        starling::connection::Frontend::new(broker.clone(), auth),
        listener,
    ));
    let mut sockets = Vec::new();
    for op in ops {
        apply(addr, &mut sockets, op).await;
    }
    let served = still_serves(addr).await;
    drop(sockets);
    // Every connection ends (some wait out a will or a graceful close).
    let metrics = &broker.metrics;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.connections.load(Ordering::Relaxed) > 0
        || metrics.pending_connects.load(Ordering::Relaxed) > 0
    {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("connections never ended: {:?}", metrics.snapshot()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let config = &broker.config;
    let snapshot = metrics.snapshot();
    if std::env::var_os("STARLING_STATEFUL_VERBOSE").is_some() {
        eprintln!(
            "{snapshot:?} filters {} retained {}",
            broker.router.filter_count(),
            broker.router.retained_count()
        );
    }
    broker.shutdown.cancel();
    if !served {
        return Err(format!("a new client was not served: {snapshot:?}"));
    }
    if snapshot.sessions > config.limits.max_sessions as u64 {
        return Err(format!("{} sessions", snapshot.sessions));
    }
    if snapshot.session_timers > snapshot.sessions {
        return Err(format!(
            "{} timers for {} sessions",
            snapshot.session_timers, snapshot.sessions
        ));
    }
    let filters = broker.router.filter_count();
    if filters > CLIENT_IDS * config.limits.max_subscriptions_per_client {
        return Err(format!("{filters} filters"));
    }
    if broker.router.retained_count() > config.limits.max_retained_messages {
        return Err(format!("{} retained", broker.router.retained_count()));
    }
    if broker.read_budget.used() != 0 {
        return Err(format!(
            "{} bytes of read budget held",
            broker.read_budget.used()
        ));
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("STARLING_STATEFUL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_packet_sequences_harm_nothing(ops in proptest::collection::vec(op(), 10..120)) {
        count_panics();
        let before = PANICS.load(Ordering::SeqCst);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = runtime.block_on(run_sequence(ops));
        runtime.shutdown_timeout(Duration::from_secs(2));
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), before, "a task panicked");
        if let Err(why) = result {
            return Err(TestCaseError::fail(why));
        }
    }
}

/// The harness itself: a broker that never answers is found out.
#[test]
fn the_check_fails_against_a_silent_listener() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        // Accepts (the kernel does) but never answers.
        assert!(!still_serves(addr).await);
        drop(listener);
    });
}
