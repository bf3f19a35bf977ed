//! Mutual TLS on the peer port (`peer_tls_cert_file`, `peer_tls_key_file`,
//! `peer_tls_ca_file`).
//!
//! Every node presents the same certificate both ways: as a server to the
//! nodes that call it, and as a client when it calls them. A node accepts a
//! caller only with a certificate signed by the peer CA, and checks the name
//! in a called node's certificate: the host of its peer address, or
//! `peer_tls_server_name` when every node's certificate carries one shared
//! name. The shared token, when also set, is checked on top.
//!
//! The files are read again every `peer_tls_reload_secs`: a certificate renewed in
//! place (cert-manager rewrites the mounted Secret) serves new connections
//! without a restart. Established links keep the session they made.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A caller that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections beyond it are closed at
/// once, so a flood of strangers cannot hold unbounded tasks.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// The three PEM files, by the configuration key that names each.
#[derive(Debug, Clone)]
pub struct PeerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error("cannot read {key} ({path}): {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{key} ({path}): {problem}")]
    Invalid {
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("peer_tls_server_name {name:?}: {problem}")]
    ServerName { name: String, problem: String },
}

/// What was built from one reading of the files.
struct Loaded {
    /// The files' bytes, to notice a change.
    contents: [Vec<u8>; 3],
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

pub struct PeerTls {
    files: PeerTlsFiles,
    /// The name checked in every called node's certificate, if fixed.
    server_name: Option<ServerName<'static>>,
    /// How often the files are compared with what is loaded.
    reload_every: Duration,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("files", &self.files)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Reads and checks the files: a missing file, a file without a
    /// certificate or key, or a key that does not match the certificate is
    /// an error naming its configuration key.
    pub fn load(
        files: PeerTlsFiles,
        server_name: Option<&str>,
        reload_every: Duration,
    ) -> Result<Arc<PeerTls>, PeerTlsError> {
        let server_name = server_name
            .map(|name| {
                ServerName::try_from(name.to_string()).map_err(|error| PeerTlsError::ServerName {
                    name: name.to_string(),
                    problem: error.to_string(),
                })
            })
            .transpose()?;
        let loaded = build(&files, read_all(&files)?)?;
        Ok(Arc::new(PeerTls {
            files,
            server_name,
            reload_every,
            loaded: RwLock::new(loaded),
        }))
    }

    /// Completes the server side of a handshake with what is loaded now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.loaded.read().server.clone())
    }

    /// Opens the client side of a handshake with what is loaded now.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.loaded.read().client.clone())
    }

    /// The name a called node's certificate must carry: the configured one,
    /// or the host of its peer address (`host:port`, `[v6]:port`).
    pub fn server_name_for(&self, address: &str) -> Result<ServerName<'static>, NoServerName> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        ServerName::try_from(host_of(address).to_string()).map_err(|error| NoServerName {
            address: address.to_string(),
            problem: error.to_string(),
        })
    }

    /// Reads the files every `reload_every` and, when they changed and
    /// still make a valid identity, uses them for new connections. A bad
    /// update is logged and the previous identity kept.
    pub async fn keep_fresh(self: Arc<Self>, shutdown: CancellationToken) {
        // What was last refused or failed, so that files left bad are
        // reported once, not every round.
        let mut refused: Option<[Vec<u8>; 3]> = None;
        let mut unreadable: Option<String> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.reload_every) => {}
            }
            let files = self.files.clone();
            let contents = match tokio::task::spawn_blocking(move || read_all(&files)).await {
                Ok(Ok(contents)) => {
                    unreadable = None;
                    contents
                }
                Ok(Err(error)) => {
                    let error = error.to_string();
                    if unreadable.as_ref() != Some(&error) {
                        warn!(%error, "peer TLS files unreadable; keeping the loaded certificate");
                        unreadable = Some(error);
                    }
                    continue;
                }
                Err(_) => continue,
            };
            if contents == self.loaded.read().contents || refused.as_ref() == Some(&contents) {
                continue;
            }
            match build(&self.files, contents.clone()) {
                Ok(loaded) => {
                    *self.loaded.write() = loaded;
                    info!("peer TLS certificate, key or CA changed; reloaded");
                }
                Err(error) => {
                    warn!(%error, "peer TLS files changed but are not usable; keeping the loaded certificate");
                    refused = Some(contents);
                }
            }
        }
    }
}

/// A peer address whose host cannot be a TLS server name.
#[derive(Debug, thiserror::Error)]
#[error("peer address {address:?} has no usable host name: {problem}")]
pub struct NoServerName {
    address: String,
    problem: String,
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map_or(address, |(host, _port)| host)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

fn read_all(files: &PeerTlsFiles) -> Result<[Vec<u8>; 3], PeerTlsError> {
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| PeerTlsError::Read {
            key,
            path: path.to_path_buf(),
            source,
        })
    };
    Ok([
        read("peer_tls_cert_file", &files.cert)?,
        read("peer_tls_key_file", &files.key)?,
        read("peer_tls_ca_file", &files.ca)?,
    ])
}

fn build(files: &PeerTlsFiles, contents: [Vec<u8>; 3]) -> Result<Loaded, PeerTlsError> {
    let invalid = |key: &'static str, path: &Path, problem: String| PeerTlsError::Invalid {
        key,
        path: path.to_path_buf(),
        problem,
    };
    let [cert_pem, key_pem, ca_pem] = &contents;
    let chain = certificates(cert_pem)
        .map_err(|problem| invalid("peer_tls_cert_file", &files.cert, problem))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| {
        invalid(
            "peer_tls_key_file",
            &files.key,
            format!("no usable PEM private key: {error}"),
        )
    })?;
    let mut roots = RootCertStore::empty();
    let cas =
        certificates(ca_pem).map_err(|problem| invalid("peer_tls_ca_file", &files.ca, problem))?;
    let (added, _) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(invalid(
            "peer_tls_ca_file",
            &files.ca,
            "no certificate in it is a usable CA".to_string(),
        ));
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|error| invalid("peer_tls_ca_file", &files.ca, error.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid("peer_tls_cert_file", &files.cert, error.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|error| key_mismatch(files, error))?;
    // gRPC is HTTP/2 only.
    server.alpn_protocols = vec![b"h2".to_vec()];

    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid("peer_tls_cert_file", &files.cert, error.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|error| key_mismatch(files, error))?;
    client.alpn_protocols = vec![b"h2".to_vec()];

    Ok(Loaded {
        contents,
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("not PEM certificates: {error}"))?;
    if chain.is_empty() {
        return Err("no PEM CERTIFICATE block in it".to_string());
    }
    Ok(chain)
}

fn key_mismatch(files: &PeerTlsFiles, error: rustls::Error) -> PeerTlsError {
    PeerTlsError::Invalid {
        key: "peer_tls_key_file",
        path: files.key.clone(),
        problem: format!("not a usable key for peer_tls_cert_file: {error}"),
    }
}

/// Accepts TCP connections on `listener` and yields those whose TLS
/// handshake succeeds, each handshake in a task of its own so that a slow
/// or hostile caller holds up nobody. Refusals are logged with the
/// caller's address. Ends when the returned stream is dropped.
pub fn accept(
    listener: TcpListener,
    tls: Arc<PeerTls>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<tokio_rustls::server::TlsStream<TcpStream>>>
{
    let (accepted, stream) = mpsc::channel(64);
    tokio::spawn(async move {
        let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        loop {
            let (tcp, from) = tokio::select! {
                _ = accepted.closed() => return,
                result = listener.accept() => match result {
                    Ok(connection) => connection,
                    Err(error) => {
                        // Out of file descriptors and the like: do not spin.
                        warn!(%error, "peer listener cannot accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                warn!(%from, "too many peer TLS handshakes in progress; closing this one");
                continue;
            };
            // Small answers (forward acks, AwaitRoutes) must not wait for
            // delayed ACKs.
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = accepted.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => warn!(%from, %error, "peer TLS handshake refused"),
                    Err(_) => warn!(%from, "peer TLS handshake timed out"),
                }
                drop(permit);
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> PeerTlsFiles {
        PeerTlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
        }
    }

    #[test]
    fn a_missing_file_names_its_key() {
        let dir = std::env::temp_dir().join(format!("starling-peer-tls-{}", std::process::id()));
        let error = PeerTls::load(files(&dir), None, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("cannot read peer_tls_cert_file"),
            "{error}"
        );
    }

    #[test]
    fn a_file_without_certificates_names_its_key() {
        let dir =
            std::env::temp_dir().join(format!("starling-peer-tls-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["cert.pem", "key.pem", "ca.pem"] {
            std::fs::write(dir.join(name), "not pem\n").unwrap();
        }
        let error = PeerTls::load(files(&dir), None, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(error.starts_with("peer_tls_cert_file"), "{error}");
        assert!(error.contains("no PEM CERTIFICATE"), "{error}");
    }

    #[test]
    fn the_host_of_a_peer_address() {
        assert_eq!(host_of("10.0.0.7:7000"), "10.0.0.7");
        assert_eq!(host_of("[fd00::7]:7000"), "fd00::7");
        assert_eq!(host_of("n1.peers.ns.svc:7000"), "n1.peers.ns.svc");
        assert!(ServerName::try_from(host_of("[fd00::7]:7000").to_string()).is_ok());
    }

    #[test]
    fn a_bad_server_name_is_refused() {
        let dir = std::env::temp_dir();
        let error = PeerTls::load(files(&dir), Some("not a name!"), Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("peer_tls_server_name"), "{error}");
    }
}
