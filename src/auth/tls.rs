//! TLS on the gRPC listener: certificates from PEM files, re-read when they
//! change (cert-manager rotates them) without touching open connections, and,
//! with a client CA, client certificates required and verified (mTLS).
//!
//! Each accepted connection does its handshake in its own task, bounded in
//! time, so that a slow or silent client never holds up the next one.

use std::{
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use super::identity::PeerIdentity;
use crate::{admission::Limited, telemetry::ThrottledLog};
use arc_swap::ArcSwap;
use futures_util::{Stream, StreamExt};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

/// Longest time a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

static HANDSHAKE_FAILED: ThrottledLog =
    ThrottledLog::new("TLS handshakes failed (plaintext clients, untrusted or missing client certificates)");

/// Where the listener's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CAs that sign client certificates; set: client certificates are required.
    pub client_ca: Option<PathBuf>,
}

/// What the server knows of a connection, in every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// The identity in the client's certificate, with mTLS.
    pub peer: Option<Arc<PeerIdentity>>,
}

/// The TLS server configuration, replaced when its files change.
pub struct ReloadableTls {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
    /// The files' bytes behind `current`, to notice a change.
    loaded: Mutex<Vec<u8>>,
}

impl ReloadableTls {
    /// Reads the files.
    ///
    /// # Errors
    /// A line naming the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<ReloadableTls, String> {
        let bytes = read_all(&files)?;
        let config = server_config(&files, &bytes)?;
        Ok(ReloadableTls {
            files,
            current: ArcSwap::from_pointee(config),
            loaded: Mutex::new(bytes.concat()),
        })
    }

    /// Reads the files again; when they changed and are good, new handshakes use
    /// them. A bad new file is logged and the old certificate stays in use.
    pub fn reload_if_changed(&self) {
        let Ok(bytes) = read_all(&self.files) else {
            // A file being replaced may be missing for a moment: look again next time.
            return;
        };
        let joined = bytes.concat();
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if *loaded == joined {
            return;
        }
        match server_config(&self.files, &bytes) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                info!(cert = %self.files.cert.display(), "TLS certificate reloaded; new connections use it");
            }
            Err(error) => warn!(%error, "refused the changed TLS files; the previous certificate stays in use"),
        }
        // Either way, do not try the same bytes again.
        *loaded = joined;
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

fn read_all(files: &TlsFiles) -> Result<Vec<Vec<u8>>, String> {
    let read = |path: &PathBuf, flag: &str| {
        std::fs::read(path).map_err(|error| format!("cannot read {flag} {}: {error}", path.display()))
    };
    let mut bytes = vec![read(&files.cert, "--tls-cert")?, read(&files.key, "--tls-key")?];
    if let Some(ca) = &files.client_ca {
        bytes.push(read(ca, "--tls-client-ca")?);
    }
    Ok(bytes)
}

fn server_config(files: &TlsFiles, bytes: &[Vec<u8>]) -> Result<ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes[0])
        .collect::<Result<_, _>>()
        .map_err(|error| format!("--tls-cert {} is not PEM: {error}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {} holds no certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&bytes[1])
        .map_err(|error| format!("--tls-key {} holds no usable private key: {error}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?;
    let builder = match (&files.client_ca, bytes.get(2)) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(pem) {
                let certificate =
                    certificate.map_err(|error| format!("--tls-client-ca {} is not PEM: {error}", path.display()))?;
                roots
                    .add(certificate)
                    .map_err(|error| format!("--tls-client-ca {}: {error}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| format!("--tls-client-ca {}: {error}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| format!("--tls-cert and --tls-key do not make a usable pair: {error}"))?;
    // gRPC runs over HTTP/2, which TLS clients ask for by ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client connection, with or without TLS.
pub enum Connection {
    /// Plaintext.
    Plain(Limited<TcpStream>),
    /// TLS, with the identity of the client certificate if one was presented.
    Tls(
        Box<tokio_rustls::server::TlsStream<Limited<TcpStream>>>,
        Option<Arc<PeerIdentity>>,
    ),
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        match self {
            Connection::Plain(_) => ConnectionInfo { peer: None },
            Connection::Tls(_, peer) => ConnectionInfo { peer: peer.clone() },
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Connection::Tls(stream, _) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Connection::Tls(stream, _) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Connection::Tls(stream, _) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Connection::Tls(stream, _) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Plaintext connections as they come.
pub fn plaintext<S, E>(incoming: S) -> impl Stream<Item = Result<Connection, E>>
where
    S: Stream<Item = Result<Limited<TcpStream>, E>>,
{
    incoming.map(|connection| connection.map(Connection::Plain))
}

/// TLS connections: each accepted TCP connection does its handshake in its own
/// task (bounded by [`HANDSHAKE_TIMEOUT`]); those that complete come out here.
pub fn over_tls<S, E>(incoming: S, tls: Arc<ReloadableTls>) -> impl Stream<Item = Result<Connection, std::io::Error>>
where
    S: Stream<Item = Result<Limited<TcpStream>, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (ready, handshaken) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        while let Some(accepted) = incoming.next().await {
            let stream = match accepted {
                Ok(stream) => stream,
                Err(error) => {
                    debug!(%error, "accept failed");
                    continue;
                }
            };
            let acceptor = tls.acceptor();
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let peer = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|leaf| PeerIdentity::of_certificate(leaf.as_ref()))
                            .map(Arc::new);
                        let _ = ready.send(Ok(Connection::Tls(Box::new(stream), peer))).await;
                    }
                    Ok(Err(error)) => {
                        debug!(%error, "TLS handshake failed");
                        HANDSHAKE_FAILED.record();
                    }
                    Err(_) => HANDSHAKE_FAILED.record(),
                }
            });
        }
    });
    ReceiverStream::new(handshaken)
}
