//! TLS for NBD (feature `tls`): x509 certificates, negotiated in the fixed newstyle
//! handshake with `NBD_OPT_STARTTLS`, over rustls with the ring provider.
//!
//! - [`ServerTls`] is what a [`Server`](crate::Server) offers: the certificates of a
//!   directory laid out as nbdkit's `--tls-certificates` (`server-cert.pem`,
//!   `server-key.pem`, and `ca-cert.pem` when client certificates are checked), and
//!   whether plaintext clients are refused ([`TlsMode::Require`]).
//! - [`ClientTls`] is what an [`NbdDevice`](crate::NbdDevice) checks the server against:
//!   `ca-cert.pem` of a directory, or the system's roots, as libnbd does for `nbds://`.
//! - [`TlsStream`] carries the rest of the protocol once STARTTLS was acknowledged.
//!
//! TLS-PSK is not offered: rustls has no PSK key exchange.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, Connection, DigitallySignedStruct,
    RootCertStore, ServerConfig, ServerConnection, SignatureScheme,
};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether a server offers TLS, and whether it insists on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS: `NBD_OPT_STARTTLS` is refused with `NBD_REP_ERR_POLICY`.
    #[default]
    Off,
    /// TLS offered; plaintext clients are served too.
    On,
    /// TLS required (the spec's FORCEDTLS): before STARTTLS every option but
    /// `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` gets `NBD_REP_ERR_TLS_REQD`, and
    /// `NBD_OPT_EXPORT_NAME` closes the connection.
    Require,
}

impl std::str::FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<TlsMode, String> {
        match s {
            "off" => Ok(TlsMode::Off),
            "on" => Ok(TlsMode::On),
            "require" => Ok(TlsMode::Require),
            _ => Err(format!("{s:?}: use off, on or require")),
        }
    }
}

/// Why certificates or keys could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the certificates (a key that does not match its certificate, ...).
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The errno-style text of a PEM reading failure.
fn pem_message(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => crate::server::io_message(&e),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the right kind".into(),
        other => format!("not a PEM file: {other:?}"),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, pem_message(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, pem_message(e)))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in it"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, pem_message(e)))
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// rustls over ring: builds with gcc alone (aws-lc-rs, rustls' other provider, needs more
/// of a C toolchain). rustls 0.23.48 deprecates it for want of post-quantum key exchange;
/// X25519 and the NIST curves remain, as gnutls (nbdkit, qemu-nbd, libnbd) offers them.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's side of TLS: its certificate and key, and how TLS is offered.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    mode: TlsMode,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl ServerTls {
    /// Reads `dir/server-cert.pem` (the certificate, then any intermediates) and
    /// `dir/server-key.pem`; with `verify_peer`, clients must present a certificate
    /// signed by `dir/ca-cert.pem`. `mode` must not be [`TlsMode::Off`].
    pub fn from_dir(dir: &Path, mode: TlsMode, verify_peer: bool) -> Result<ServerTls, TlsError> {
        if mode == TlsMode::Off {
            return Err(TlsError::Config("TLS mode is off".into()));
        }
        let certs = read_certs(&dir.join("server-cert.pem"))?;
        let key = read_key(&dir.join("server-key.pem"))?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if verify_peer {
            let ca = dir.join("ca-cert.pem");
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(&ca)?), provider())
                    .build()
                    .map_err(|e| file_error(&ca, e))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(format!("{}: {e}", dir.display())))?;
        // One connection, one session: no tickets to send after the handshake.
        config.send_tls13_tickets = 0;
        Ok(ServerTls {
            config: Arc::new(config),
            mode,
        })
    }

    /// How TLS is offered.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// Runs the server's half of the TLS handshake over `sock`, giving up after
    /// `deadline` (checked between reads, which have the socket's timeout); `early` are
    /// bytes of it already read from `sock` (a client that sent its ClientHello without
    /// waiting for the STARTTLS acknowledgement).
    pub(crate) fn accept<S: Read + Write>(
        &self,
        sock: S,
        early: &[u8],
        deadline: Instant,
    ) -> io::Result<TlsStream<S>> {
        let conn = ServerConnection::new(self.config.clone()).map_err(tls_io)?;
        TlsStream::handshake(Connection::Server(conn), sock, early, Some(deadline))
    }
}

/// How a client checks the server (libnbd's URI keys `tls-certificates`,
/// `tls-verify-peer`, `tls-hostname`).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("name", &self.name)
            .finish()
    }
}

/// The server certificate check: the chain against the roots (unless `inner` is None:
/// `tls-verify-peer=false`), the name only when `check_name` (a TCP host or an explicit
/// `tls-hostname`; a Unix socket names no host).
#[derive(Debug)]
struct Verifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientTls {
    /// Checks the server against `certificates/ca-cert.pem`, or the system's roots when
    /// `certificates` is None; presents `client-cert.pem` with `client-key.pem` of that
    /// directory when both are there (for servers that check clients). The server's
    /// certificate must name `hostname`, unless `check_name` is false; with `verify_peer`
    /// false it is not checked at all.
    pub fn new(
        certificates: Option<&Path>,
        verify_peer: bool,
        hostname: &str,
        check_name: bool,
    ) -> Result<ClientTls, TlsError> {
        let provider = provider();
        let inner = if verify_peer {
            let roots = match certificates {
                Some(dir) => read_roots(&dir.join("ca-cert.pem"))?,
                None => system_roots()?,
            };
            let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            Some(v)
        } else {
            None
        };
        let verifier = Arc::new(Verifier {
            inner,
            check_name,
            algorithms: provider.signature_verification_algorithms,
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let client_cert = certificates
            .map(|d| (d.join("client-cert.pem"), d.join("client-key.pem")))
            .filter(|(c, k)| c.exists() && k.exists());
        let config = match client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs(&cert)?, read_key(&key)?)
                .map_err(|e| file_error(&cert, e))?,
            None => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from(hostname.to_string())
            .map_err(|_| TlsError::Config(format!("{hostname:?} is not a host name")))?;
        Ok(ClientTls {
            config: Arc::new(config),
            name,
        })
    }

    /// Runs the client's half of the TLS handshake over `sock`.
    pub(crate) fn connect<S: Read + Write>(&self, sock: S) -> io::Result<TlsStream<S>> {
        let conn = ClientConnection::new(self.config.clone(), self.name.clone()).map_err(tls_io)?;
        TlsStream::handshake(Connection::Client(conn), sock, &[], None)
    }
}

/// The system's trusted roots (`SSL_CERT_FILE`, `SSL_CERT_DIR`, or the distribution's).
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(TlsError::Config(format!(
            "no trusted CA certificates on this system{why} (give tls-certificates=DIR)"
        )));
    }
    Ok(roots)
}

fn tls_io(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// Most plaintext queued for encryption by one write (fewer, bigger socket writes).
const BUFFER_LIMIT: usize = 1 << 20;

/// A TLS session over a socket: reads decrypt, writes encrypt and send at once. The
/// socket is read through a buffer (rustls asks for 4 KiB at a time).
pub struct TlsStream<S: Read + Write> {
    conn: Connection,
    r: io::BufReader<S>,
}

impl<S: Read + Write> TlsStream<S> {
    fn handshake(
        mut conn: Connection,
        sock: S,
        early: &[u8],
        deadline: Option<Instant>,
    ) -> io::Result<TlsStream<S>> {
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        let mut s = TlsStream {
            conn,
            r: io::BufReader::with_capacity(64 << 10, sock),
        };
        if !early.is_empty() {
            let mut early = early;
            while !early.is_empty() {
                if s.conn.read_tls(&mut early)? == 0 {
                    break;
                }
                s.process()?;
            }
        }
        while s.conn.is_handshaking() {
            s.send_pending()?;
            if !s.conn.is_handshaking() {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake too slow",
                ));
            }
            if !s.conn.wants_read() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS handshake stalled",
                ));
            }
            if s.conn.read_tls(&mut s.r)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer hung up during the TLS handshake",
                ));
            }
            s.process()?;
        }
        s.send_pending()?;
        Ok(s)
    }

    /// Decrypts what was read; on a TLS error sends the alert rustls queued, then fails.
    fn process(&mut self) -> io::Result<()> {
        match self.conn.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = self.send_pending();
                Err(tls_io(e))
            }
        }
    }

    /// Writes every record rustls has queued.
    fn send_pending(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            if self.conn.write_tls(self.r.get_mut())? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        self.r.get_ref()
    }
}

impl<S: Read + Write> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.send_pending()?;
            // Zero bytes (the peer hung up) is recorded by rustls: the next reader().read
            // says UnexpectedEof, or 0 after a close_notify.
            self.conn.read_tls(&mut self.r)?;
            self.process()?;
        }
    }
}

impl<S: Read + Write> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.conn.writer().write(buf)?;
        self.send_pending()?;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut n = 0;
        for b in bufs.iter().filter(|b| !b.is_empty()) {
            let k = self.conn.writer().write(b)?;
            n += k;
            if k < b.len() {
                break;
            }
        }
        self.send_pending()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending()?;
        self.r.get_mut().flush()
    }
}

impl<S: crate::Transport> crate::Transport for TlsStream<S> {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.get_ref().set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.get_ref().set_write_timeout(timeout)
    }
    // No socket_fd and no clone_socket: records are encrypted here, so replies are
    // neither sent with sendfile nor written by workers behind this stream's back.
}

impl<S: Read + Write> Drop for TlsStream<S> {
    fn drop(&mut self) {
        // Tell the peer the session ends here (the spec's "shut down the TLS session").
        self.conn.send_close_notify();
        let _ = self.send_pending();
    }
}
