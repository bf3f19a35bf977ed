"""Minimal hand-written MQTT 3.1.1 / 5.0 packet encoder and decoder for tests.

Only what the raw-socket conformance tests need: building well-formed (and, by
passing raw pieces, deliberately malformed) packets, and reading/parsing the
packets a broker sends back, with bounded timeouts.

Encodings follow MQTT 5.0 §1.5 (data representation) and §2 (packet format):

* Two Byte Integer / Four Byte Integer: big-endian (§1.5.2, §1.5.3).
* UTF-8 Encoded String: Two Byte Integer length + bytes (§1.5.4).
* Variable Byte Integer: 7 bits per byte, least significant group first,
  bit 7 = continuation, at most 4 bytes, max 268,435,455 (§1.5.5).
* Binary Data: Two Byte Integer length + bytes (§1.5.6).
* UTF-8 String Pair: two UTF-8 strings (§1.5.7).
* Properties: Property Length (VBI) followed by (identifier VBI, value) pairs
  (§2.2.2). Every identifier defined by 5.0 is < 128 so it is one byte.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

# ---------------------------------------------------------------------------
# Packet types (§2.1.2)
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

PACKET_NAMES = {
    0: "RESERVED", 1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK",
    5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK",
    10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP",
    14: "DISCONNECT", 15: "AUTH",
}

# Reason codes used by tests (§2.4)
RC_SUCCESS = 0x00
RC_GRANTED_QOS1 = 0x01
RC_GRANTED_QOS2 = 0x02
RC_DISCONNECT_WITH_WILL = 0x04
RC_NO_MATCHING_SUBSCRIBERS = 0x10
RC_NO_SUBSCRIPTION_EXISTED = 0x11
RC_UNSPECIFIED = 0x80
RC_MALFORMED = 0x81
RC_PROTOCOL_ERROR = 0x82
RC_CLIENT_ID_NOT_VALID = 0x85
RC_SERVER_SHUTTING_DOWN = 0x8B
RC_KEEP_ALIVE_TIMEOUT = 0x8D
RC_SESSION_TAKEN_OVER = 0x8E
RC_TOPIC_FILTER_INVALID = 0x8F
RC_TOPIC_NAME_INVALID = 0x90
RC_RECEIVE_MAXIMUM_EXCEEDED = 0x93
RC_TOPIC_ALIAS_INVALID = 0x94
RC_PACKET_TOO_LARGE = 0x95
RC_QUOTA_EXCEEDED = 0x97
RC_UNSUPPORTED_PROTOCOL_VERSION = 0x84
RC_SERVER_UNAVAILABLE = 0x88
RC_SERVER_BUSY = 0x89
RC_CONNECTION_RATE_EXCEEDED = 0x9F

# MQTT 3.1.1 CONNACK return codes (§3.2.2.3 of 3.1.1)
V3_ACCEPTED = 0
V3_UNACCEPTABLE_PROTOCOL_VERSION = 1
V3_IDENTIFIER_REJECTED = 2
V3_SERVER_UNAVAILABLE = 3

# ---------------------------------------------------------------------------
# Properties (§2.2.2.2): id -> (name, type)
BYTE, U16, U32, VBI, UTF8, BIN, PAIR = "byte", "u16", "u32", "vbi", "utf8", "bin", "pair"
PROPERTIES = {
    0x01: ("PayloadFormatIndicator", BYTE),
    0x02: ("MessageExpiryInterval", U32),
    0x03: ("ContentType", UTF8),
    0x08: ("ResponseTopic", UTF8),
    0x09: ("CorrelationData", BIN),
    0x0B: ("SubscriptionIdentifier", VBI),
    0x11: ("SessionExpiryInterval", U32),
    0x12: ("AssignedClientIdentifier", UTF8),
    0x13: ("ServerKeepAlive", U16),
    0x15: ("AuthenticationMethod", UTF8),
    0x16: ("AuthenticationData", BIN),
    0x17: ("RequestProblemInformation", BYTE),
    0x18: ("WillDelayInterval", U32),
    0x19: ("RequestResponseInformation", BYTE),
    0x1A: ("ResponseInformation", UTF8),
    0x1C: ("ServerReference", UTF8),
    0x1F: ("ReasonString", UTF8),
    0x21: ("ReceiveMaximum", U16),
    0x22: ("TopicAliasMaximum", U16),
    0x23: ("TopicAlias", U16),
    0x24: ("MaximumQoS", BYTE),
    0x25: ("RetainAvailable", BYTE),
    0x26: ("UserProperty", PAIR),
    0x27: ("MaximumPacketSize", U32),
    0x28: ("WildcardSubscriptionAvailable", BYTE),
    0x29: ("SubscriptionIdentifierAvailable", BYTE),
    0x2A: ("SharedSubscriptionAvailable", BYTE),
}
PROPERTY_IDS = {name: pid for pid, (name, _t) in PROPERTIES.items()}


class MalformedError(Exception):
    """The bytes read from the broker are not a well-formed MQTT packet."""


class Closed(Exception):
    """The peer closed the connection (EOF or reset)."""


# ---------------------------------------------------------------------------
# Primitive encoders


def u8(n: int) -> bytes:
    return struct.pack("!B", n)


def u16(n: int) -> bytes:
    return struct.pack("!H", n)


def u32(n: int) -> bytes:
    return struct.pack("!I", n)


def vbi(n: int) -> bytes:
    """Variable Byte Integer, §1.5.5 (the spec's encoding algorithm)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"VBI out of range: {n}")
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n > 0:
            byte |= 0x80
        out.append(byte)
        if n == 0:
            return bytes(out)


def utf8(s: str | bytes) -> bytes:
    """UTF-8 Encoded String (§1.5.4). bytes are sent as given (for invalid-UTF-8 tests)."""
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return u16(len(b)) + b


def binary(b: bytes) -> bytes:
    return u16(len(b)) + bytes(b)


def decode_vbi(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a VBI at buf[pos:], return (value, new_pos). §1.5.5 decoding algorithm."""
    multiplier = 1
    value = 0
    for i in range(4):
        if pos >= len(buf):
            raise MalformedError("truncated variable byte integer")
        byte = buf[pos]
        pos += 1
        value += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return value, pos
        multiplier *= 128
    raise MalformedError("variable byte integer longer than 4 bytes")


# ---------------------------------------------------------------------------
# Properties


def _prop_id(key: int | str) -> int:
    if isinstance(key, int):
        return key
    return PROPERTY_IDS[key]


def _encode_prop_value(ptype: str, value: Any) -> bytes:
    if ptype == BYTE:
        return u8(value)
    if ptype == U16:
        return u16(value)
    if ptype == U32:
        return u32(value)
    if ptype == VBI:
        return vbi(value)
    if ptype == UTF8:
        return utf8(value)
    if ptype == BIN:
        return binary(value)
    if ptype == PAIR:
        k, v = value
        return utf8(k) + utf8(v)
    raise ValueError(ptype)


def encode_props(props: Any = None) -> bytes:
    """Encode a property list *including* its Property Length prefix.

    ``props`` may be None, a dict {name_or_id: value} or an iterable of
    (name_or_id, value) pairs (use the list form to repeat a property, e.g.
    several UserProperty entries or a deliberately duplicated property).
    In the dict form a UserProperty / SubscriptionIdentifier value that is a
    list is expanded into several properties. ``bytes`` are used verbatim as an
    already encoded property section (length prefix included) for malformed tests.
    """
    if isinstance(props, (bytes, bytearray)):
        return bytes(props)
    if not props:
        return vbi(0)
    items: list[tuple[int, Any]] = []
    pairs = props.items() if isinstance(props, dict) else props
    for key, value in pairs:
        pid = _prop_id(key)
        name, ptype = PROPERTIES[pid]
        if isinstance(props, dict) and isinstance(value, list) and ptype in (PAIR, VBI):
            items.extend((pid, v) for v in value)
        else:
            items.append((pid, value))
    body = b"".join(vbi(pid) + _encode_prop_value(PROPERTIES[pid][1], value) for pid, value in items)
    return vbi(len(body)) + body


class Props:
    """Decoded property list; keeps order and duplicates."""

    def __init__(self, items: list[tuple[int, Any]] | None = None):
        self.items = items or []

    def get(self, key: int | str, default: Any = None) -> Any:
        pid = _prop_id(key)
        for k, v in self.items:
            if k == pid:
                return v
        return default

    def getall(self, key: int | str) -> list[Any]:
        pid = _prop_id(key)
        return [v for k, v in self.items if k == pid]

    def __contains__(self, key: int | str) -> bool:
        pid = _prop_id(key)
        return any(k == pid for k, _ in self.items)

    def __repr__(self) -> str:
        return "Props(%s)" % ", ".join(f"{PROPERTIES.get(k, (hex(k),))[0]}={v!r}" for k, v in self.items)


def decode_props(buf: bytes, pos: int) -> tuple[Props, int]:
    length, pos = decode_vbi(buf, pos)
    end = pos + length
    if end > len(buf):
        raise MalformedError("property length exceeds packet")
    items = []
    while pos < end:
        pid, pos = decode_vbi(buf, pos)
        if pid not in PROPERTIES:
            raise MalformedError(f"unknown property id {pid:#x}")
        ptype = PROPERTIES[pid][1]
        if ptype == BYTE:
            value = buf[pos]
            pos += 1
        elif ptype == U16:
            (value,) = struct.unpack_from("!H", buf, pos)
            pos += 2
        elif ptype == U32:
            (value,) = struct.unpack_from("!I", buf, pos)
            pos += 4
        elif ptype == VBI:
            value, pos = decode_vbi(buf, pos)
        elif ptype == UTF8:
            value, pos = _read_str(buf, pos)
        elif ptype == BIN:
            value, pos = _read_bin(buf, pos)
        else:  # PAIR
            k, pos = _read_str(buf, pos)
            v, pos = _read_str(buf, pos)
            value = (k, v)
        if pos > end:
            raise MalformedError("property overruns property length")
        items.append((pid, value))
    return Props(items), end


def _read_bin(buf: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(buf):
        raise MalformedError("truncated length prefix")
    (n,) = struct.unpack_from("!H", buf, pos)
    pos += 2
    if pos + n > len(buf):
        raise MalformedError("truncated string/binary")
    return bytes(buf[pos:pos + n]), pos + n


def _read_str(buf: bytes, pos: int) -> tuple[str, int]:
    b, pos = _read_bin(buf, pos)
    try:
        return b.decode("utf-8"), pos
    except UnicodeDecodeError as e:
        raise MalformedError(f"invalid UTF-8 from broker: {b!r}") from e


# ---------------------------------------------------------------------------
# Packet builders


def fixed_header(ptype: int, flags: int, remaining_length: int) -> bytes:
    return u8((ptype << 4) | (flags & 0x0F)) + vbi(remaining_length)


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    """Fixed header (§2.1) + body."""
    return fixed_header(ptype, flags, len(body)) + body


def sub_opts(qos: int = 0, no_local: bool = False, rap: bool = False, rh: int = 0) -> int:
    """Subscription Options byte (§3.8.3.1)."""
    return qos | (int(no_local) << 2) | (int(rap) << 3) | (rh << 4)


def connect(
    client_id: str | bytes = "",
    *,
    version: int = 5,
    clean: bool = True,
    keepalive: int = 60,
    props: Any = None,
    will_topic: str | bytes | None = None,
    will_payload: bytes = b"",
    will_qos: int = 0,
    will_retain: bool = False,
    will_props: Any = None,
    username: str | bytes | None = None,
    password: bytes | None = None,
    protocol_name: str | bytes = "MQTT",
    flags: int | None = None,
    with_props: bool | None = None,
    trailing: bytes = b"",
) -> bytes:
    """CONNECT (§3.1). ``version`` is the Protocol Level byte (4 = 3.1.1, 5 = 5.0).

    ``flags`` overrides the computed Connect Flags byte (for malformed tests);
    ``with_props`` forces the 5.0 property sections on/off independent of version.
    """
    if with_props is None:
        with_props = version >= 5
    computed = 0
    if clean:
        computed |= 0x02
    if will_topic is not None:
        computed |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
    if password is not None:
        computed |= 0x40
    if username is not None:
        computed |= 0x80
    cflags = computed if flags is None else flags
    var = utf8(protocol_name) + u8(version) + u8(cflags) + u16(keepalive)
    if with_props:
        var += encode_props(props)
    payload = utf8(client_id)
    if will_topic is not None:
        if with_props:
            payload += encode_props(will_props)
        payload += utf8(will_topic) + binary(will_payload)
    if username is not None:
        payload += utf8(username)
    if password is not None:
        payload += binary(password)
    return packet(CONNECT, 0, var + payload + trailing)


def publish(
    topic: str | bytes,
    payload: bytes | str = b"",
    qos: int = 0,
    *,
    retain: bool = False,
    dup: bool = False,
    pid: int | None = None,
    version: int = 5,
    props: Any = None,
) -> bytes:
    """PUBLISH (§3.3). A packet identifier is required when qos > 0."""
    if isinstance(payload, str):
        payload = payload.encode()
    flags = (int(dup) << 3) | (qos << 1) | int(retain)
    var = utf8(topic)
    if qos > 0:
        if pid is None:
            raise ValueError("QoS>0 PUBLISH needs a packet identifier")
        var += u16(pid)
    if version >= 5:
        var += encode_props(props)
    return packet(PUBLISH, flags, var + payload)


def _ack(ptype: int, flags: int, pid: int, version: int, reason: int | None, props: Any) -> bytes:
    body = u16(pid)
    if version >= 5 and (reason not in (None, 0) or props):
        body += u8(reason or 0)
        if props:
            body += encode_props(props)
    return packet(ptype, flags, body)


def puback(pid: int, *, version: int = 5, reason: int | None = None, props: Any = None) -> bytes:
    return _ack(PUBACK, 0, pid, version, reason, props)


def pubrec(pid: int, *, version: int = 5, reason: int | None = None, props: Any = None) -> bytes:
    return _ack(PUBREC, 0, pid, version, reason, props)


def pubrel(pid: int, *, version: int = 5, reason: int | None = None, props: Any = None) -> bytes:
    # PUBREL fixed header flags MUST be 0010 (§3.6.1)
    return _ack(PUBREL, 0x2, pid, version, reason, props)


def pubcomp(pid: int, *, version: int = 5, reason: int | None = None, props: Any = None) -> bytes:
    return _ack(PUBCOMP, 0, pid, version, reason, props)


def subscribe(pid: int, filters: Iterable[tuple[str | bytes, int]], *, version: int = 5, props: Any = None,
              flags: int = 0x2) -> bytes:
    """SUBSCRIBE (§3.8). ``filters``: (filter, options byte or QoS)."""
    body = u16(pid)
    if version >= 5:
        body += encode_props(props)
    for flt, opts in filters:
        body += utf8(flt) + u8(opts)
    return packet(SUBSCRIBE, flags, body)


def unsubscribe(pid: int, filters: Iterable[str | bytes], *, version: int = 5, props: Any = None,
                flags: int = 0x2) -> bytes:
    body = u16(pid)
    if version >= 5:
        body += encode_props(props)
    for flt in filters:
        body += utf8(flt)
    return packet(UNSUBSCRIBE, flags, body)


def pingreq() -> bytes:
    return packet(PINGREQ, 0, b"")


def disconnect(*, version: int = 5, reason: int | None = None, props: Any = None) -> bytes:
    body = b""
    if version >= 5 and (reason not in (None, 0) or props):
        body = u8(reason or 0)
        if props:
            body += encode_props(props)
    return packet(DISCONNECT, 0, body)


# ---------------------------------------------------------------------------
# Parsed packets


@dataclass
class Packet:
    ptype: int
    flags: int
    body: bytes
    version: int = 5
    # parsed fields (depending on type)
    reason: int | None = None
    props: Props = field(default_factory=Props)
    pid: int | None = None
    session_present: bool | None = None
    topic: str | None = None
    payload: bytes | None = None
    qos: int | None = None
    retain: bool | None = None
    dup: bool | None = None
    reasons: list[int] | None = None

    @property
    def name(self) -> str:
        return PACKET_NAMES.get(self.ptype, str(self.ptype))

    def __repr__(self) -> str:
        parts = [self.name]
        for attr in ("reason", "pid", "session_present", "topic", "qos", "retain", "dup", "reasons"):
            v = getattr(self, attr)
            if v is not None:
                parts.append(f"{attr}={v!r}" if attr != "reason" else f"reason={v:#04x}")
        if self.payload is not None:
            parts.append(f"payload={self.payload[:40]!r}{'...' if len(self.payload) > 40 else ''}")
        if self.props.items:
            parts.append(repr(self.props))
        return "<" + " ".join(parts) + ">"


def parse(ptype: int, flags: int, body: bytes, version: int = 5) -> Packet:
    """Parse a server-to-client packet body according to ``version`` (4 or 5)."""
    p = Packet(ptype, flags, body, version)
    v5 = version >= 5
    if ptype == CONNACK:
        if len(body) < 2:
            raise MalformedError("short CONNACK")
        p.session_present = bool(body[0] & 1)
        p.reason = body[1]
        if v5 and len(body) > 2:
            p.props, _ = decode_props(body, 2)
    elif ptype == PUBLISH:
        p.dup = bool(flags & 0x8)
        p.qos = (flags >> 1) & 0x3
        p.retain = bool(flags & 0x1)
        p.topic, pos = _read_str(body, 0)
        if p.qos > 0:
            (p.pid,) = struct.unpack_from("!H", body, pos)
            pos += 2
        if v5:
            p.props, pos = decode_props(body, pos)
        p.payload = bytes(body[pos:])
    elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        (p.pid,) = struct.unpack_from("!H", body, 0)
        p.reason = body[2] if (v5 and len(body) > 2) else 0
        if v5 and len(body) > 3:
            p.props, _ = decode_props(body, 3)
    elif ptype in (SUBACK, UNSUBACK):
        (p.pid,) = struct.unpack_from("!H", body, 0)
        pos = 2
        if v5:
            p.props, pos = decode_props(body, pos)
        p.reasons = list(body[pos:])
    elif ptype == DISCONNECT:
        p.reason = body[0] if len(body) >= 1 else 0
        if len(body) > 1:
            p.props, _ = decode_props(body, 1)
    elif ptype == AUTH:
        p.reason = body[0] if len(body) >= 1 else 0
        if len(body) > 1:
            p.props, _ = decode_props(body, 1)
    return p


# ---------------------------------------------------------------------------
# Socket client


class RawClient:
    """A blocking TCP MQTT connection driven by hand from a test.

    All reads take a timeout; ``recv`` raises ``TimeoutError`` when nothing
    (complete) arrives in time and ``Closed`` when the broker closed the
    connection.
    """

    def __init__(self, host: str, port: int, version: int = 5, connect_timeout: float = 5.0):
        self.version = version
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.closed = False

    # -- low level --------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Send bytes; raises Closed if the broker already closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as e:
            self.closed = True
            raise Closed(str(e)) from e

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for data from broker")
        r, _, _ = select.select([self.sock], [], [], remaining)
        if not r:
            raise TimeoutError("timed out waiting for data from broker")
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError) as e:
            self.closed = True
            raise Closed(str(e)) from e
        if not chunk:
            self.closed = True
            raise Closed("EOF")
        self.buf += chunk

    def _try_take_packet(self) -> tuple[int, int, bytes] | None:
        if len(self.buf) < 2:
            return None
        try:
            length, pos = decode_vbi(self.buf, 1)
        except MalformedError:
            if len(self.buf) < 5:
                return None
            raise
        if len(self.buf) < pos + length:
            return None
        first = self.buf[0]
        body = bytes(self.buf[pos:pos + length])
        del self.buf[:pos + length]
        return first >> 4, first & 0x0F, body

    def recv(self, timeout: float = 5.0) -> Packet:
        """Next complete packet from the broker (parsed)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self._try_take_packet()
            if got is not None:
                return parse(*got, version=self.version)
            if self.closed:
                raise Closed("connection closed")
            self._fill(deadline)

    def expect(self, ptype: int, timeout: float = 5.0) -> Packet:
        p = self.recv(timeout)
        assert p.ptype == ptype, f"expected {PACKET_NAMES[ptype]}, got {p!r}"
        return p

    def recv_until_closed(self, timeout: float = 5.0) -> list[Packet]:
        """Read packets until the broker closes the connection.

        Returns every packet received before the close. Fails the test (via
        AssertionError) if the connection is still open after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        packets: list[Packet] = []
        while True:
            try:
                packets.append(self.recv(max(0.0, deadline - time.monotonic())))
            except Closed:
                return packets
            except TimeoutError:
                raise AssertionError(
                    f"broker did not close the connection within {timeout}s; received {packets!r}")

    def is_open_after(self, timeout: float) -> bool:
        """True if no close is observed within ``timeout`` (packets read are discarded)."""
        try:
            while True:
                self.recv(timeout)
        except TimeoutError:
            return True
        except Closed:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    def abort(self) -> None:
        """Close with RST (SO_LINGER 0) — an 'ungraceful' network failure."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    # -- convenience -------------------------------------------------------
    def connect(self, client_id: str = "", *, expect_success: bool = True, timeout: float = 5.0, **kw) -> Packet:
        kw.setdefault("version", self.version)
        self.send(connect(client_id, **kw))
        ack = self.expect(CONNACK, timeout)
        if expect_success:
            assert ack.reason == 0, f"CONNACK refused: {ack!r}"
        return ack

    def subscribe(self, pid: int, filters, *, timeout: float = 5.0, **kw) -> Packet:
        kw.setdefault("version", self.version)
        self.send(subscribe(pid, filters, **kw))
        ack = self.expect(SUBACK, timeout)
        assert ack.pid == pid
        return ack

    def unsubscribe(self, pid: int, filters, *, timeout: float = 5.0, **kw) -> Packet:
        kw.setdefault("version", self.version)
        self.send(unsubscribe(pid, filters, **kw))
        ack = self.expect(UNSUBACK, timeout)
        assert ack.pid == pid
        return ack

    def publish(self, topic, payload=b"", qos=0, **kw) -> None:
        kw.setdefault("version", self.version)
        self.send(publish(topic, payload, qos, **kw))

    def puback(self, pid: int, **kw) -> None:
        kw.setdefault("version", self.version)
        self.send(puback(pid, **kw))

    def pubrec(self, pid: int, **kw) -> None:
        kw.setdefault("version", self.version)
        self.send(pubrec(pid, **kw))

    def pubrel(self, pid: int, **kw) -> None:
        kw.setdefault("version", self.version)
        self.send(pubrel(pid, **kw))

    def pubcomp(self, pid: int, **kw) -> None:
        kw.setdefault("version", self.version)
        self.send(pubcomp(pid, **kw))

    def disconnect(self, **kw) -> None:
        kw.setdefault("version", self.version)
        try:
            self.send(disconnect(**kw))
        except Closed:
            pass
        self.close()

    def ping(self, timeout: float = 5.0) -> None:
        self.send(pingreq())
        self.expect(PINGRESP, timeout)

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def disconnect_reason(packets: list[Packet]) -> int | None:
    """Reason code of the last DISCONNECT in ``packets`` (None if there is none)."""
    reasons = [p.reason for p in packets if p.ptype == DISCONNECT]
    return reasons[-1] if reasons else None


# ---------------------------------------------------------------------------
# Self-check of the encoders against the examples given in the specification.


def _self_test() -> None:
    # §1.5.5 table: boundaries of 1..4 byte encodings
    assert vbi(0) == b"\x00"
    assert vbi(127) == b"\x7f"
    assert vbi(128) == b"\x80\x01"
    assert vbi(16_383) == b"\xff\x7f"
    assert vbi(16_384) == b"\x80\x80\x01"
    assert vbi(2_097_151) == b"\xff\xff\x7f"
    assert vbi(2_097_152) == b"\x80\x80\x80\x01"
    assert vbi(268_435_455) == b"\xff\xff\xff\x7f"
    for n in (0, 1, 127, 128, 321, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455):
        assert decode_vbi(vbi(n), 0) == (n, len(vbi(n)))
    # §1.5.4 example: "A𪛔" -> 00 05 41 F0 AA 9B 94
    assert utf8("A\U0002A6D4") == b"\x00\x05\x41\xf0\xaa\x9b\x94"
    # §3.1.2.10 3.1.1 CONNECT variable header example (keep alive 10, clean session)
    c = connect("", version=4, keepalive=10)
    assert c == b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x0a\x00\x00", c
    # v5 CONNECT with no properties: property length 0 after keep alive
    c5 = connect("", version=5, keepalive=10)
    assert c5 == b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x0a\x00\x00\x00", c5
    # property round trip
    enc = encode_props([("SessionExpiryInterval", 10), ("UserProperty", ("k", "v")), ("ReceiveMaximum", 2)])
    props, end = decode_props(enc, 0)
    assert end == len(enc)
    assert props.get("SessionExpiryInterval") == 10 and props.get("ReceiveMaximum") == 2
    assert props.getall("UserProperty") == [("k", "v")]
    assert enc == b"\x0f\x11\x00\x00\x00\x0a\x26\x00\x01k\x00\x01v\x21\x00\x02"
    assert pubrel(7, version=4) == b"\x62\x02\x00\x07"
    assert subscribe(1, [("a/b", 1)], version=4) == b"\x82\x08\x00\x01\x00\x03a/b\x01"


_self_test()
