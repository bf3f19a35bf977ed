"""A minimal gRPC-over-HTTP/2 caller built on the `h2` package (pip install h2), for checking
that a node's peer port refuses callers without the peer token or certificate. It speaks exactly
one call per connection, prior-knowledge cleartext HTTP/2 (what tonic serves without TLS) or HTTP/2
over TLS (ALPN h2) when given an ``ssl.SSLContext``, and encodes the few protobuf messages it needs
by hand (proto/starling/cluster/v1/peer.proto)."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass, field

from cluster_helpers import pb_fields

try:
    import h2.config
    import h2.connection
    import h2.events
except ImportError:  # reported by the security tests as a failure with the install hint
    h2 = None

SERVICE = "/starling.cluster.v1.Peer/"


# -- protobuf encoding (just what the calls need) ----------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_bytes(field_no: int, value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    return _varint(field_no << 3 | 2) + _varint(len(value)) + value


def pb_uint(field_no: int, value: int) -> bytes:
    return _varint(field_no << 3) + _varint(value)


def forwarded_message(topic: str, payload: bytes, qos: int = 0) -> bytes:
    """ForwardedMessage{topic, payload, qos, plain: true}."""
    return pb_bytes(1, topic) + pb_bytes(2, payload) + pb_uint(3, qos) + pb_uint(12, 1)


def forward_batch(sequence: int, messages: list[bytes]) -> bytes:
    return pb_uint(1, sequence) + b"".join(pb_bytes(2, m) for m in messages)


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


# -- one call ---------------------------------------------------------------------------------

@dataclass
class CallResult:
    connected: bool = False
    http_status: int | None = None
    grpc_status: int | None = None
    grpc_message: str = ""
    data: bytes = b""            # response body (gRPC frames)
    closed: str = ""             # how the connection ended, if abnormally
    headers: list = field(default_factory=list)

    def messages(self) -> list[bytes]:
        out, pos = [], 0
        while pos + 5 <= len(self.data):
            n = struct.unpack(">I", self.data[pos + 1:pos + 5])[0]
            out.append(self.data[pos + 5:pos + 5 + n])
            pos += 5 + n
        return out

    @property
    def ok(self) -> bool:
        return self.grpc_status == 0


def call(host: str, port: int, method: str, request: bytes, *, metadata: dict[str, str] | None = None,
         timeout: float = 5.0, half_close: bool = True, linger: float = 0.0,
         tls: ssl.SSLContext | None = None) -> CallResult:
    """Call ``method`` with one request message; returns what came back. With
    ``half_close=False`` (client streaming) the request stream is left open for ``linger``
    seconds after sending, then ended. With ``tls`` the call goes over TLS made with that context
    (a failed handshake is reported in ``closed``, with ``connected`` true)."""
    if h2 is None:
        raise AssertionError("the security tests need the h2 package: pip install -r e2e/cluster/requirements.txt")
    res = CallResult()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        res.closed = f"connect failed: {e}"
        return res
    res.connected = True
    if tls is not None:
        try:
            sock = tls.wrap_socket(sock, server_hostname=host)
        except OSError as e:
            sock.close()
            res.closed = f"TLS handshake failed: {e}"
            return res
    sock.settimeout(0.2)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    headers = [(":method", "POST"), (":scheme", "https" if tls else "http"), (":path", SERVICE + method),
               (":authority", f"{host}:{port}"), ("content-type", "application/grpc"), ("te", "trailers")]
    headers += list((metadata or {}).items())
    conn.send_headers(sid, headers)
    conn.send_data(sid, grpc_frame(request), end_stream=half_close)
    deadline = time.monotonic() + timeout
    end_at = time.monotonic() + linger if not half_close else None
    done = False
    try:
        sock.sendall(conn.data_to_send())
        while not done and time.monotonic() < deadline:
            if end_at is not None and time.monotonic() >= end_at:
                conn.end_stream(sid)
                end_at = None
                sock.sendall(conn.data_to_send())
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            if not chunk:
                res.closed = res.closed or "connection closed by the server"
                break
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived):
                    res.headers += ev.headers
                    for k, v in ev.headers:
                        if k == ":status":
                            res.http_status = int(v)
                        elif k == "grpc-status":  # trailers-only response
                            res.grpc_status = int(v)
                        elif k == "grpc-message":
                            res.grpc_message = v
                elif isinstance(ev, h2.events.DataReceived):
                    res.data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.TrailersReceived):
                    res.headers += ev.headers
                    for k, v in ev.headers:
                        if k == "grpc-status":
                            res.grpc_status = int(v)
                        elif k == "grpc-message":
                            res.grpc_message = v
                elif isinstance(ev, h2.events.StreamEnded):
                    done = True
                elif isinstance(ev, h2.events.StreamReset):
                    res.closed = f"stream reset, error code {ev.error_code}"
                    done = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    res.closed = f"GOAWAY, error code {ev.error_code}"
                    done = True
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        else:
            if not done and not res.closed:
                res.closed = f"no complete response within {timeout}s"
    except OSError as e:
        res.closed = f"socket error: {e}"
    finally:
        sock.close()
    return res


def status_node(res: CallResult) -> str | None:
    """The node id in a `Peer/Status` answer (StatusResponse field 1), or None without one."""
    msgs = res.messages()
    if not msgs:
        return None
    f = pb_fields(msgs[0])
    return f[1][0].decode() if 1 in f else ""
