//! An NBD export as a [`BlockDevice`]: [`NbdDevice::connect`] takes libnbd's URIs,
//! `nbd://host[:port]/export` and `nbd+unix:///export?socket=PATH`, and with the `tls`
//! feature their TLS forms `nbds://` and `nbds+unix://` (see [`UriTls`]).
//!
//! One connection, requests serialised under a mutex. Every socket operation has a
//! timeout; a request that fails at the transport level (connection dropped, timeout,
//! garbage from the server) drops the connection, reconnects and is sent again, a bounded
//! number of times, then fails with `EIO`. Resending is safe: a request that was not
//! acknowledged had no promised effect, and reads and writes are idempotent. Writes that
//! were acknowledged live on the server (in its page cache at least); [`flush`] sends
//! `NBD_CMD_FLUSH` to make them durable.
//!
//! [`flush`]: BlockDevice::flush

use crate::proto::*;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use vudev::{BlockDevice, Errno, Result};

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP host and port.
    Tcp {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Port (10809 by default).
        port: u16,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "{}", p.display()),
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URI is not one this client understands.
    #[error("bad NBD URI: {0}")]
    BadUri(String),
    /// The socket could not be reached.
    #[error("cannot connect to {target}: {errno}")]
    Connect {
        /// Where.
        target: String,
        /// Why.
        errno: Errno,
    },
    /// The server refused or broke the handshake.
    #[error("{0}")]
    Protocol(String),
    /// The TLS certificates of the URI cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
}

impl ConnectError {
    /// The errno closest to this error (for callers that speak errno only).
    pub fn errno(&self) -> Errno {
        match self {
            ConnectError::BadUri(_) | ConnectError::Tls(_) => Errno::EINVAL,
            ConnectError::Connect { errno, .. } => *errno,
            ConnectError::Protocol(_) => Errno::EIO,
        }
    }
}

impl From<ConnectError> for Errno {
    fn from(e: ConnectError) -> Errno {
        e.errno()
    }
}

/// The TLS settings of an `nbds://` or `nbds+unix://` URI, in libnbd's query keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UriTls {
    /// `tls-certificates=DIR`: the server is checked against `DIR/ca-cert.pem`, and
    /// `DIR/client-cert.pem` with `DIR/client-key.pem` are presented when there; None:
    /// the system's trusted roots.
    pub certificates: Option<PathBuf>,
    /// `tls-verify-peer=false` accepts any server certificate (default true).
    pub verify_peer: bool,
    /// `tls-hostname=NAME`: the name the server's certificate must carry; by default the
    /// URI's host, and no name is checked over a Unix socket.
    pub hostname: Option<String>,
}

/// An NBD URI taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    /// Where the server is.
    pub target: Target,
    /// The export name.
    pub export: String,
    /// TLS (`nbds://`, `nbds+unix://`), or None for plaintext.
    pub tls: Option<UriTls>,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Some(true),
        "0" | "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

/// Parses `nbd[s]://host[:port][/export]` or `nbd[s]+unix:///[export]?socket=PATH`, with
/// the query keys `socket`, `tls-certificates`, `tls-verify-peer` and `tls-hostname`
/// (the TLS ones count only for the `nbds` schemes, as in libnbd).
pub fn parse_uri(uri: &str) -> std::result::Result<Uri, ConnectError> {
    let bad = |why: &str| bad_uri(uri, why);
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let export = percent_decode(path).ok_or_else(|| bad("bad %-escape in the export name"))?;
    let (socket, tls) = parse_query(uri, query.unwrap_or(""))?;
    let (scheme, tls) = match scheme {
        "nbds" => ("nbd", Some(tls)),
        "nbds+unix" => ("nbd+unix", Some(tls)),
        other => (other, None),
    };
    let target = match scheme {
        "nbd+unix" => {
            if !authority.is_empty() {
                return Err(bad("nbd+unix:// takes no host"));
            }
            let socket = socket.ok_or_else(|| bad("nbd+unix:// needs ?socket=PATH"))?;
            Target::Unix(PathBuf::from(socket))
        }
        "nbd" => {
            if socket.is_some() {
                return Err(bad("socket= belongs to nbd+unix://"));
            }
            tcp_target(uri, authority)?
        }
        _ => {
            return Err(bad(
                "unknown scheme (use nbd://, nbds://, nbd+unix:// or nbds+unix://)",
            ))
        }
    };
    Ok(Uri {
        target,
        export,
        tls,
    })
}

/// A [`ConnectError::BadUri`] for `uri`, saying `why`.
fn bad_uri(uri: &str, why: &str) -> ConnectError {
    ConnectError::BadUri(format!("{uri}: {why}"))
}

/// The `socket=` path and the TLS settings of a URI's `query` (unknown keys ignored,
/// TLS-PSK refused).
fn parse_query(
    uri: &str,
    query: &str,
) -> std::result::Result<(Option<String>, UriTls), ConnectError> {
    let bad = |why: &str| bad_uri(uri, why);
    let mut socket = None;
    let mut tls = UriTls {
        certificates: None,
        verify_peer: true,
        hostname: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| bad(&format!("bad %-escape in {k}")))?;
        match k {
            "socket" => socket = Some(v),
            "tls-certificates" => tls.certificates = Some(PathBuf::from(v)),
            "tls-verify-peer" => {
                tls.verify_peer =
                    parse_bool(&v).ok_or_else(|| bad("tls-verify-peer takes true or false"))?
            }
            "tls-hostname" => tls.hostname = Some(v),
            "tls-psk-file" | "tls-username" => {
                return Err(bad("TLS-PSK is not supported (x509 certificates only)"))
            }
            _ => {}
        }
    }
    Ok((socket, tls))
}

/// The TCP host and port of an `nbd://` URI's `authority` (`host`, `host:port`,
/// `[v6]:port`; port 10809 by default).
fn tcp_target(uri: &str, authority: &str) -> std::result::Result<Target, ConnectError> {
    let bad = |why: &str| bad_uri(uri, why);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        None => 10809,
    };
    Ok(Target::Tcp {
        host: host.to_string(),
        port,
    })
}

/// The TLS settings of a connection: checked once, used by every reconnection.
#[cfg(feature = "tls")]
type Tls = Option<crate::tls::ClientTls>;
/// Without the `tls` feature no connection has TLS.
#[cfg(not(feature = "tls"))]
type Tls = Option<std::convert::Infallible>;

/// What the URI's TLS settings need: certificates read, the name to check chosen.
fn client_tls(uri: &Uri, text: &str) -> std::result::Result<Tls, ConnectError> {
    let Some(t) = &uri.tls else {
        return Ok(None);
    };
    #[cfg(feature = "tls")]
    {
        let _ = text;
        let (hostname, check_name) = match (&t.hostname, &uri.target) {
            (Some(h), _) => (h.as_str(), true),
            (None, Target::Tcp { host, .. }) => (host.as_str(), true),
            (None, Target::Unix(_)) => ("localhost", false),
        };
        crate::tls::ClientTls::new(
            t.certificates.as_deref(),
            t.verify_peer,
            hostname,
            check_name,
        )
        .map(Some)
        .map_err(|e| ConnectError::Tls(e.to_string()))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = t;
        Err(ConnectError::BadUri(format!(
            "{text}: this build has no TLS (feature \"tls\")"
        )))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Tunables of an [`NbdDevice`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Timeout of connecting and of every socket read and write.
    pub timeout: Duration,
    /// Tries per request (the first included) before `EIO`.
    pub attempts: u32,
    /// Pause before the first retry; doubled for each further one.
    pub retry_delay: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(10),
            attempts: 4,
            retry_delay: Duration::from_millis(100),
        }
    }
}

enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
    /// A TLS session over one of the above.
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::TlsStream<Sock>>),
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(buf),
            Sock::Tcp(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Sock::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(buf),
            Sock::Tcp(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Sock::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            #[cfg(feature = "tls")]
            Sock::Tls(s) => s.flush(),
            _ => Ok(()),
        }
    }
}

struct Conn {
    sock: Sock,
    structured: bool,
    /// The id of the `base:allocation` context, when the server agreed to it.
    base_allocation: Option<u32>,
    cookie: u64,
}

/// Where the payload of a reply goes.
enum Sink<'a> {
    /// The request returns no data (write, flush, trim).
    Nothing,
    /// The bytes a read returns.
    Data(&'a mut [u8]),
    /// The extents (length, flags) a block status request returns.
    Extents(&'a mut Vec<(u32, u32)>),
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Soft disconnect; the server may be gone already.
        let req = Request {
            flags: 0,
            kind: CMD_DISC,
            cookie: 0,
            offset: 0,
            len: 0,
        };
        let _ = self.sock.write_all(&req.encode());
    }
}

/// What the server answered to one request (the transport worked).
type Answer = std::result::Result<(), Errno>;

fn proto_err(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Conn {
    /// Sends one request and reads its reply: the data into a read's `sink`, the extents
    /// into a block status's.
    fn request(
        &mut self,
        kind: u16,
        offset: u64,
        len: u32,
        payload: Option<&[u8]>,
        sink: Sink<'_>,
    ) -> io::Result<Answer> {
        let cookie = self.send_request(kind, offset, len, payload)?;
        let magic = read_u32(&mut self.sock)?;
        if magic == SIMPLE_REPLY_MAGIC {
            return self.simple_reply(cookie, sink);
        }
        self.structured_reply(magic, cookie, offset, len, sink)
    }

    /// Writes the request header under a new cookie, then a write's payload; returns the
    /// cookie.
    fn send_request(
        &mut self,
        kind: u16,
        offset: u64,
        len: u32,
        payload: Option<&[u8]>,
    ) -> io::Result<u64> {
        self.cookie = self.cookie.wrapping_add(1);
        let cookie = self.cookie;
        let req = Request {
            flags: 0,
            kind,
            cookie,
            offset,
            len,
        };
        self.sock.write_all(&req.encode())?;
        if let Some(p) = payload {
            self.sock.write_all(p)?;
        }
        Ok(cookie)
    }

    /// The rest of a simple reply (its magic read): the error, then a read's data.
    fn simple_reply(&mut self, cookie: u64, sink: Sink<'_>) -> io::Result<Answer> {
        let error = read_u32(&mut self.sock)?;
        if read_u64(&mut self.sock)? != cookie {
            return Err(proto_err("reply to another request"));
        }
        if error != 0 {
            return Ok(Err(nbd_to_errno(error)));
        }
        match sink {
            Sink::Data(buf) => self.sock.read_exact(buf).map(Ok),
            Sink::Nothing => Ok(Ok(())),
            // Block status succeeds with structured replies only.
            Sink::Extents(_) => Err(proto_err("block status answered by a simple reply")),
        }
    }

    /// The chunks of a structured reply (the first one's magic read), up to the one
    /// flagged done; the first error chunk is the answer, else a read must be covered
    /// whole and a block status must have extents.
    fn structured_reply(
        &mut self,
        mut magic: u32,
        cookie: u64,
        offset: u64,
        len: u32,
        mut sink: Sink<'_>,
    ) -> io::Result<Answer> {
        let mut error = None;
        let mut covered = 0u64;
        loop {
            if magic != STRUCTURED_REPLY_MAGIC || !self.structured {
                return Err(proto_err("bad reply magic"));
            }
            let (flags, chunk, clen) = self.chunk_header(cookie)?;
            match chunk {
                REPLY_TYPE_NONE if clen == 0 => {}
                REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
                    covered += self.content_chunk(chunk, clen, offset, len, &mut sink)?;
                }
                c if c & 0x8000 != 0 => {
                    let e = self.error_chunk(clen)?;
                    error.get_or_insert(e);
                }
                REPLY_TYPE_BLOCK_STATUS => self.block_status_chunk(clen, &mut sink)?,
                _ => return Err(proto_err("unexpected reply chunk")),
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
            magic = read_u32(&mut self.sock)?;
        }
        if let Some(e) = error {
            return Ok(Err(e));
        }
        match sink {
            Sink::Data(_) if covered != u64::from(len) => {
                Err(proto_err("read reply does not cover the request"))
            }
            Sink::Extents(out) if out.is_empty() => Err(proto_err("block status without extents")),
            _ => Ok(Ok(())),
        }
    }

    /// The rest of a chunk header (its magic read): flags, type and length; the cookie
    /// must be the request's.
    fn chunk_header(&mut self, cookie: u64) -> io::Result<(u16, u16, u32)> {
        let flags = read_u16(&mut self.sock)?;
        let chunk = read_u16(&mut self.sock)?;
        if read_u64(&mut self.sock)? != cookie {
            return Err(proto_err("reply to another request"));
        }
        let clen = read_u32(&mut self.sock)?;
        Ok((flags, chunk, clen))
    }

    /// An `OFFSET_DATA` or `OFFSET_HOLE` chunk of `clen` bytes, into the read's buffer
    /// (which starts at `offset` and holds `len` bytes); returns the bytes it covers.
    fn content_chunk(
        &mut self,
        chunk: u16,
        clen: u32,
        offset: u64,
        len: u32,
        sink: &mut Sink<'_>,
    ) -> io::Result<u64> {
        let Sink::Data(buf) = sink else {
            return Err(proto_err("content chunk for a non-read"));
        };
        if clen < 9 || (chunk == REPLY_TYPE_OFFSET_HOLE && clen != 12) {
            return Err(proto_err("bad content chunk length"));
        }
        let at = read_u64(&mut self.sock)?;
        let n = if chunk == REPLY_TYPE_OFFSET_DATA {
            u64::from(clen - 8)
        } else {
            u64::from(read_u32(&mut self.sock)?)
        };
        let start = at
            .checked_sub(offset)
            .filter(|s| s.checked_add(n).is_some_and(|e| e <= u64::from(len)))
            .ok_or_else(|| proto_err("chunk outside the request"))? as usize;
        let dst = &mut buf[start..start + n as usize];
        if chunk == REPLY_TYPE_OFFSET_DATA {
            self.sock.read_exact(dst)?;
        } else {
            dst.fill(0);
        }
        Ok(n)
    }

    /// An error chunk of `clen` bytes: its NBD error as an errno.
    fn error_chunk(&mut self, clen: u32) -> io::Result<Errno> {
        if !(6..=MAX_OPTION_LEN).contains(&clen) {
            return Err(proto_err("bad error chunk"));
        }
        let mut data = vec![0u8; clen as usize];
        self.sock.read_exact(&mut data)?;
        Ok(nbd_to_errno(be32(&data)))
    }

    /// A `BLOCK_STATUS` chunk of `clen` bytes: its `base:allocation` extents added to a
    /// block status's sink, skipped otherwise.
    fn block_status_chunk(&mut self, clen: u32, sink: &mut Sink<'_>) -> io::Result<()> {
        if clen > MAX_OPTION_LEN * 128 {
            return Err(proto_err("block status too big"));
        }
        match (sink, self.base_allocation) {
            (Sink::Extents(out), Some(id)) => {
                let mut data = vec![0u8; clen as usize];
                self.sock.read_exact(&mut data)?;
                let extents = crate::allocation::parse_block_status(&data, id)
                    .ok_or_else(|| proto_err("bad block status chunk"))?;
                out.extend(extents);
            }
            _ => discard_bytes(&mut self.sock, clen.into())?,
        }
        Ok(())
    }
}

/// A remote NBD export as a [`BlockDevice`].
pub struct NbdDevice {
    target: Target,
    export: String,
    options: ClientOptions,
    size: u64,
    flags: u16,
    tls: Tls,
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for NbdDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdDevice")
            .field("target", &self.target)
            .field("export", &self.export)
            .field("size", &self.size)
            .field("flags", &self.flags)
            .finish()
    }
}

impl NbdDevice {
    /// Connects to `uri` with the default options.
    pub fn connect(uri: &str) -> std::result::Result<NbdDevice, ConnectError> {
        NbdDevice::connect_with(uri, ClientOptions::default())
    }

    /// Connects to `uri`.
    pub fn connect_with(
        uri: &str,
        options: ClientOptions,
    ) -> std::result::Result<NbdDevice, ConnectError> {
        let parsed = parse_uri(uri)?;
        let tls = client_tls(&parsed, uri)?;
        let Uri { target, export, .. } = parsed;
        let (conn, size, flags) = open(&target, &export, &options, &tls)?;
        Ok(NbdDevice {
            target,
            export,
            options,
            size,
            flags,
            tls,
            conn: Mutex::new(Some(conn)),
        })
    }

    /// The export's transmission flags as the server sent them.
    pub fn transmission_flags(&self) -> u16 {
        self.flags
    }

    /// The export name.
    pub fn export_name(&self) -> &str {
        &self.export
    }

    /// Runs `op` on a live connection, reconnecting and retrying on transport failures.
    fn with_conn(&self, mut op: impl FnMut(&mut Conn) -> io::Result<Answer>) -> Result<()> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut delay = self.options.retry_delay;
        for attempt in 0..self.options.attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(delay);
                delay = delay.saturating_mul(2);
            }
            if guard.is_none() {
                match open(&self.target, &self.export, &self.options, &self.tls) {
                    // The export must be the same one.
                    Ok((c, size, _)) if size == self.size => *guard = Some(c),
                    Ok(_) => return Err(Errno::EIO),
                    Err(_) => continue,
                }
            }
            let Some(conn) = guard.as_mut() else { continue };
            match op(conn) {
                Ok(Ok(())) => return Ok(()),
                // The server is going away: hang up and try a new connection.
                Ok(Err(e)) if e.raw() == libc::ESHUTDOWN => *guard = None,
                Ok(Err(e)) => return Err(e),
                Err(_) => *guard = None,
            }
        }
        Err(Errno::EIO)
    }

    fn clamp(&self, offset: u64, len: usize) -> usize {
        if offset >= self.size {
            0
        } else {
            (self.size - offset).min(len as u64) as usize
        }
    }
}

fn connect_socket(target: &Target, timeout: Duration) -> std::result::Result<Sock, ConnectError> {
    let fail = |e: io::Error| ConnectError::Connect {
        target: target.to_string(),
        errno: Errno::from(e),
    };
    match target {
        Target::Unix(path) => {
            let s = UnixStream::connect(path).map_err(fail)?;
            s.set_read_timeout(Some(timeout)).map_err(fail)?;
            s.set_write_timeout(Some(timeout)).map_err(fail)?;
            Ok(Sock::Unix(s))
        }
        Target::Tcp { host, port } => {
            let addrs =
                (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|_| ConnectError::Connect {
                        target: target.to_string(),
                        errno: Errno::ENOENT,
                    })?;
            let mut last = io::Error::from(io::ErrorKind::NotFound);
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        s.set_read_timeout(Some(timeout)).map_err(fail)?;
                        s.set_write_timeout(Some(timeout)).map_err(fail)?;
                        return Ok(Sock::Tcp(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(fail(last))
        }
    }
}

/// An option reply: (type, data).
fn read_option_reply(s: &mut Sock, option: u32) -> io::Result<(u32, Vec<u8>)> {
    if read_u64(s)? != REPLY_MAGIC {
        return Err(proto_err("bad option reply magic"));
    }
    if read_u32(s)? != option {
        return Err(proto_err("reply to another option"));
    }
    let kind = read_u32(s)?;
    let len = read_u32(s)?;
    if len > MAX_OPTION_LEN {
        return Err(proto_err("option reply too big"));
    }
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data)?;
    Ok((kind, data))
}

fn open(
    target: &Target,
    export: &str,
    options: &ClientOptions,
    tls: &Tls,
) -> std::result::Result<(Conn, u64, u16), ConnectError> {
    let mut sock = connect_socket(target, options.timeout)?;
    let proto = |e: io::Error| {
        ConnectError::Protocol(format!(
            "handshake with {target} failed: {}",
            crate::server::io_message(&e)
        ))
    };
    let no_zeroes = greet(&mut sock).map_err(proto)??;
    if let Some(tls) = tls {
        #[cfg(feature = "tls")]
        {
            sock = starttls(sock, tls, target).map_err(proto)??;
        }
        #[cfg(not(feature = "tls"))]
        match *tls {}
    }
    let agreed = handshake(&mut sock, export, no_zeroes).map_err(proto)??;
    Ok((
        Conn {
            sock,
            structured: agreed.structured,
            base_allocation: agreed.base_allocation,
            cookie: 0,
        },
        agreed.size,
        agreed.flags,
    ))
}

/// What the handshake settled.
struct Agreed {
    structured: bool,
    base_allocation: Option<u32>,
    size: u64,
    flags: u16,
}

type Handshake = std::result::Result<Agreed, ConnectError>;

/// Reads the server's greeting and answers it; whether the server omits the zeroes.
fn greet(s: &mut Sock) -> io::Result<std::result::Result<bool, ConnectError>> {
    if read_u64(s)? != NBDMAGIC {
        return Err(proto_err("not an NBD server"));
    }
    if read_u64(s)? != IHAVEOPT {
        return Ok(Err(ConnectError::Protocol(
            "server speaks only oldstyle NBD".into(),
        )));
    }
    let hflags = read_u16(s)?;
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Ok(Err(ConnectError::Protocol(
            "server does not speak fixed newstyle NBD".into(),
        )));
    }
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let cflags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };
    s.write_all(&cflags.to_be_bytes())?;
    Ok(Ok(no_zeroes))
}

/// `NBD_OPT_STARTTLS`, then the TLS handshake: the socket as a TLS session.
#[cfg(feature = "tls")]
fn starttls(
    mut s: Sock,
    tls: &crate::tls::ClientTls,
    target: &Target,
) -> io::Result<std::result::Result<Sock, ConnectError>> {
    s.write_all(&option_request(OPT_STARTTLS, &[]))?;
    let (kind, data) = read_option_reply(&mut s, OPT_STARTTLS)?;
    if kind != REP_ACK {
        let _ = s.write_all(&option_request(OPT_ABORT, &[]));
        let msg = String::from_utf8_lossy(&data);
        return Ok(Err(ConnectError::Protocol(format!(
            "{target} does not offer TLS{}{msg}",
            if msg.is_empty() { "" } else { ": " }
        ))));
    }
    let stream = tls.connect(s)?;
    Ok(Ok(Sock::Tls(Box::new(stream))))
}

/// Asks for the `base:allocation` context on `export`: its id, if the server agrees.
fn ask_base_allocation(s: &mut Sock, export: &str) -> io::Result<Option<u32>> {
    let payload = crate::allocation::set_meta_context_payload(export);
    s.write_all(&option_request(OPT_SET_META_CONTEXT, &payload))?;
    let mut id = None;
    loop {
        let (kind, data) = read_option_reply(s, OPT_SET_META_CONTEXT)?;
        match kind {
            REP_META_CONTEXT => id = id.or(crate::allocation::base_allocation_id(&data)),
            REP_ACK => return Ok(id),
            // Refused or unknown (an error reply ends the option): copy everything.
            _ => return Ok(None),
        }
    }
}

/// Option haggling up to transmission.
fn handshake(s: &mut Sock, export: &str, no_zeroes: bool) -> io::Result<Handshake> {
    s.write_all(&option_request(OPT_STRUCTURED_REPLY, &[]))?;
    let (kind, _) = read_option_reply(s, OPT_STRUCTURED_REPLY)?;
    let structured = kind == REP_ACK;
    let base_allocation = if structured {
        ask_base_allocation(s, export)?
    } else {
        None
    };
    let (size, flags) = match go(s, export)? {
        Some(Ok(export)) => export,
        Some(Err(e)) => return Ok(Err(e)),
        // An old server without NBD_OPT_GO.
        None => export_name_without_go(s, export, no_zeroes)?,
    };
    Ok(Ok(Agreed {
        structured,
        base_allocation,
        size,
        flags,
    }))
}

/// The export's size and flags as `NBD_OPT_GO` gives them; None when the server does not
/// know the option.
type Go = Option<std::result::Result<(u64, u16), ConnectError>>;

/// `NBD_OPT_GO` for `export`: its size and transmission flags, from the server's
/// `NBD_INFO_EXPORT`.
fn go(s: &mut Sock, export: &str) -> io::Result<Go> {
    let mut go = Vec::new();
    go.extend_from_slice(&(export.len() as u32).to_be_bytes());
    go.extend_from_slice(export.as_bytes());
    go.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&option_request(OPT_GO, &go))?;
    let mut info = None;
    loop {
        let (kind, data) = read_option_reply(s, OPT_GO)?;
        match kind {
            REP_INFO => {
                if data.len() == 12 && be16(&data) == INFO_EXPORT {
                    info = Some((be64(&data[2..]), be16(&data[10..])));
                }
            }
            REP_ACK => {
                let Some(info) = info else {
                    return Err(proto_err("NBD_OPT_GO succeeded without export info"));
                };
                return Ok(Some(Ok(info)));
            }
            REP_ERR_UNSUP => return Ok(None),
            _ => return Ok(Some(Err(go_refused(export, kind, &data)))),
        }
    }
}

/// Why the server refused `NBD_OPT_GO` for `export`, with reply `kind` and message `data`.
fn go_refused(export: &str, kind: u32, data: &[u8]) -> ConnectError {
    let msg = String::from_utf8_lossy(data);
    let what = match kind {
        REP_ERR_UNKNOWN => "no such export",
        REP_ERR_POLICY => "refused by policy",
        REP_ERR_SHUTDOWN => "server shutting down",
        REP_ERR_TLS_REQD => "the server requires TLS (use nbds://)",
        _ => "refused",
    };
    ConnectError::Protocol(format!(
        "export {export:?}: {what}{}{msg}",
        if msg.is_empty() { "" } else { ": " }
    ))
}

/// `NBD_OPT_EXPORT_NAME`, for servers without `NBD_OPT_GO`: the export's size and flags.
fn export_name_without_go(s: &mut Sock, export: &str, no_zeroes: bool) -> io::Result<(u64, u16)> {
    s.write_all(&option_request(OPT_EXPORT_NAME, export.as_bytes()))?;
    let size = read_u64(s)?;
    let flags = read_u16(s)?;
    if !no_zeroes {
        discard_bytes(s, 124)?;
    }
    Ok((size, flags))
}

impl BlockDevice for NbdDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.flags & FLAG_READ_ONLY != 0
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let len = self.clamp(offset, buf.len());
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_PAYLOAD as usize);
            let at = offset + done as u64;
            let piece = &mut buf[done..done + n];
            self.with_conn(|c| c.request(CMD_READ, at, n as u32, None, Sink::Data(&mut *piece)))?;
            done += n;
        }
        Ok(len)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize> {
        if self.read_only() {
            return Err(Errno::EROFS);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let len = self.clamp(offset, buf.len());
        if len == 0 {
            return Err(Errno::ENOSPC);
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_PAYLOAD as usize);
            let at = offset + done as u64;
            let piece = &buf[done..done + n];
            self.with_conn(|c| c.request(CMD_WRITE, at, n as u32, Some(piece), Sink::Nothing))?;
            done += n;
        }
        Ok(len)
    }

    /// One `NBD_CMD_BLOCK_STATUS` request (at most 1 GiB) in the server's `base:allocation`
    /// context: extents flagged `NBD_STATE_ZERO` read as zeros. All data when the server
    /// offers no block status.
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<vudev::Extent>> {
        let len = len.min(self.size.saturating_sub(offset)).min(1 << 30);
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut got = Vec::new();
        let mut offered = true;
        self.with_conn(|c| {
            got.clear();
            if c.base_allocation.is_none() {
                offered = false;
                return Ok(Ok(()));
            }
            c.request(
                CMD_BLOCK_STATUS,
                offset,
                len as u32,
                None,
                Sink::Extents(&mut got),
            )
        })?;
        if !offered {
            return Ok(vudev::all_data(self.size, offset, len));
        }
        let mut list = vudev::ExtentList::new(max);
        let mut pos = 0;
        // The last extent may run past the request: it is cut there.
        for (n, flags) in got {
            let n = u64::from(n).min(len - pos);
            if n == 0 || !list.push(n, flags & STATE_ZERO != 0) {
                break;
            }
            pos += n;
        }
        Ok(list.into_vec())
    }

    fn flush(&self) -> Result<()> {
        if self.read_only() || self.flags & FLAG_SEND_FLUSH == 0 {
            return Ok(());
        }
        self.with_conn(|c| c.request(CMD_FLUSH, 0, 0, None, Sink::Nothing))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only() {
            return Err(Errno::EROFS);
        }
        if self.flags & FLAG_SEND_TRIM == 0 {
            return Ok(());
        }
        let len = self.clamp(offset, usize::try_from(len).unwrap_or(usize::MAX)) as u64;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(1 << 30);
            let at = offset + done;
            self.with_conn(|c| c.request(CMD_TRIM, at, n as u32, None, Sink::Nothing))?;
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_as_libnbd_spells_them() {
        let parse = |u: &str| parse_uri(u).map(|u| (u.target, u.export));
        assert_eq!(
            parse("nbd+unix:///disk?socket=/tmp/s").unwrap(),
            (Target::Unix("/tmp/s".into()), "disk".into())
        );
        assert_eq!(
            parse("nbd+unix:///?socket=/tmp/a%20b").unwrap(),
            (Target::Unix("/tmp/a b".into()), String::new())
        );
        assert_eq!(
            parse("nbd://example.org/a%2Fb").unwrap(),
            (
                Target::Tcp {
                    host: "example.org".into(),
                    port: 10809
                },
                "a/b".into()
            )
        );
        assert_eq!(
            parse("nbd://[::1]:1234").unwrap(),
            (
                Target::Tcp {
                    host: "::1".into(),
                    port: 1234
                },
                String::new()
            )
        );
        assert_eq!(
            parse_uri("nbd://h/x?tls-certificates=/c").unwrap().tls,
            None
        );
        for bad in [
            "nbd+unix:///x",
            "nbds+unix:///x",
            "nbds://h/x?tls-psk-file=/k",
            "nbds://h/x?tls-verify-peer=maybe",
            "http://h/x",
            "nbd://:1/x",
            "nbd://h:99999/x",
            "nbd://h/%zz",
            "nbd+unix://host/x?socket=/s",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_uris_take_libnbds_query_keys() {
        let u = parse_uri("nbds://localhost:1234/d?tls-certificates=/etc/c%20d").unwrap();
        assert_eq!(
            u.target,
            Target::Tcp {
                host: "localhost".into(),
                port: 1234
            }
        );
        assert_eq!(
            u.tls,
            Some(UriTls {
                certificates: Some("/etc/c d".into()),
                verify_peer: true,
                hostname: None
            })
        );
        let u =
            parse_uri("nbds+unix:///e?socket=/s&tls-verify-peer=false&tls-hostname=srv.example")
                .unwrap();
        assert_eq!(u.target, Target::Unix("/s".into()));
        assert_eq!(u.export, "e");
        assert_eq!(
            u.tls,
            Some(UriTls {
                certificates: None,
                verify_peer: false,
                hostname: Some("srv.example".into())
            })
        );
    }
}
