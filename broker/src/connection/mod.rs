//! One task per active client connection: it reads and decodes packets,
//! runs the session's protocol flows, and writes what the session's mailbox
//! holds. An idle connection gives its task up (`parking`).
//!
//! Its parts: the CONNECT and CONNACK (`handshake`), packets from the
//! client (`inbound`) and to it (`outbound`), and the lot idle connections
//! wait in (`parking`); a broker's connections share a [`Frontend`].
//!
//! The task owns its socket without splitting it: readiness for reading and
//! writing are awaited in one `select!`, reads go through `try_read_buf` and
//! writes through `try_write`, so an idle connection holds no read or write
//! buffer at all (they are released once empty) — only the task, the socket
//! and the session state.

mod handshake;
mod inbound;
mod outbound;
pub(crate) mod parking;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use starling_codec::{
    ByteString, DecodeError, Disconnect, LastWill, Packet, ProtocolVersion, ReasonCode,
};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, trace, warn};

use crate::auth::{Authenticator, Credentials, Decision};
use crate::broker::Broker;
use crate::lifecycle::{self, Closing};
use crate::message::{Delivery, ForwardTicket};
use crate::metrics::Metrics;
use crate::node::NodeId;
use crate::reply_order;
use crate::resources::read_budget;
use crate::router::PublisherRouting;
use crate::session::mailbox::Mailbox;
use crate::session::registry::{Kick, Slot};
use crate::session::state::SessionState;
use handshake::Negotiated;
use parking::{Parked, ParkingLot, Refusal};

/// Stop taking from the mailbox while this much is waiting to be written:
/// a slow reader backs up into its (bounded) session queue, not into memory.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Stop reading from a client that does not read its acknowledgements.
const WRITE_STOP_READING: usize = 4 * WRITE_HIGH_WATER;
/// Smallest read; a read that fills the buffer doubles it up to `READ_MAX`.
const READ_MIN: usize = 2 * 1024;
const READ_MIN_KIB: u8 = (READ_MIN / 1024) as u8;
const READ_MAX: usize = 64 * 1024;
/// Deliveries taken from the mailbox per lock.
const BATCH: usize = 64;
/// Reads a kicked connection gets to deliver what its client sent before
/// the kick (a DISCONNECT decides the will).
const KICK_READS: usize = 16;
/// How long a closing connection may take to flush its last packets.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// A timer deadline that never comes (`Duration::MAX` would overflow).
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why the connection loop stopped.
#[derive(Debug)]
enum Ending {
    /// DISCONNECT from the client; `with_will` for v5 reason 0x04.
    ClientDisconnect { with_will: bool },
    /// The socket closed or failed without DISCONNECT.
    Lost,
    /// We closed it, telling a v5 client why.
    ServerClose(ReasonCode),
    /// Nothing happened for `park_idle_after_ms` and nothing is pending:
    /// the connection may park.
    Idle,
}

/// Topic aliases of an MQTT 5.0 connection (§3.3.2.3.4).
#[derive(Default)]
pub(crate) struct Aliases {
    /// Client to server.
    inbound: HashMap<u16, ByteString>,
    /// Server to client: the aliases we assigned.
    outbound: HashMap<ByteString, u16>,
}

impl Aliases {
    fn is_empty(&self) -> bool {
        self.inbound.is_empty() && self.outbound.is_empty()
    }
}

/// What the client connections of one broker share beyond the broker
/// itself: who may connect, and the parking lot of idle connections,
/// started by the first one that parks. Kept out of [`Broker`], so that
/// the broker's state does not depend on how connections are run.
pub struct Frontend {
    pub broker: Arc<Broker>,
    /// Who may connect.
    pub auth: Authenticator,
    /// `None` inside: the lot could not start.
    parking: OnceLock<Option<ParkingLot>>,
}

impl Frontend {
    pub fn new(broker: Arc<Broker>, auth: Authenticator) -> Arc<Frontend> {
        Arc::new(Frontend {
            broker,
            auth,
            parking: OnceLock::new(),
        })
    }
}

/// What ties a connection to its client and its session: all it needs to
/// run besides its socket and buffers. A parked connection keeps just this
/// and its socket.
pub(crate) struct Bound {
    pub n: Negotiated,
    pub session: SessionState,
    pub mailbox: Arc<Mailbox>,
    /// Asks the connection to leave (takeover, drain, an operator).
    pub kick: Option<oneshot::Receiver<Kick>>,
    pub slot: Arc<Slot>,
    pub conn_id: u64,
    pub expiry: u32,
    /// Topic aliases in force (MQTT 5.0), boxed: most clients have none.
    pub aliases: Option<Box<Aliases>>,
    /// When the client's keep-alive runs out (1.5 × Keep Alive after its
    /// last packet).
    pub keep_alive_deadline: Option<std::time::Instant>,
}

pub(crate) struct Connection {
    frontend: Arc<Frontend>,
    stream: TcpStream,
    peer: SocketAddr,
    n: Negotiated,
    rbuf: BytesMut,
    /// Size of the next read, in KiB (a byte: the future stays small).
    read_kib: u8,
    wbuf: BytesMut,
    session: SessionState,
    mailbox: Arc<Mailbox>,
    /// Where the session lives between connections, and this connection's
    /// id as its owner there.
    slot: Arc<Slot>,
    conn_id: u64,
    /// Asks this connection to leave (takeover, drain, an operator).
    /// `None` once nobody can send it any more.
    kick: Option<oneshot::Receiver<Kick>>,
    /// A kick received while trying to park, handled first thing.
    pending_kick: Option<Kick>,
    /// Boxed on first use: most clients never use topic aliases.
    aliases: Option<Box<Aliases>>,
    /// Deliveries taken from the mailbox, reused between batches.
    scratch: Vec<Delivery>,
    /// In-flight PUBLISHes of a resumed session marked `awaiting_resend`
    /// (more were in flight than the client's new Receive Maximum allows).
    /// A count, not a list: the connection's future stays small.
    awaiting_resend: u16,
    /// Session expiry, possibly changed by DISCONNECT.
    expiry: u32,
    /// Acks waiting, in order, for their publish to reach other nodes (or
    /// a SUBACK for its routes to, with route sync).
    pending_acks: VecDeque<PendingAck>,
    /// Set while the link to this node is congested by what this client
    /// published: nothing more is read or handled until it drains.
    held_back: Option<NodeId>,
    /// Cluster mode, once the client published: the other nodes that want
    /// the topic it last published on, and the forwards gathered while a
    /// read is handled (boxed: most connections never publish, or not in a
    /// cluster).
    publishing: Option<Box<PublisherRouting>>,
    /// When the client's keep-alive runs out unless a packet arrives.
    keep_alive_deadline: Option<Instant>,
    /// Last time bytes went either way (read, or handed to the socket):
    /// the idle clock for parking.
    last_active: Instant,
    /// When the packet at the front of the read buffer started to arrive
    /// (roughly: the read that began it, or completed the one before), on
    /// the [`coarse_clock`]. An incomplete packet older than
    /// `incomplete_packet_timeout_secs` ends the connection, whatever the
    /// keep-alive. (Two bytes, not an `Instant`'s sixteen: the connection
    /// future stays small.)
    packet_started: u16,
    /// This connection's share of the broker-wide read-buffer budget
    /// (`ReadBudget::resize`, in its units), given back in `finish`.
    read_held: u16,
    /// Reading paused until the timer next fires: the broker is above its
    /// memory watermark and this client sends bulk (`resources::memory`).
    paused: bool,
    /// A 3.1.1 client's publish could not reach a node it was for: no more
    /// is read, and once the acks before it went out the connection closes
    /// (see `release_acks`).
    failing: bool,
}

/// Whole seconds since the first call, wrapping every 18 hours: a clock
/// for deadlines of at most an hour (`incomplete_packet_timeout_secs` is
/// capped there), two bytes where an `Instant` takes sixteen.
fn coarse_clock(at: Instant) -> u16 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    // Wrapping on purpose: only differences of recent readings are used.
    (at.saturating_duration_since(start).as_secs() % (1 << 16)) as u16
}

/// The `Instant` of a recent [`coarse_clock`] reading (under 18 hours old).
fn from_coarse_clock(reading: u16) -> Instant {
    let now = Instant::now();
    let elapsed = coarse_clock(now).wrapping_sub(reading);
    now - Duration::from_secs(u64::from(elapsed))
}

/// An ack held back until its ticket completes.
struct PendingAck {
    ack: HeldAck,
    ticket: Option<Arc<ForwardTicket>>,
}

/// What a held-back ack sends. Publish acks, nearly all of them, are kept
/// small: a node that forwards QoS 1 to others holds one per publish, and
/// queueing whole 264-byte `Packet`s showed in its profile as copying.
enum HeldAck {
    /// PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish {
        packet_id: u16,
        code: ReasonCode,
        exactly_once: bool,
    },
    /// A SUBACK, and the hold number of the retained messages waiting for
    /// it in the mailbox (0: none wait).
    SubAck { packet: Box<Packet>, hold: u16 },
}

/// Serves one accepted TCP connection to its end (or until it parks).
///
/// The handshake runs as a boxed future: it is large and short-lived, and a
/// connection task should only carry the state of `Connection::run`.
///
/// The connection must have been counted by [`PendingConnect::admit`].
pub async fn serve(frontend: Arc<Frontend>, stream: TcpStream, peer: SocketAddr) {
    let Some(connection) = Box::pin(accept(frontend, stream, peer)).await else {
        return;
    };
    drive(connection).await;
}

/// A connection counted in `pending_connects` until its CONNECT is handled
/// (accepted or refused), whichever way its handshake ends. Counted by the
/// listener, uncounted by the handshake: passing a guard along would take
/// room in every connection's future (an async fn keeps its arguments).
pub struct PendingConnect(Arc<Broker>);

impl PendingConnect {
    /// Counts one more pending connection, unless `max_pending_connects`
    /// are pending already (counted in `pending_connects_refused`).
    pub fn admit(broker: &Broker) -> bool {
        let metrics = &broker.metrics;
        // Counted first, then checked: listeners admitting at once cannot
        // all pass one look at the count.
        let before = metrics
            .pending_connects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if before >= broker.config.limits.max_pending_connects as u64 {
            Metrics::dec(&metrics.pending_connects);
            Metrics::inc(&metrics.pending_connects_refused);
            return false;
        }
        true
    }

    /// Takes charge of a connection `admit` counted.
    fn counted(broker: &Arc<Broker>) -> PendingConnect {
        PendingConnect(broker.clone())
    }
}

impl Drop for PendingConnect {
    fn drop(&mut self) {
        Metrics::dec(&self.0.metrics.pending_connects);
    }
}

/// Runs a connection past CONNACK until it ends or parks.
///
/// Not an `async fn`: an async fn's argument takes space twice in its
/// future (as the argument and as the local it moves into), and this one
/// is the largest thing a connection task carries.
#[allow(clippy::manual_async_fn)] // on purpose, see above
fn drive(mut connection: Connection) -> impl Future<Output = ()> + Send {
    async move {
        loop {
            let ending = connection.run().await;
            if !matches!(ending, Ending::Idle) {
                let broker = connection.frontend.broker.clone();
                Box::pin(connection.finish(ending)).await;
                Metrics::dec(&broker.metrics.connections);
                return;
            }
            match connection.park() {
                None => return,
                Some(back) => connection = back,
            }
        }
    }
}

/// Picks a parked connection up again in a new task (called by the
/// parking lot), `owed` being bytes to write to the client first.
async fn resume(frontend: Arc<Frontend>, parked: Box<Parked>, owed: Vec<u8>) {
    if let Some(connection) = Connection::unpark(frontend, parked, owed) {
        drive(connection).await;
    }
}

/// Reads and checks CONNECT, binds the session and sends CONNACK.
async fn accept(
    frontend: Arc<Frontend>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<Connection> {
    let broker = frontend.broker.clone();
    let pending = PendingConnect::counted(&broker);
    let mut rbuf = BytesMut::new();
    let mut read_lease = read_budget::Lease::new(&broker.read_budget);
    let read = handshake::read_connect(&stream, &mut rbuf, &broker.config, &mut read_lease).await;
    // `pending` stays counted until the CONNECT is accepted: a refused
    // connection lingers a little to close gracefully (`write_and_close`),
    // and those count against max_pending_connects too.
    let connect = match read {
        Ok(Some(connect)) => connect,
        Ok(None) => return None,
        Err(handshake::BadConnect { error, level }) => {
            if let DecodeError::UnsupportedProtocolVersion(level) = error {
                // MQTT-3.1.2-2: answer with return code 1, then close.
                let ack = handshake::refused(
                    ProtocolVersion::V3_1_1,
                    ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                    "",
                    false,
                    None,
                );
                write_and_close(stream, &Packet::ConnAck(ack), ProtocolVersion::V3_1_1).await;
                debug!(%peer, level, "unsupported protocol level");
            } else if level == Some(5) {
                // MQTT 5.0 §4.13.1: a CONNACK with the reason (0x81, 0x82,
                // 0x90, 0x95 or 0x99, all CONNACK codes) before closing,
                // so that the client can tell what was wrong.
                let ack = handshake::refused(
                    ProtocolVersion::V5,
                    error.reason_code(),
                    error.explanation(),
                    true,
                    None,
                );
                write_and_close(stream, &Packet::ConnAck(ack), ProtocolVersion::V5).await;
                debug!(%peer, %error, "bad CONNECT");
            } else {
                debug!(%peer, %error, "bad CONNECT");
            }
            Metrics::inc(&broker.metrics.connects_refused);
            return None;
        }
    };
    let version = connect.protocol;
    let problem_info = connect
        .properties
        .request_problem_information
        .unwrap_or(true);

    let refuse = |code: ReasonCode, reason: &'static str| {
        Metrics::inc(&broker.metrics.connects_refused);
        debug!(%peer, client_id = %connect.client_id, %code, reason, "CONNECT refused");
        Packet::ConnAck(handshake::refused(
            version,
            code,
            reason,
            problem_info,
            broker.config.drain.server_reference.as_deref(),
        ))
    };
    let refusal = if broker.shutdown.is_cancelled() {
        Some(refuse(
            ReasonCode::SERVER_UNAVAILABLE,
            "server is shutting down",
        ))
    } else if broker.is_draining() {
        Some(refuse(
            ReasonCode::USE_ANOTHER_SERVER,
            "node draining: connect to another server",
        ))
    } else if broker
        .metrics
        .connections
        .load(std::sync::atomic::Ordering::Relaxed)
        >= broker.config.limits.max_connections as u64
    {
        Some(refuse(
            ReasonCode::QUOTA_EXCEEDED,
            "connection limit reached",
        ))
    } else if broker.memory.is_high() {
        Some(refuse(
            ReasonCode::SERVER_BUSY,
            "memory watermark reached: try again later",
        ))
    } else if broker
        .metrics
        .sessions
        .load(std::sync::atomic::Ordering::Relaxed)
        >= broker.config.limits.max_sessions as u64
        && !broker.sessions.contains(&connect.client_id)
    {
        // Resuming (or taking over) a session here makes no new one.
        Some(refuse(ReasonCode::QUOTA_EXCEEDED, "session limit reached"))
    } else {
        None
    };
    let negotiated = match refusal {
        Some(ack) => Err(ack),
        None => handshake::negotiate(&connect, &broker.config, new_client_id)
            .map_err(|r| refuse(r.code, r.reason)),
    };
    let n = match negotiated {
        Ok(n) => n,
        Err(ack) => {
            write_and_close(stream, &ack, version).await;
            return None;
        }
    };

    let credentials = Credentials {
        client_id: &n.client_id,
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        peer,
    };
    let refused = match frontend.auth.authenticate(&credentials).await {
        Decision::Allow => None,
        Decision::BadCredentials => Some(refuse(
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "bad user name or password",
        )),
        Decision::NotAuthorized => Some(refuse(ReasonCode::NOT_AUTHORIZED, "not authorized")),
    };
    if let Some(ack) = refused {
        write_and_close(stream, &ack, version).await;
        return None;
    }

    drop(pending);
    let opened = lifecycle::open(
        &broker,
        n.client_id.clone(),
        n.clean_start,
        n.session_expiry,
    )
    .await;
    Metrics::inc(&broker.metrics.connections);
    let mut session = opened.state;
    session.will = connect
        .will
        .as_ref()
        .map(|will| Box::new(detach_will(will)));
    drop(connect);
    if rbuf.is_empty() {
        // The CONNECT is parsed; don't keep its buffer while idle, nor its
        // share of the read budget.
        rbuf = BytesMut::new();
        read_lease.resize(0);
    }

    let keep_alive_deadline = n.silence_allowed().map(|ka| std::time::Instant::now() + ka);
    let bound = Bound {
        expiry: n.session_expiry,
        n,
        session,
        mailbox: opened.mailbox,
        kick: Some(opened.kick),
        slot: opened.slot,
        conn_id: opened.conn_id,
        aliases: None,
        keep_alive_deadline,
    };
    let read_held = read_lease.into_held();
    let mut connection = Connection::new(
        frontend,
        stream,
        peer,
        bound,
        rbuf,
        BytesMut::new(),
        read_held,
    );
    let ack = handshake::accepted(&connection.n, &broker.config, opened.session_present);
    connection.send(&Packet::ConnAck(ack));
    if opened.session_present {
        connection.resend_inflight();
    }
    debug!(%peer, client_id = %connection.n.client_id, version = ?connection.n.version, "connected");
    Some(connection)
}

/// A will that owns its bytes: it may wait for days and must not keep the
/// CONNECT's read buffer alive.
fn detach_will(will: &LastWill) -> LastWill {
    LastWill {
        topic: ByteString::from(&*will.topic),
        payload: bytes::Bytes::copy_from_slice(&will.payload),
        qos: will.qos,
        retain: will.retain,
        properties: will.properties.clone(),
    }
}

fn new_client_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "auto-{:x}-{:x}",
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Reads what the socket has into `buf`. With `clear_if_short`, a read
/// that leaves part of the space offered empty (the socket had no more)
/// also clears tokio's read readiness, without a syscall, so that the next
/// wait goes to epoll instead of costing a read that finds nothing. The
/// read runs inside `try_io`, which clears only the readiness it saw before
/// the read: bytes arriving after the read raise it again.
fn read_into(
    stream: &TcpStream,
    buf: &mut BytesMut,
    clear_if_short: bool,
) -> std::io::Result<usize> {
    let offered = buf.capacity() - buf.len();
    let mut read = None;
    let outcome = stream.try_io(Interest::READABLE, || {
        let n = stream.try_read_buf(buf)?;
        read = Some(n);
        if clear_if_short && n > 0 && n < offered {
            Err(std::io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match read {
        Some(n) => Ok(n),
        None => outcome,
    }
}

/// Best-effort write of one packet before closing a connection that never
/// got going.
async fn write_and_close(stream: TcpStream, packet: &Packet, version: ProtocolVersion) {
    let mut buf = BytesMut::new();
    if starling_codec::encode(packet, version, &mut buf).is_ok() {
        let _ = tokio::time::timeout(CLOSE_FLUSH, write_all(&stream, &mut buf)).await;
    }
    close_after_client(stream, buf).await;
}

async fn write_all(stream: &TcpStream, buf: &mut BytesMut) -> std::io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Connection {
    /// When the timer must next look: keep-alive, or idle long enough to
    /// park.
    fn next_check(&self, park_after: Option<Duration>) -> Instant {
        let park = park_after.map(|after| self.last_active + after);
        let check = match (self.keep_alive_deadline, park) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => Instant::now() + NEVER,
        };
        match self.incomplete_packet_deadline() {
            Some(deadline) => check.min(deadline),
            None => check,
        }
    }

    /// When the packet now arriving must be complete, if one is.
    fn incomplete_packet_deadline(&self) -> Option<Instant> {
        // A second more: the clock's readings are rounded down.
        (!self.rbuf.is_empty()).then(|| {
            from_coarse_clock(self.packet_started)
                + Duration::from_secs(
                    self.frontend
                        .broker
                        .config
                        .limits
                        .incomplete_packet_timeout_secs
                        + 1,
                )
        })
    }

    /// Nothing buffered, owed or announced: the connection can park.
    fn is_idle(&self) -> bool {
        self.rbuf.is_empty()
            && self.wbuf.is_empty()
            && self.pending_acks.is_empty()
            && self.held_back.is_none()
            && self.pending_kick.is_none()
            && self.awaiting_resend == 0
            && !self.mailbox.has_mail()
    }

    async fn run(&mut self) -> Ending {
        if let Some(reason) = self.pending_kick.take() {
            return self.kicked(reason);
        }
        // Packets that came in the same read as the CONNECT (a client need
        // not wait for the CONNACK, MQTT 3.1.1 and 5.0 §3.1.4): the socket
        // has nothing more to announce, so no read would ever handle them.
        if !self.rbuf.is_empty()
            && let Err(ending) = self.handle_buffered()
        {
            return ending;
        }
        let park_after = self.frontend.broker.config.park_idle_after();
        // Inline in the task, not boxed: a separate small allocation freed
        // when the connection parks would leave a hole among the sessions'
        // long-lived allocations of the same size.
        let timer = tokio::time::sleep_until(self.next_check(park_after));
        tokio::pin!(timer);
        let shutdown = self.frontend.broker.shutdown.clone();
        let mailbox = self.mailbox.clone();
        loop {
            if let Err(ending) = self.flush_now() {
                return ending;
            }
            // Take more from the mailbox whenever the buffer has room, and
            // go round again without sleeping while a backlog drains: a task
            // that stopped taking at the high-water mark has no wake-up for
            // deliveries already queued (the mailbox's flag was cleared by
            // the wake-up that started the backlog).
            if self.wbuf.len() < WRITE_HIGH_WATER {
                let backlog = self.deliver();
                if let Err(ending) = self.flush_now() {
                    return ending;
                }
                if backlog && self.wbuf.len() < WRITE_HIGH_WATER {
                    continue;
                }
            }
            // Written: a publisher that let this task go first may reply.
            reply_order::wake_waiting();
            let front_ticket = self.pending_acks.front().and_then(|a| a.ticket.clone());
            let take_mail = self.wbuf.len() < WRITE_HIGH_WATER;
            let held = self.held_back.is_some();
            if self.failing && self.pending_acks.is_empty() {
                debug!(peer = %self.peer, client_id = %self.n.client_id, "a publish could not reach another node: closing (3.1.1 has no failure code)");
                return Ending::ServerClose(ReasonCode::UNSPECIFIED_ERROR);
            }
            let read =
                self.wbuf.len() < WRITE_STOP_READING && !held && !self.paused && !self.failing;
            let drained = match &self.held_back {
                Some(node) => self.frontend.broker.router.forward_drained(node),
                None => None,
            };
            // One readiness future for both directions keeps the task small.
            let interest = match (read, self.wbuf.is_empty()) {
                (true, true) => Interest::READABLE,
                (true, false) => Interest::READABLE | Interest::WRITABLE,
                (false, _) => Interest::WRITABLE,
            };
            tokio::select! {
                biased;
                kicked = std::future::poll_fn(|cx| poll_kick(&mut self.kick, cx)) => {
                    return self.kicked(kicked);
                }
                _ = shutdown.cancelled() => return Ending::ServerClose(ReasonCode::SERVER_SHUTTING_DOWN),
                ready = self.stream.ready(interest), if read || !self.wbuf.is_empty() => {
                    let Ok(ready) = ready else {
                        return Ending::Lost;
                    };
                    if ready.is_readable() || ready.is_read_closed() {
                        match self.on_readable(timer.as_mut()) {
                            // A lone PUBLISH that woke a subscriber here:
                            // its delivery is written before our PUBACK.
                            Ok(true) => reply_order::after_woken_tasks().await,
                            Ok(false) => {}
                            Err(ending) => return ending,
                        }
                    }
                    // Writable: the loop's next flush writes.
                }
                // Mail is written at once: the woken task runs from the
                // LIFO slot right after the publisher's task. Yielding first
                // (so that a burst from several publishers leaves in one
                // write) cost about 10 us of median latency at an even
                // 10k msg/s and gained nothing measurable under bursts.
                _ = std::future::poll_fn(|cx| mailbox.poll_mail(cx)), if take_mail => {}
                _ = wait_ticket(&front_ticket), if front_ticket.is_some() => self.release_acks(),
                _ = wait_drained(drained), if held => {
                    self.held_back = None;
                    // Not read while held: the packet's clock starts over.
                    self.packet_started = coarse_clock(Instant::now());
                    if let Err(ending) = self.handle_buffered() {
                        return ending;
                    }
                    // The client kept sending while it was held back.
                    self.heard_from_client();
                }
                _ = &mut timer, if !held => {
                    self.paused = false;
                    let now = Instant::now();
                    if self.keep_alive_deadline.is_some_and(|deadline| deadline <= now) {
                        debug!(peer = %self.peer, client_id = %self.n.client_id, "keep-alive timeout");
                        return Ending::ServerClose(ReasonCode::KEEP_ALIVE_TIMEOUT);
                    }
                    if self.wbuf.len() >= WRITE_STOP_READING {
                        // We stopped reading, not the client.
                        self.packet_started = coarse_clock(now);
                    }
                    if self.incomplete_packet_deadline().is_some_and(|deadline| deadline <= now) {
                        debug!(peer = %self.peer, client_id = %self.n.client_id, buffered = self.rbuf.len(), "incomplete packet timeout");
                        Metrics::inc(&self.frontend.broker.metrics.incomplete_packet_timeouts);
                        return Ending::ServerClose(ReasonCode::KEEP_ALIVE_TIMEOUT);
                    }
                    if let Some(after) = park_after
                        && now >= self.last_active + after
                    {
                        if self.is_idle() {
                            return Ending::Idle;
                        }
                        // Busy without traffic (a partial packet, an ack
                        // awaiting other nodes): look again later.
                        self.last_active = now;
                    }
                    timer.as_mut().reset(self.next_check(park_after));
                }
            }
        }
    }

    /// Reads and handles what arrived. `Ok(true)` when a lone PUBLISH from
    /// a quiet client woke a subscriber's task on this thread: the caller
    /// lets that task write first. (A method of its own, not inline in
    /// `run`: its locals would take room in every connection's future.)
    fn on_readable(&mut self, mut timer: Pin<&mut tokio::time::Sleep>) -> Result<bool, Ending> {
        let mark = reply_order::mark();
        // Quiet until now (one PUBLISH a millisecond, say): such a client
        // has most likely sent all it will for a while.
        let quiet =
            Instant::now().saturating_duration_since(self.last_active) >= reply_order::QUIET;
        let was_empty = self.rbuf.is_empty();
        let Some(packets) = self.read_and_handle(quiet)? else {
            return Ok(false);
        };
        self.heard_from_client();
        if packets > 0 || was_empty {
            self.packet_started = coarse_clock(self.last_active);
            // A packet begun while no check is due soon still gets its
            // deadline.
            if let Some(deadline) = self.incomplete_packet_deadline()
                && deadline < timer.deadline()
            {
                timer.as_mut().reset(deadline);
            }
        }
        if self.frontend.broker.memory.is_high() {
            // Above the memory watermark: pause before reading again, a
            // millisecond per KiB of the read size, which grows only for a
            // client whose reads fill it: 64 ms for a bulk publisher, 2 ms
            // for a client that sends little.
            self.paused = true;
            Metrics::inc(&self.frontend.broker.metrics.memory_pauses);
            let until = Instant::now() + Duration::from_millis(u64::from(self.read_kib));
            if until < timer.deadline() {
                timer.as_mut().reset(until);
            }
        }
        Ok(packets == 1 && quiet && !self.wbuf.is_empty() && reply_order::woke_since(mark))
    }

    /// A packet (or part of one) arrived: the keep-alive starts over.
    fn heard_from_client(&mut self) {
        let now = Instant::now();
        self.last_active = now;
        if let Some(keep_alive) = self.n.silence_allowed() {
            self.keep_alive_deadline = Some(now + keep_alive);
        }
    }

    /// Told to leave. Packets that arrived before the kick count: a
    /// DISCONNECT among them decides the session's expiry and the will.
    fn kicked(&mut self, reason: Kick) -> Ending {
        let code = match reason {
            Kick::TakenOver => ReasonCode::SESSION_TAKEN_OVER,
            Kick::UseAnotherServer => ReasonCode::USE_ANOTHER_SERVER,
            Kick::Administrative(code) => code,
        };
        // What is buffered and what is already in the socket (a few reads
        // at most) is handled, also for a publisher held back by a
        // congested peer link, since the connection ends either way: its
        // DISCONNECT may be behind the PUBLISHes it was not read for. A
        // held-back publisher's PUBLISHes hold it back again after each
        // batch, hence the loop.
        let mut reads = 0;
        loop {
            self.held_back = None;
            match self.handle_buffered() {
                Err(ending @ Ending::ClientDisconnect { .. }) => return ending,
                Err(_) => break,
                Ok(handled) if handled > 0 => continue,
                Ok(_) => {}
            }
            // Nothing complete left: read more.
            if reads == KICK_READS {
                break;
            }
            reads += 1;
            if self.rbuf.capacity() - self.rbuf.len() < READ_MIN {
                self.rbuf.reserve(READ_MAX);
            }
            match read_into(&self.stream, &mut self.rbuf, false) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        Ending::ServerClose(code)
    }

    /// Hands the connection to the parking lot. `Some` when it must go on
    /// running instead (it is busy after all, or cannot park).
    fn park(mut self) -> Option<Connection> {
        // Idle means an empty read buffer: nothing of the budget is needed.
        self.frontend
            .broker
            .read_budget
            .resize(&mut self.read_held, 0);
        let frontend = self.frontend.clone();
        let Some(lot) = parking::lot_of(&frontend) else {
            return Some(self.stay_awake());
        };
        let Connection {
            stream,
            n,
            session,
            mailbox,
            slot,
            conn_id,
            kick,
            aliases,
            expiry,
            keep_alive_deadline,
            ..
        } = self;
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                warn!(client_id = %n.client_id, %error, "cannot take an idle connection's socket from the runtime; closing it");
                hand_back_lost(&frontend.broker, &slot, conn_id, session, mailbox, expiry);
                return None;
            }
        };
        let parked = Box::new(Parked {
            stream,
            bound: Bound {
                n,
                session,
                mailbox,
                kick,
                slot,
                conn_id,
                expiry,
                aliases: aliases.filter(|a| !a.is_empty()),
                keep_alive_deadline: keep_alive_deadline.map(Instant::into_std),
            },
            generation: 0,
        });
        let (parked, kick) = match lot.park(parked) {
            Ok(()) => {
                trace!("connection parked");
                return None;
            }
            Err(Refusal::Busy(parked)) => (parked, None),
            Err(Refusal::Kicked(parked, reason)) => (parked, Some(reason)),
        };
        let mut connection = Connection::unpark(frontend, parked, Vec::new())?;
        connection.pending_kick = kick;
        Some(connection)
    }

    /// The parking lot could not start: stay awake until the client is
    /// next heard from (asking the lot again then costs nothing).
    fn stay_awake(mut self) -> Connection {
        self.last_active = Instant::now() + NEVER;
        self
    }

    /// A connection again, from a parked one: the socket goes back to the
    /// runtime. `None` if it cannot (the connection is then lost and its
    /// session handed back).
    fn unpark(frontend: Arc<Frontend>, parked: Box<Parked>, owed: Vec<u8>) -> Option<Connection> {
        let Parked { stream, bound, .. } = *parked;
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                warn!(client_id = %bound.n.client_id, %error, "cannot resume a parked connection; closing it");
                let Bound {
                    session,
                    mailbox,
                    slot,
                    conn_id,
                    expiry,
                    ..
                } = bound;
                hand_back_lost(&frontend.broker, &slot, conn_id, session, mailbox, expiry);
                return None;
            }
        };
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let wbuf = BytesMut::from(&owed[..]);
        Some(Connection::new(
            frontend,
            stream,
            peer,
            bound,
            BytesMut::new(),
            wbuf,
            0,
        ))
    }

    /// The one way a connection is made: accepted (the CONNECT's leftover
    /// bytes in `rbuf`, `read_held` of the budget) or resumed from the
    /// parking lot (bytes it owes the client in `wbuf`).
    fn new(
        frontend: Arc<Frontend>,
        stream: TcpStream,
        peer: SocketAddr,
        bound: Bound,
        rbuf: BytesMut,
        wbuf: BytesMut,
        read_held: u16,
    ) -> Connection {
        let Bound {
            n,
            session,
            mailbox,
            kick,
            slot,
            conn_id,
            expiry,
            aliases,
            keep_alive_deadline,
        } = bound;
        Connection {
            frontend,
            stream,
            peer,
            n,
            rbuf,
            read_kib: READ_MIN_KIB,
            wbuf,
            session,
            mailbox,
            slot,
            conn_id,
            kick,
            pending_kick: None,
            aliases,
            scratch: Vec::new(),
            awaiting_resend: 0,
            expiry,
            pending_acks: VecDeque::new(),
            held_back: None,
            publishing: None,
            keep_alive_deadline: keep_alive_deadline.map(Instant::from_std),
            last_active: Instant::now(),
            packet_started: coarse_clock(Instant::now()),
            read_held,
            paused: false,
            failing: false,
        }
    }

    /// Reads what the socket has and handles every complete packet.
    /// `Ok(Some(packets handled))` when at least one byte arrived.
    /// A `quiet` client's short read also clears read readiness (see
    /// `read_and_handle_inner`).
    fn read_and_handle(&mut self, quiet: bool) -> Result<Option<usize>, Ending> {
        let result = self.read_and_handle_inner(quiet);
        if self.rbuf.is_empty() {
            // Give the buffer back while idle (readiness can be spurious, so
            // this holds after a read that found nothing too); packets
            // already decoded keep their own slices of it alive.
            if self.rbuf.capacity() > 0 {
                self.rbuf = BytesMut::new();
            }
            self.frontend
                .broker
                .read_budget
                .resize(&mut self.read_held, 0);
        }
        result
    }

    fn read_and_handle_inner(&mut self, quiet: bool) -> Result<Option<usize>, Ending> {
        let read_size = usize::from(self.read_kib) * 1024;
        if self.rbuf.capacity() - self.rbuf.len() < read_size / 2 {
            // Beyond the everyday size only while a large packet arrives,
            // and then out of the broker-wide budget: asked before the
            // buffer grows (a reserve may double it), settled after.
            let asked = self.rbuf.capacity().max(self.rbuf.len() + read_size);
            let granted = self
                .frontend
                .broker
                .read_budget
                .resize(&mut self.read_held, asked.saturating_sub(READ_MAX));
            if granted {
                self.rbuf.reserve(read_size);
                // The allocation may be larger than asked; what the budget
                // cannot take of that rounding stays uncounted.
                let beyond = self.rbuf.capacity().saturating_sub(READ_MAX);
                let _ = self
                    .frontend
                    .broker
                    .read_budget
                    .resize(&mut self.read_held, beyond);
            }
            if !granted {
                debug!(peer = %self.peer, client_id = %self.n.client_id, buffered = self.rbuf.len(), "read buffer budget exhausted");
                Metrics::inc(&self.frontend.broker.metrics.read_budget_exceeded);
                return Err(Ending::ServerClose(ReasonCode::SERVER_BUSY));
            }
        }
        let before = self.rbuf.len();
        // A short read normally leaves tokio's readiness set, so the next
        // wait returns at once and a read that finds nothing costs one
        // EAGAIN. Clearing readiness after every short read (as tokio's
        // `poll_read` does) was tried: a busy connection then waits for
        // epoll before every read, and QoS 1 fan-in lost about a third of
        // its throughput. For a client quiet until now the EAGAIN is
        // spared.
        match read_into(&self.stream, &mut self.rbuf, quiet) {
            Ok(0) => return Err(Ending::Lost),
            Ok(n) => {
                if before + n == self.rbuf.capacity() && read_size < READ_MAX {
                    self.read_kib *= 2;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(_) => return Err(Ending::Lost),
        }
        self.handle_buffered().map(Some)
    }

    /// Handles every complete packet in the read buffer; stops early while
    /// a congested peer link holds this publisher back. What the packets
    /// forwarded to other nodes is on its links when this returns.
    /// Returns how many packets were handled.
    fn handle_buffered(&mut self) -> Result<usize, Ending> {
        let handled = self.handle_packets();
        if let Some(publishing) = &mut self.publishing
            && let Some(node) = self.frontend.broker.router.queue_gathered(publishing)
            && self.held_back.is_none()
        {
            self.hold_back(node);
        }
        handled
    }

    /// A peer link `node` is full with what this client published: read
    /// nothing more until it drains.
    fn hold_back(&mut self, node: NodeId) {
        Metrics::inc(&self.frontend.broker.metrics.forward_held_back);
        self.held_back = Some(node);
    }

    fn handle_packets(&mut self) -> Result<usize, Ending> {
        let max = self.frontend.broker.config.limits.max_packet_size as usize;
        let mut handled = 0;
        while self.held_back.is_none() {
            match starling_codec::decode(&mut self.rbuf, self.n.version, max) {
                // PUBLISH first and on its own: matched whole, the 264-byte
                // `Packet` was copied once more for every packet read.
                Ok(Some(Packet::Publish(publish))) => self.on_publish(publish)?,
                Ok(Some(packet)) => self.handle(packet)?,
                Ok(None) => break,
                Err(error) => {
                    Metrics::inc(&self.frontend.broker.metrics.protocol_errors);
                    debug!(peer = %self.peer, client_id = %self.n.client_id, %error, "closing connection");
                    let code = match error {
                        // A CONNECT of a level we do not speak is still a
                        // second CONNECT (MQTT-3.1.0-2), and 0x84 is no
                        // DISCONNECT code.
                        DecodeError::UnsupportedProtocolVersion(_) => ReasonCode::PROTOCOL_ERROR,
                        _ => error.reason_code(),
                    };
                    return Err(Ending::ServerClose(code));
                }
            }
            handled += 1;
        }
        Ok(handled)
    }

    /// Encodes a packet into the write buffer.
    fn send(&mut self, packet: &Packet) {
        if let Err(error) = starling_codec::encode(packet, self.n.version, &mut self.wbuf) {
            debug!(peer = %self.peer, %error, packet = packet.name(), "cannot encode");
        }
    }

    /// Writes as much of the write buffer as the socket takes right now.
    /// Writing counts as activity: a subscriber that only receives is not
    /// idle.
    fn flush_now(&mut self) -> Result<(), Ending> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.last_active = Instant::now();
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(Ending::Lost),
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(Ending::Lost),
            }
        }
        if self.wbuf.capacity() > READ_MAX {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Says goodbye, closes the socket and hands the session back.
    async fn finish(mut self, ending: Ending) {
        trace!(peer = %self.peer, ?ending, "connection ending");
        if let Ending::ServerClose(code) = ending {
            // MQTT 5.0 §4.13: tell a v5 client why. 3.1.1 has no such packet.
            if self.n.version.is_v5() && code != ReasonCode::SUCCESS {
                let mut disconnect = Disconnect::new(code);
                // DISCONNECT may carry a reason string whatever Request
                // Problem Information says (MQTT 5.0 §3.1.2.11.7).
                disconnect.properties.reason_string =
                    reason_text(code).map(ByteString::from_static);
                if code == ReasonCode::USE_ANOTHER_SERVER {
                    disconnect.properties.server_reference = self
                        .frontend
                        .broker
                        .config
                        .drain
                        .server_reference
                        .as_deref()
                        .map(ByteString::from);
                }
                self.send(&Packet::Disconnect(disconnect));
            }
        }
        self.frontend
            .broker
            .read_budget
            .resize(&mut self.read_held, 0);
        let mut wbuf = std::mem::take(&mut self.wbuf);
        let _ = tokio::time::timeout(CLOSE_FLUSH, write_all(&self.stream, &mut wbuf)).await;
        // The client may still be writing (PUBRELs, more PUBLISHes) when we
        // end the connection: it gets a FIN and its input is read until it
        // closes too, after the session is handed back.
        let linger = match ending {
            Ending::ServerClose(_) => Some(self.stream),
            _ => {
                drop(self.stream);
                None
            }
        };

        let will = match ending {
            Ending::ClientDisconnect { with_will: false } => None,
            _ => self.session.will.take(),
        };
        let closing = Closing {
            will,
            expiry: self.expiry,
        };
        lifecycle::close(
            &self.frontend.broker,
            &self.slot,
            self.conn_id,
            self.session,
            self.mailbox,
            closing,
        );
        debug!(peer = %self.peer, client_id = %self.n.client_id, "disconnected");
        if let Some(stream) = linger {
            // Not the read buffer (it may be as large as a packet): what
            // is read now is thrown away.
            drop(self.rbuf);
            close_after_client(stream, BytesMut::new()).await;
        }
    }
}

/// How long, and for how many bytes, a socket we closed keeps reading what
/// the client still sends before it is dropped anyway.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Closes a connection the server ended while its client may still be
/// writing: a socket closed with unread input sends a reset, and a client
/// whose write fails with a broken pipe may never read the DISCONNECT (or
/// CONNACK) that says why. So: FIN after what was written (half-close),
/// then read and discard until the client closes too, bounded in time and
/// bytes.
async fn close_after_client(mut stream: TcpStream, mut buf: BytesMut) {
    use tokio::io::AsyncWriteExt;
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut discarded = 0;
    buf.clear();
    while discarded < LINGER_BYTES {
        buf.clear();
        buf.reserve(4 * 1024);
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        match stream.try_read_buf(&mut buf) {
            Ok(0) => return,
            Ok(n) => discarded += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Hands a session back whose connection was lost without a socket to say
/// goodbye on (its will goes out, as for any lost connection).
fn hand_back_lost(
    broker: &Arc<Broker>,
    slot: &Arc<Slot>,
    conn_id: u64,
    mut session: SessionState,
    mailbox: Arc<Mailbox>,
    expiry: u32,
) {
    let closing = Closing {
        will: session.will.take(),
        expiry,
    };
    lifecycle::close(broker, slot, conn_id, session, mailbox, closing);
    Metrics::dec(&broker.metrics.connections);
}

/// Waits for a kick; pending for ever once nobody can send one.
fn poll_kick(kick: &mut Option<oneshot::Receiver<Kick>>, cx: &mut Context<'_>) -> Poll<Kick> {
    let Some(receiver) = kick.as_mut() else {
        return Poll::Pending;
    };
    match Pin::new(receiver).poll(cx) {
        Poll::Ready(Ok(reason)) => {
            *kick = None;
            Poll::Ready(reason)
        }
        Poll::Ready(Err(_)) => {
            *kick = None;
            Poll::Pending
        }
        Poll::Pending => Poll::Pending,
    }
}

async fn wait_drained(drained: Option<Pin<Box<dyn Future<Output = ()> + Send + 'static>>>) {
    if let Some(drained) = drained {
        drained.await;
    }
}

async fn wait_ticket(ticket: &Option<Arc<ForwardTicket>>) {
    if let Some(ticket) = ticket {
        ticket.wait().await;
    }
}

fn reason_text(code: ReasonCode) -> Option<&'static str> {
    Some(match code {
        ReasonCode::SESSION_TAKEN_OVER => "session taken over by another connection",
        ReasonCode::SERVER_SHUTTING_DOWN => "server shutting down",
        ReasonCode::KEEP_ALIVE_TIMEOUT => "keep-alive timeout",
        ReasonCode::USE_ANOTHER_SERVER => "node draining: connect to another server",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    /// Every active connection carries its task's future: keep it small.
    /// The handshake and goodbye futures are boxed for this, and `drive` is
    /// not an async fn; a regression (say, an inline 1 KB buffer or an
    /// unboxed handshake) shows up here first.
    #[tokio::test]
    async fn idle_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let broker = crate::Broker::new(crate::Config::default());
        assert!(super::PendingConnect::admit(&broker));
        let auth = crate::auth::Authenticator::from_config(&broker.config, broker.metrics.clone())
            .expect("the default configuration authenticates");
        let future = super::serve(super::Frontend::new(broker, auth), stream, addr);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 1280, "connection future grew to {size} bytes");
    }
}
