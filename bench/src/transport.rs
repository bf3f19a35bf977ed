//! Opening a byte stream to the broker: TCP, TLS (tokio-rustls), WebSocket
//! or WebSocket over TLS (tokio-tungstenite, subprotocol "mqtt"), from a
//! round-robin choice of local source addresses.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, bail};
use bytes::{Buf, BytesMut};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::cli::{CommonArgs, Transport};
use crate::sys;
use crate::ws::WsIo;

/// A connected byte stream, whatever the transport.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WsIo<TcpStream>>),
    Wss(Box<WsIo<TlsStream<TcpStream>>>),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Stream::Ws($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Stream::Wss($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_shutdown(cx))
    }
}

/// Everything needed to open one more connection.
pub struct Connector {
    transport: Transport,
    /// One per `--port`; client `index` uses `addrs[index % len]`.
    addrs: Vec<SocketAddr>,
    sources: Vec<IpAddr>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// `ws://host:port/path` per address, for the WebSocket handshake.
    ws_uris: Vec<String>,
}

impl Connector {
    pub async fn new(args: &CommonArgs) -> anyhow::Result<Connector> {
        if args.port.is_empty() {
            bail!("--port needs at least one port");
        }
        let addr = tokio::net::lookup_host((args.host.as_str(), args.port[0]))
            .await
            .with_context(|| format!("cannot resolve {}", args.host))?
            .next()
            .with_context(|| format!("{} has no address", args.host))?;
        if let Some(bad) = args.ifaddr.iter().find(|a| a.is_ipv4() != addr.is_ipv4()) {
            bail!("--ifaddr {bad} is not of the same IP version as {addr}");
        }
        let tls = if args.transport.uses_tls() {
            let name = args.servername.clone().unwrap_or_else(|| args.host.clone());
            let server_name = ServerName::try_from(name.clone())
                .with_context(|| format!("{name} is not a valid TLS server name"))?;
            let config = tls_config(args)?;
            Some((TlsConnector::from(config), server_name))
        } else {
            None
        };
        let host = if args.host.contains(':') {
            format!("[{}]", args.host)
        } else {
            args.host.clone()
        };
        let path = if args.ws_path.starts_with('/') {
            args.ws_path.clone()
        } else {
            format!("/{}", args.ws_path)
        };
        Ok(Connector {
            transport: args.transport,
            addrs: args
                .port
                .iter()
                .map(|&port| SocketAddr::new(addr.ip(), port))
                .collect(),
            sources: args.ifaddr.clone(),
            tls,
            ws_uris: args
                .port
                .iter()
                .map(|port| format!("ws://{host}:{port}{path}"))
                .collect(),
        })
    }

    /// Opens the stream for client `index` (which picks its source
    /// address). Over plain TCP, what `first` holds (the CONNECT) is sent
    /// as soon as the connection allows and taken out of it; the other
    /// transports leave it to be sent after their handshake.
    pub async fn connect(&self, index: u32, first: &mut BytesMut) -> io::Result<Stream> {
        let mut nothing = BytesMut::new();
        let early = match self.transport {
            Transport::Tcp => first,
            // Sent after the TLS or WebSocket handshake.
            Transport::Tls | Transport::Ws | Transport::Wss => &mut nothing,
        };
        let tcp = self.tcp(index, early).await?;
        match self.transport {
            Transport::Tcp => Ok(Stream::Tcp(tcp)),
            Transport::Tls => Ok(Stream::Tls(Box::new(self.tls(tcp).await?))),
            Transport::Ws => Ok(Stream::Ws(Box::new(self.websocket(tcp, index).await?))),
            Transport::Wss => {
                let tls = self.tls(tcp).await?;
                Ok(Stream::Wss(Box::new(self.websocket(tls, index).await?)))
            }
        }
    }

    fn pick<T>(choices: &[T], index: u32) -> &T {
        &choices[index as usize % choices.len()]
    }

    /// Connects and sends `first` (if any) before waiting for the
    /// connection to be reported writable. On loopback the handshake is
    /// done by the time `connect` returns, so the send goes through at once
    /// and the client spares a wake-up, a readiness check and `SO_ERROR`
    /// per connection: a connect burst is as much the tool's CPU as the
    /// broker's. A send that finds the handshake under way fails with
    /// `WouldBlock` and the usual wait follows.
    async fn tcp(&self, index: u32, first: &mut BytesMut) -> io::Result<TcpStream> {
        let addr = *Self::pick(&self.addrs, index);
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        socket.set_tcp_nodelay(true)?;
        if !self.sources.is_empty() {
            let source = *Self::pick(&self.sources, index);
            sys::bind_address_no_port(&socket)?;
            socket.bind(&SocketAddr::new(source, 0).into())?;
        }
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(error) => return Err(error),
        }
        let sent = if first.is_empty() {
            0
        } else {
            match socket.send(first) {
                Ok(sent) => sent,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
                Err(error) => return Err(error),
            }
        };
        let stream = TcpStream::from_std(socket.into())?;
        if sent == 0 {
            stream.writable().await?;
            if let Some(error) = stream.take_error()? {
                return Err(error);
            }
        }
        first.advance(sent);
        Ok(stream)
    }

    async fn tls(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let Some((connector, name)) = &self.tls else {
            return Err(io::Error::other("TLS is not configured"));
        };
        connector.connect(name.clone(), tcp).await
    }

    async fn websocket<S>(&self, stream: S, index: u32) -> io::Result<WsIo<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut request = Self::pick(&self.ws_uris, index)
            .as_str()
            .into_client_request()
            .map_err(io::Error::other)?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        let (ws, _response) = tokio_tungstenite::client_async(request, stream)
            .await
            .map_err(io::Error::other)?;
        Ok(WsIo::new(ws))
    }
}

/// The CA bundle used when neither --cafile nor --insecure is given.
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn tls_config(args: &CommonArgs) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = if args.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let file = match &args.cafile {
            Some(path) => path.clone(),
            None => {
                std::env::var_os("SSL_CERT_FILE").map_or_else(|| SYSTEM_CA_FILE.into(), Into::into)
            }
        };
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&file)
            .with_context(|| format!("cannot read CA file {}", file.display()))?;
        for cert in certs {
            let cert = cert.with_context(|| format!("bad PEM in {}", file.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("bad CA certificate in {}", file.display()))?;
        }
        if roots.is_empty() {
            bail!("no CA certificate in {}", file.display());
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `--insecure`: any certificate chain is accepted, but handshake
/// signatures are still checked.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use tokio::io::AsyncReadExt;
    use tokio::time::{Duration, timeout};

    async fn connector(port: u16, extra: &[&str]) -> Connector {
        let port = port.to_string();
        let mut args = vec!["starling-bench", "conn", "-h", "127.0.0.1", "-p", &port];
        args.extend_from_slice(extra);
        let cli = match Cli::try_parse_from(args) {
            Ok(cli) => cli,
            Err(error) => panic!("{error}"),
        };
        let Command::Conn(conn) = cli.command else {
            panic!("not conn");
        };
        match Connector::new(&conn.common).await {
            Ok(connector) => connector,
            Err(error) => panic!("{error:#}"),
        }
    }

    #[tokio::test]
    async fn tcp_sends_the_first_bytes_with_the_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        let mut sent_at_once = 0;
        for extra in [&[][..], &["--ifaddr", "127.0.0.2"][..]].repeat(3) {
            let connector = connector(port, extra).await;
            let mut first = BytesMut::from(&b"\x10\x02hi"[..]);
            let stream = timeout(Duration::from_secs(5), connector.connect(0, &mut first))
                .await
                .expect("connected in time")
                .expect("connected");
            assert!(matches!(stream, Stream::Tcp(_)));
            // Whatever was not sent stays for the caller to write.
            let sent = 4 - first.len();
            if sent == 4 {
                sent_at_once += 1;
            }
            let (mut accepted, peer) = listener.accept().await.expect("accept");
            if !extra.is_empty() {
                assert_eq!(peer.ip().to_string(), "127.0.0.2");
            }
            let mut received = vec![0u8; sent];
            accepted
                .read_exact(&mut received)
                .await
                .expect("the sent bytes");
            assert_eq!(received, &b"\x10\x02hi"[..sent]);
        }
        // On loopback the handshake is normally done when `connect`
        // returns; only softirqs deferred on a loaded machine delay it.
        assert!(sent_at_once > 0, "no connect sent its first bytes at once");
    }

    #[tokio::test]
    async fn tcp_to_a_closed_port_fails() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("its address").port()
        };
        let connector = connector(port, &[]).await;
        let mut first = BytesMut::from(&b"\x10\x00"[..]);
        let result = timeout(Duration::from_secs(5), connector.connect(0, &mut first))
            .await
            .expect("done in time");
        assert!(
            matches!(&result, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused),
            "{:?}",
            result.err()
        );
    }
}
