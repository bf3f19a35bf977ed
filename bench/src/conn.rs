//! One MQTT connection's buffered I/O: packets are encoded into a write
//! buffer and decoded from a read buffer with `starling-codec`; a single
//! poll both drains the write buffer and fills the read buffer, so a client
//! never stops reading acknowledgements while its writes wait.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use starling_codec::{DecodeError, Disconnect, EncodeError, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use crate::timer::Timer;

/// Largest packet accepted from the server.
const MAX_PACKET: usize = 268_435_460;
/// Read at least this much at a time.
/// Read space starts at `READ_FIRST` and doubles, up to `READ_CHUNK`,
/// each time a read fills it: an idle or connect-only client never holds
/// 32 KB of buffer, a busy subscriber soon reads in 32 KB chunks.
const READ_FIRST: usize = 1024;
const READ_CHUNK: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed by the server")]
    Closed,
    #[error("server sent DISCONNECT {0}")]
    Disconnected(ReasonCode),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("bad packet from the server: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    #[error("unexpected {0} from the server")]
    Unexpected(&'static str),
    #[error("no answer in time")]
    Timeout,
    /// The run is stopping: not an error.
    #[error("stopped")]
    Stopped,
}

/// What woke [`MqttConn::io`] up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Bytes arrived: call [`MqttConn::next_packet`] until it says `None`.
    Read,
    /// Some of the write buffer went out; there may be room for more.
    Wrote,
    /// The timer passed in expired.
    Timer,
    /// The stop future completed.
    Stop,
}

pub struct MqttConn<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: ProtocolVersion,
    need_flush: bool,
    /// Space offered to the next read (see `READ_FIRST`).
    read_chunk: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> MqttConn<S> {
    /// A connection over `io`, with `queued` bytes still to write (the
    /// CONNECT, or what of it the transport did not send yet).
    pub fn new(io: S, version: ProtocolVersion, queued: BytesMut) -> MqttConn<S> {
        MqttConn {
            io,
            rbuf: BytesMut::new(),
            wbuf: queued,
            version,
            need_flush: false,
            read_chunk: READ_FIRST,
        }
    }

    /// Queues `packet` for writing.
    pub fn send(&mut self, packet: &Packet) -> Result<(), ConnError> {
        starling_codec::encode(packet, self.version, &mut self.wbuf)?;
        Ok(())
    }

    /// The write buffer, to patch the packet just queued (payload stamps).
    pub fn write_buffer(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Bytes queued and not yet written.
    pub fn pending_write(&self) -> usize {
        self.wbuf.len()
    }

    /// The next complete packet already read, if any.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, ConnError> {
        Ok(starling_codec::decode(
            &mut self.rbuf,
            self.version,
            MAX_PACKET,
        )?)
    }

    /// Writes what it can, reads what has arrived, and returns on the first
    /// of: bytes read, the timer, `stop`, or (when nothing else is ready)
    /// progress in writing.
    pub async fn io<T: Timer, F: Future<Output = ()>>(
        &mut self,
        mut timer: Option<&mut T>,
        mut stop: Pin<&mut F>,
    ) -> Result<Event, ConnError> {
        poll_fn(|cx| self.poll_io(cx, timer.as_deref_mut(), stop.as_mut())).await
    }

    fn poll_io<T: Timer, F: Future<Output = ()>>(
        &mut self,
        cx: &mut Context<'_>,
        timer: Option<&mut T>,
        stop: Pin<&mut F>,
    ) -> Poll<Result<Event, ConnError>> {
        if stop.poll(cx).is_ready() {
            return Poll::Ready(Ok(Event::Stop));
        }
        let wrote = match self.poll_write_out(cx) {
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Ready(Ok(wrote)) => wrote,
            Poll::Pending => false,
        };
        if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 4 {
            self.rbuf.reserve(self.read_chunk);
        }
        let offered = self.rbuf.capacity() - self.rbuf.len();
        match poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(ConnError::Closed)),
            Poll::Ready(Ok(n)) => {
                if n == offered {
                    self.read_chunk = (self.read_chunk * 2).min(READ_CHUNK);
                }
                return Poll::Ready(Ok(Event::Read));
            }
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
            Poll::Pending => {}
        }
        if timer.is_some_and(|timer| timer.poll_expired(cx).is_ready()) {
            return Poll::Ready(Ok(Event::Timer));
        }
        if wrote {
            Poll::Ready(Ok(Event::Wrote))
        } else {
            Poll::Pending
        }
    }

    /// Writes and flushes as much as the stream takes. `Ready(Ok(true))`
    /// when anything was written, `Pending` when nothing could be.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ConnError>> {
        let mut wrote = false;
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(ConnError::Closed)),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    self.need_flush = true;
                    wrote = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => break,
            }
        }
        if self.wbuf.is_empty() && self.need_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => {}
            }
        }
        if wrote {
            Poll::Ready(Ok(true))
        } else {
            Poll::Pending
        }
    }

    /// Waits for the next packet (writing what is queued meanwhile), at
    /// most until `deadline`.
    pub async fn recv<F: Future<Output = ()>>(
        &mut self,
        deadline: Instant,
        mut stop: Pin<&mut F>,
    ) -> Result<Packet, ConnError> {
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        loop {
            if let Some(packet) = self.next_packet()? {
                return Ok(packet);
            }
            match self.io(Some(&mut timer.as_mut()), stop.as_mut()).await? {
                Event::Read | Event::Wrote => {}
                Event::Timer => return Err(ConnError::Timeout),
                Event::Stop => return Err(ConnError::Stopped),
            }
        }
    }

    /// Sends DISCONNECT and closes the stream, within `timeout`.
    pub async fn close(mut self, timeout: Duration) {
        let disconnect = Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION));
        if self.send(&disconnect).is_err() {
            return;
        }
        let _ = tokio::time::timeout(timeout, async {
            self.io.write_all_buf(&mut self.wbuf).await?;
            self.io.flush().await?;
            self.io.shutdown().await
        })
        .await;
    }
}
