//! One benchmark client: connect, then idle (`conn`), receive (`sub`) or
//! send (`pub`) until the run stops or its work is done.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use starling_codec::{
    ByteString, ConnAck, Connect, ConnectProperties, Packet, ProtocolVersion, PubAck, Publish, QoS,
    Subscribe, SubscribeFilter, SubscriptionOptions,
};
use tokio::time::Instant;

use crate::conn::{ConnError, Event, MqttConn};
use crate::ids::IdPool;
use crate::latency;
use crate::run::Ctx;
use crate::stats::{ErrorKind, Local};
use crate::template;
use crate::timer::PaceTimer;
use crate::transport::Stream;

/// Stop adding messages to a publisher's write buffer beyond this.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Time a client gets to send DISCONNECT when it stops.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A 3.1.1 publisher's window when --inflight is not given: MQTT 3.1.1 has
/// no Receive Maximum, and brokers close connections that overrun them.
const V3_DEFAULT_INFLIGHT: u16 = 32;
/// Far enough to mean "never" for a timer.
const NEVER: Duration = Duration::from_secs(86_400 * 365);

/// What a `sub` client subscribes to and how.
pub struct SubSpec {
    pub topics: Vec<String>,
    pub qos: QoS,
    pub shared_group: Option<String>,
    pub expect: Option<u64>,
}

/// What a `pub` client sends and how fast.
pub struct PubSpec {
    pub topic: String,
    pub qos: QoS,
    pub size: usize,
    /// Time between two messages of one client; `None` = as fast as
    /// possible.
    pub period: Option<Duration>,
    /// Messages per client; 0 = no limit.
    pub limit: u64,
    /// `None`: as many as the server allows (MQTT 5), else
    /// [`V3_DEFAULT_INFLIGHT`].
    pub inflight: Option<u16>,
    pub retain: bool,
    /// Pace with a microsecond timer (`false`: tokio's 1 ms ticks).
    pub fine_timer: bool,
}

pub enum Role {
    Conn,
    Sub(SubSpec),
    Pub(PubSpec),
}

type Conn = MqttConn<Stream>;

/// Runs client `index` from connection to close, counting into `ctx.stats`.
pub async fn run(ctx: Arc<Ctx>, index: u32) {
    let client_id = template::client_id(&ctx.common.prefix, ctx.mode, index);
    let stop = ctx.stop.cancelled();
    tokio::pin!(stop);

    let permit = match &ctx.pending {
        Some(pending) => tokio::select! {
            permit = pending.acquire() => permit.ok(),
            () = stop.as_mut() => { ctx.settle(); return; }
        },
        None => None,
    };
    let started = ctx.stats.now();
    ctx.stats.connect_started(started);
    // Each phase's future is boxed: inline, the largest of them (a TLS or
    // WebSocket handshake) made every client task 12 KB, copied when the
    // task is spawned and when it ends, and touched fresh for each of
    // 10,000 clients — more of the tool's CPU than its own work.
    let setup = Box::pin(setup(&ctx, index, &client_id, stop.as_mut())).await;
    drop(permit);
    let (mut conn, connack) = match setup {
        Ok(ok) => ok,
        Err(error) => {
            report(&ctx, &client_id, &error, true);
            ctx.settle();
            return;
        }
    };
    ctx.stats
        .connect_done(ctx.stats.now().saturating_sub(started));
    ctx.stats.connected.fetch_add(1, Relaxed);
    ctx.settle();

    let outcome = match &ctx.role {
        Role::Conn => Box::pin(idle(&ctx, &mut conn, stop.as_mut())).await,
        Role::Sub(spec) => Box::pin(subscriber(&ctx, spec, &mut conn, stop.as_mut())).await,
        Role::Pub(spec) => {
            Box::pin(publisher(
                &ctx,
                spec,
                index,
                &client_id,
                &connack,
                &mut conn,
                stop.as_mut(),
            ))
            .await
        }
    };
    ctx.stats.connected.fetch_sub(1, Relaxed);
    match outcome {
        Ok(()) | Err(ConnError::Stopped) => Box::pin(conn.close(CLOSE_TIMEOUT)).await,
        Err(error) => report(&ctx, &client_id, &error, false),
    }
}

fn report(ctx: &Ctx, client_id: &str, error: &ConnError, connecting: bool) {
    let kind = match error {
        ConnError::Stopped => return,
        ConnError::Io(_) if connecting => ErrorKind::Connect,
        ConnError::Io(_) => ErrorKind::Io,
        ConnError::Closed | ConnError::Disconnected(_) => ErrorKind::Closed,
        ConnError::Decode(_) | ConnError::Encode(_) | ConnError::Unexpected(_) => {
            ErrorKind::Protocol
        }
        ConnError::Timeout => ErrorKind::Timeout,
    };
    let phase = if connecting { "connecting" } else { "running" };
    ctx.stats
        .error(kind, || format!("{client_id} ({phase}): {error}"));
}

fn protocol_version(v: u8) -> ProtocolVersion {
    if v == 4 {
        ProtocolVersion::V3_1_1
    } else {
        ProtocolVersion::V5
    }
}

/// Connects the transport, exchanges CONNECT/CONNACK and, for
/// subscribers, SUBSCRIBE/SUBACK.
async fn setup<F: Future<Output = ()>>(
    ctx: &Ctx,
    index: u32,
    client_id: &str,
    mut stop: std::pin::Pin<&mut F>,
) -> Result<(Conn, ConnAck), ConnError> {
    let args = &ctx.common;
    let timeout = Duration::from_secs_f64(args.connect_timeout.max(0.001));
    let deadline = Instant::now() + timeout;
    let version = protocol_version(args.version);
    let properties = ConnectProperties {
        session_expiry_interval: (args.session_expiry > 0).then_some(args.session_expiry),
        ..ConnectProperties::default()
    };
    // Encoded first: over TCP the transport sends it with the connect.
    let mut first = BytesMut::new();
    starling_codec::encode(
        &Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: args.clean,
            keep_alive: args.keepalive,
            client_id: ByteString::from(client_id),
            will: None,
            username: args
                .username
                .as_deref()
                .map(|user| ByteString::from(template::expand(user, index, client_id))),
            password: args
                .password
                .as_deref()
                .map(|password| Bytes::from(template::expand(password, index, client_id))),
            properties,
        })),
        version,
        &mut first,
    )?;
    let stream = tokio::select! {
        stream = tokio::time::timeout_at(deadline, ctx.connector.connect(index, &mut first)) => {
            stream.map_err(|_| ConnError::Timeout)??
        }
        () = stop.as_mut() => return Err(ConnError::Stopped),
    };
    let mut conn = MqttConn::new(stream, version, first);
    let connack = match conn.recv(deadline, stop.as_mut()).await? {
        Packet::ConnAck(connack) => connack,
        Packet::Disconnect(d) => return Err(ConnError::Disconnected(d.code)),
        other => return Err(ConnError::Unexpected(other.name())),
    };
    if !connack.code.is_success() {
        ctx.stats.error(ErrorKind::Refused, || {
            format!("{client_id}: CONNACK {}", connack.code)
        });
        // Counted as refused, not again by the caller.
        return Err(ConnError::Stopped);
    }
    if let Role::Sub(spec) = &ctx.role {
        subscribe(ctx, spec, index, client_id, &mut conn, deadline, stop).await?;
    }
    Ok((conn, connack))
}

async fn subscribe<F: Future<Output = ()>>(
    ctx: &Ctx,
    spec: &SubSpec,
    index: u32,
    client_id: &str,
    conn: &mut Conn,
    deadline: Instant,
    mut stop: std::pin::Pin<&mut F>,
) -> Result<(), ConnError> {
    let filters = spec
        .topics
        .iter()
        .map(|topic| {
            let topic = template::expand(topic, index, client_id);
            let filter = match &spec.shared_group {
                Some(group) => format!("$share/{group}/{topic}"),
                None => topic,
            };
            SubscribeFilter {
                filter: ByteString::from(filter),
                options: SubscriptionOptions {
                    qos: spec.qos,
                    ..SubscriptionOptions::default()
                },
            }
        })
        .collect();
    conn.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters,
    }))?;
    loop {
        match conn.recv(deadline, stop.as_mut()).await? {
            Packet::SubAck(suback) if suback.packet_id == 1 => {
                if let Some(code) = suback.codes.iter().find(|c| !c.is_success()) {
                    ctx.stats.error(ErrorKind::Subscribe, || {
                        format!("{client_id}: SUBACK {code}")
                    });
                    return Err(ConnError::Stopped);
                }
                return Ok(());
            }
            // Retained messages may come before the SUBACK.
            Packet::Publish(_) => {}
            Packet::Disconnect(d) => return Err(ConnError::Disconnected(d.code)),
            other => return Err(ConnError::Unexpected(other.name())),
        }
    }
}

/// A PINGREQ timer; keep-alive 0 never fires.
fn ping_period(keepalive: u16) -> Duration {
    if keepalive == 0 {
        NEVER
    } else {
        Duration::from_secs(u64::from(keepalive))
    }
}

/// `conn`: stay connected, answer nothing but keep-alive.
async fn idle<F: Future<Output = ()>>(
    ctx: &Ctx,
    conn: &mut Conn,
    mut stop: std::pin::Pin<&mut F>,
) -> Result<(), ConnError> {
    let period = ping_period(ctx.common.keepalive);
    let timer = tokio::time::sleep(period);
    tokio::pin!(timer);
    loop {
        match conn.io(Some(&mut timer.as_mut()), stop.as_mut()).await? {
            Event::Stop => return Ok(()),
            Event::Timer => {
                conn.send(&Packet::PingReq)?;
                timer.as_mut().reset(Instant::now() + period);
            }
            Event::Wrote => {}
            Event::Read => {
                while let Some(packet) = conn.next_packet()? {
                    match packet {
                        Packet::PingResp | Packet::Publish(_) => {}
                        Packet::Disconnect(d) => return Err(ConnError::Disconnected(d.code)),
                        other => return Err(ConnError::Unexpected(other.name())),
                    }
                }
            }
        }
    }
}

/// `sub`: count, time and acknowledge what arrives.
async fn subscriber<F: Future<Output = ()>>(
    ctx: &Ctx,
    spec: &SubSpec,
    conn: &mut Conn,
    mut stop: std::pin::Pin<&mut F>,
) -> Result<(), ConnError> {
    let stats = &ctx.stats;
    let mut local = Local::default();
    let period = ping_period(ctx.common.keepalive);
    let timer = tokio::time::sleep(period);
    tokio::pin!(timer);
    let result = loop {
        let event = match conn.io(Some(&mut timer.as_mut()), stop.as_mut()).await {
            Ok(event) => event,
            Err(error) => break Err(error),
        };
        match event {
            Event::Stop => break Ok(()),
            Event::Wrote => {}
            Event::Timer => {
                conn.send(&Packet::PingReq)?;
                timer.as_mut().reset(Instant::now() + period);
            }
            Event::Read => {
                // One clock read per batch: these packets arrived together.
                let now = latency::now_ns();
                if let Err(error) = receive(conn, &mut local, ctx, now) {
                    break Err(error);
                }
                let total = local.flush(stats);
                if spec.expect.is_some_and(|expect| total >= expect) {
                    ctx.request_stop("expect");
                }
            }
        }
    };
    local.finish(stats);
    result
}

fn receive(conn: &mut Conn, local: &mut Local, ctx: &Ctx, now: u64) -> Result<(), ConnError> {
    while let Some(packet) = conn.next_packet()? {
        match packet {
            Packet::Publish(publish) => {
                local.received += 1;
                if let Some(latency) = latency::read_stamp(&publish.payload)
                    .and_then(|sent| latency::latency_ns(sent, now))
                {
                    local.record_latency(latency, &ctx.stats);
                }
                match publish.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        conn.send(&Packet::PubAck(PubAck::new(publish.packet_id)))?
                    }
                    QoS::ExactlyOnce => {
                        conn.send(&Packet::PubRec(PubAck::new(publish.packet_id)))?
                    }
                }
            }
            Packet::PubRel(rel) => conn.send(&Packet::PubComp(PubAck::new(rel.packet_id)))?,
            Packet::PingResp => {}
            Packet::Disconnect(d) => return Err(ConnError::Disconnected(d.code)),
            other => return Err(ConnError::Unexpected(other.name())),
        }
    }
    Ok(())
}

/// A publisher's flow control: the window and the identifiers in flight.
struct Window {
    size: usize,
    ids: IdPool,
}

/// `pub`: send, paced or flat out, until the limit or the stop.
async fn publisher<F: Future<Output = ()>>(
    ctx: &Ctx,
    spec: &PubSpec,
    index: u32,
    client_id: &str,
    connack: &ConnAck,
    conn: &mut Conn,
    mut stop: std::pin::Pin<&mut F>,
) -> Result<(), ConnError> {
    // Everyone starts together, once every client is connected.
    tokio::select! {
        () = ctx.start.cancelled() => {}
        () = stop.as_mut() => return Ok(()),
    }
    let stats = &ctx.stats;
    let server_max = connack.properties.receive_maximum.unwrap_or(u16::MAX);
    let wanted = spec.inflight.unwrap_or(if ctx.common.version == 4 {
        V3_DEFAULT_INFLIGHT
    } else {
        u16::MAX
    });
    let mut window = Window {
        size: usize::from(wanted.min(server_max).max(1)),
        ids: IdPool::new(),
    };
    let mut packet = Packet::Publish(Publish {
        dup: false,
        qos: spec.qos,
        retain: spec.retain,
        topic: ByteString::from(template::expand(&spec.topic, index, client_id)),
        packet_id: 0,
        properties: Default::default(),
        payload: Bytes::from(vec![0u8; spec.size]),
    });
    let mut local = Local::default();
    let mut sent_total = 0u64;
    let ping = ping_period(ctx.common.keepalive);
    let mut next_ping = Instant::now() + ping;
    // Spread the clients' sends over one period.
    let mut next_due = Instant::now()
        + spec.period.map_or(Duration::ZERO, |p| {
            let offset = index.wrapping_sub(ctx.common.start_number) % ctx.common.count.max(1);
            p.mul_f64(f64::from(offset) / f64::from(ctx.common.count.max(1)))
        });
    // Paced clients need a timer finer than tokio's 1 ms ticks (see
    // `timer`); flat-out ones only use it for PINGREQ.
    let mut timer = PaceTimer::new(spec.period.is_some() && spec.fine_timer, next_ping);

    let result = loop {
        let now = Instant::now();
        while more_allowed(spec, sent_total, &window, conn)
            && spec.period.is_none_or(|_| next_due <= now)
        {
            let id = if spec.qos == QoS::AtMostOnce {
                0
            } else {
                match window.ids.alloc() {
                    Some(id) => id,
                    None => break,
                }
            };
            if let Packet::Publish(publish) = &mut packet {
                publish.packet_id = id;
            }
            conn.send(&packet)?;
            let buf = conn.write_buffer();
            let end = buf.len();
            latency::stamp(&mut buf[end - spec.size..end], latency::now_ns());
            sent_total += 1;
            local.sent += 1;
            if let Some(period) = spec.period {
                next_due += period;
            }
        }
        if now >= next_ping {
            conn.send(&Packet::PingReq)?;
            next_ping = now + ping;
        }
        local.flush(stats);
        let more = spec.limit == 0 || sent_total < spec.limit;
        if !more && window.ids.in_use() == 0 {
            break Ok(());
        }
        let wake = match spec.period {
            Some(_) if more && window.ids.in_use() < window.size => next_due.min(next_ping),
            _ => next_ping,
        };
        timer.set(wake);
        let event = match conn.io(Some(&mut timer), stop.as_mut()).await {
            Ok(event) => event,
            Err(error) => break Err(error),
        };
        match event {
            Event::Stop => break Ok(()),
            Event::Wrote | Event::Timer => {}
            Event::Read => {
                if let Err(error) = acks(conn, &mut window, &mut local, ctx, client_id) {
                    break Err(error);
                }
            }
        }
    };
    local.finish(stats);
    result
}

fn more_allowed(spec: &PubSpec, sent_total: u64, window: &Window, conn: &Conn) -> bool {
    (spec.limit == 0 || sent_total < spec.limit)
        && conn.pending_write() < WRITE_HIGH_WATER
        && (spec.qos == QoS::AtMostOnce || window.ids.in_use() < window.size)
}

/// Handles what the server sends a publisher: acknowledgements.
fn acks(
    conn: &mut Conn,
    window: &mut Window,
    local: &mut Local,
    ctx: &Ctx,
    client_id: &str,
) -> Result<(), ConnError> {
    while let Some(packet) = conn.next_packet()? {
        match packet {
            Packet::PubAck(ack) | Packet::PubComp(ack) => {
                if !window.ids.free(ack.packet_id) {
                    return Err(ConnError::Unexpected(
                        "acknowledgement of an unknown packet id",
                    ));
                }
                if ack.code.is_success() {
                    local.acked += 1;
                } else {
                    ctx.stats.error(ErrorKind::Nacked, || {
                        format!("{client_id}: publish refused with {}", ack.code)
                    });
                }
            }
            Packet::PubRec(rec) => {
                if !window.ids.contains(rec.packet_id) {
                    return Err(ConnError::Unexpected("PUBREC of an unknown packet id"));
                }
                if rec.code.is_success() {
                    conn.send(&Packet::PubRel(PubAck::new(rec.packet_id)))?;
                } else {
                    window.ids.free(rec.packet_id);
                    ctx.stats.error(ErrorKind::Nacked, || {
                        format!("{client_id}: publish refused with {}", rec.code)
                    });
                }
            }
            Packet::PingResp | Packet::Publish(_) => {}
            Packet::Disconnect(d) => return Err(ConnError::Disconnected(d.code)),
            other => return Err(ConnError::Unexpected(other.name())),
        }
    }
    Ok(())
}
