//! The server engine: named exports, a thread per connection, fixed newstyle handshake and
//! the transmission phase.
//!
//! [`Server::handle`] speaks the whole protocol over any [`Transport`] (a socket, or an
//! in-memory pipe for the fuzzer); [`Server::serve_unix`] and [`Server::serve_tcp`] accept
//! connections and run one handler thread each. Requests of one connection are served in
//! order; all connections of an export share one device, so a FLUSH on any of them makes
//! the writes of all of them durable (hence `NBD_FLAG_CAN_MULTI_CONN`).

use crate::proto::*;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vudev::{BlockDevice, Errno, FileDevice};

/// Most options one handshake may send before the server gives up on the client.
const MAX_OPTIONS: usize = 1024;
/// Most queries in one `NBD_OPT_*_META_CONTEXT`.
const MAX_QUERIES: u32 = 64;
/// Most extents in one block status reply.
const MAX_EXTENTS: usize = 1 << 16;
/// An oversized option of at most this many bytes is skipped; a bigger one ends the session.
const MAX_SKIPPABLE_OPTION: u32 = 1 << 20;

/// A byte stream the server can talk NBD over.
pub trait Transport: Read + Write {
    /// Sets the read timeout (the handshake has one, the transmission phase none);
    /// streams without timeouts ignore it.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = timeout;
        Ok(())
    }

    /// Sets the write timeout (a client that stops reading is dropped after it).
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = timeout;
        Ok(())
    }

    /// The socket, for `sendfile` of read replies straight from a raw image file; None
    /// (the default) for streams that are not file descriptors.
    fn socket_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// A second descriptor of the socket, for replies written by worker threads while
    /// this stream reads requests; None (requests served one at a time) otherwise.
    fn clone_socket(&self) -> Option<OwnedFd> {
        None
    }
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_write_timeout(timeout)
    }
    fn socket_fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).socket_fd()
    }
    fn clone_socket(&self) -> Option<OwnedFd> {
        (**self).clone_socket()
    }
}

impl Transport for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, timeout)
    }
    fn socket_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
    fn clone_socket(&self) -> Option<OwnedFd> {
        self.try_clone().ok().map(OwnedFd::from)
    }
}

impl Transport for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
    fn socket_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
    fn clone_socket(&self) -> Option<OwnedFd> {
        self.try_clone().ok().map(OwnedFd::from)
    }
}

/// A transport read through a buffer (a burst of small requests costs one `read` call)
/// and written directly (replies are whole writes already).
struct Buffered<S: Transport> {
    r: io::BufReader<S>,
}

impl<S: Transport> Read for Buffered<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.r.read(buf)
    }
}

impl<S: Transport> Write for Buffered<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.r.get_mut().write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.r.get_mut().write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.r.get_mut().flush()
    }
}

impl<S: Transport> Transport for Buffered<S> {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.r.get_ref().set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.r.get_ref().set_write_timeout(timeout)
    }
    fn socket_fd(&self) -> Option<BorrowedFd<'_>> {
        self.r.get_ref().socket_fd()
    }
    fn clone_socket(&self) -> Option<OwnedFd> {
        self.r.get_ref().clone_socket()
    }
}

/// The reply side of a socket shared by a connection's workers (a `File` over the
/// socket's descriptor: `write`, `writev` and `sendfile` work on it as on the socket).
struct SockOut(std::fs::File);

impl Write for SockOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for SockOut {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl Transport for SockOut {
    fn socket_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.0.as_fd())
    }
}

/// Workers per connection: requests of one connection (READ, WRITE) served concurrently.
const WORKERS: usize = 4;
/// Requests queued for the workers of one connection.
const QUEUED: usize = 16;
/// Most payload bytes of one connection's queued and running writes.
const MAX_INFLIGHT_BYTES: usize = 64 << 20;

/// A READ or WRITE handed to a worker.
struct Job {
    req: Request,
    payload: Vec<u8>,
}

/// What a connection's reader and workers share.
struct Pipe {
    out: Mutex<SockOut>,
    /// Jobs queued or running, and their payload bytes.
    inflight: Mutex<(usize, usize)>,
    idle: std::sync::Condvar,
    /// A reply could not be written: the connection is over.
    broken: AtomicBool,
    /// Payload buffers to reuse.
    spare: Mutex<Vec<Vec<u8>>>,
}

impl Pipe {
    /// Waits until no more than `bytes_left` payload bytes are in flight (0: until the
    /// workers are idle, before the reader itself replies).
    fn wait_below(&self, bytes_left: usize) {
        let mut n = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        while n.0 > 0 && (bytes_left == 0 || n.1 > bytes_left) {
            n = self.idle.wait(n).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn done(&self, bytes: usize) {
        let mut n = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        n.0 -= 1;
        n.1 -= bytes;
        self.idle.notify_all();
    }

    fn take_buf(&self) -> Vec<u8> {
        self.spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give_buf(&self, buf: Vec<u8>) {
        if buf.capacity() <= 4 << 20 {
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            if spare.len() < QUEUED + WORKERS {
                spare.push(buf);
            }
        }
    }
}

/// Writes all of `parts` with as few calls as the stream takes (`writev`).
fn write_parts(w: &mut impl Write, mut parts: &mut [io::IoSlice<'_>]) -> io::Result<()> {
    io::IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        match w.write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One named export: a device and how it is offered.
#[derive(Clone)]
pub struct Export {
    /// The device served.
    pub device: Arc<dyn BlockDevice>,
    /// Refuse writes (`NBD_FLAG_READ_ONLY`, `EPERM`), whatever the device allows.
    pub read_only: bool,
    /// Human-readable description (`NBD_INFO_DESCRIPTION`, `NBD_OPT_LIST`).
    pub description: String,
    /// The raw image file the device reads, and where the export starts in it: read
    /// replies are sent from it with `sendfile` (no copy through the server).
    pub direct: Option<(Arc<FileDevice>, u64)>,
}

impl Export {
    /// An export of `device`, read-only when the device is, reporting everything as data.
    pub fn new(device: Arc<dyn BlockDevice>) -> Export {
        Export {
            read_only: device.read_only(),
            device,
            description: String::new(),
            direct: None,
        }
    }

    /// Says that the device reads `file` from byte `base` on, unchanged (a raw image or
    /// a partition of one, not an overlay), so reads may be sent from the file directly.
    pub fn direct_file(mut self, file: Arc<FileDevice>, base: u64) -> Export {
        self.direct = Some((file, base));
        self
    }

    /// Makes the export read-only (or not: a read-only device stays read-only).
    pub fn read_only(mut self, read_only: bool) -> Export {
        self.read_only = read_only || self.device.read_only();
        self
    }

    /// Sets the description.
    pub fn description(mut self, text: impl Into<String>) -> Export {
        self.description = text.into();
        self
    }

    /// Transmission flags for this export.
    fn flags(&self, structured: bool) -> u16 {
        let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_CAN_MULTI_CONN;
        f |= FLAG_SEND_CACHE;
        if self.read_only {
            f |= FLAG_READ_ONLY;
        } else {
            f |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        }
        if structured {
            f |= FLAG_SEND_DF;
        }
        f
    }
}

/// Tunables of a [`Server`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Per-read timeout, and total time allowed, for the handshake.
    pub handshake_timeout: Duration,
    /// Timeout of every write to a client (one that stops reading is dropped).
    pub write_timeout: Duration,
    /// Most connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Log one line per connect, disconnect and error on stderr.
    pub verbose: bool,
    /// Prefix of log lines.
    pub log_prefix: String,
    /// TLS offered (or required) with `NBD_OPT_STARTTLS`; None: refused.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::ServerTls>,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            max_connections: 64,
            verbose: false,
            log_prefix: "vunbd".into(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

type Closer = Box<dyn Fn() + Send + Sync>;

/// An NBD server with a set of named exports. Share it as `Arc<Server>`.
pub struct Server {
    exports: Vec<(String, Export)>,
    options: ServerOptions,
    shutting_down: AtomicBool,
    next_id: AtomicU64,
    active: AtomicUsize,
    closers: Mutex<HashMap<u64, Closer>>,
    wakers: Mutex<Vec<Closer>>,
}

impl Server {
    /// A server with no exports yet.
    pub fn new(options: ServerOptions) -> Server {
        Server {
            exports: Vec::new(),
            options,
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            closers: Mutex::new(HashMap::new()),
            wakers: Mutex::new(Vec::new()),
        }
    }

    /// Adds an export; the first one added is also the default export (empty name).
    pub fn add_export(&mut self, name: &str, export: Export) -> Result<(), String> {
        if name.len() > MAX_STRING {
            return Err(format!("export name {name:?} is longer than 4096 bytes"));
        }
        if name.is_empty() {
            return Err("export names must not be empty (the first export is the default)".into());
        }
        if self.exports.iter().any(|(n, _)| n == name) {
            return Err(format!("two exports are named {name:?}"));
        }
        self.exports.push((name.to_string(), export));
        Ok(())
    }

    /// The exports, in the order added.
    pub fn exports(&self) -> &[(String, Export)] {
        &self.exports
    }

    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    fn find(&self, name: &str) -> Option<usize> {
        if name.is_empty() {
            return if self.exports.is_empty() {
                None
            } else {
                Some(0)
            };
        }
        self.exports.iter().position(|(n, _)| n == name)
    }

    fn log(&self, msg: std::fmt::Arguments<'_>) {
        if self.options.verbose {
            eprintln!("{}: {msg}", self.options.log_prefix);
        }
    }

    /// Flushes every export's device; returns the first error with its export's name.
    pub fn flush_all(&self) -> Result<(), (String, Errno)> {
        let mut first = None;
        for (name, e) in &self.exports {
            if let Err(err) = e.device.flush() {
                first.get_or_insert((name.clone(), err));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Stops accepting, and closes every connection (requests in progress finish, but
    /// their replies are not sent, so nothing unfinished is acknowledged). Call
    /// [`flush_all`](Self::flush_all) afterwards to make acknowledged writes durable.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for close in self
            .closers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            close();
        }
        for wake in self.wakers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            wake();
        }
    }

    /// True once [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Accepts connections on a Unix socket until [`shutdown`](Self::shutdown).
    pub fn serve_unix(self: &Arc<Self>, listener: UnixListener) -> io::Result<()> {
        if let Some(path) = listener.local_addr()?.as_pathname().map(PathBuf::from) {
            self.wakers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Box::new(move || drop(UnixStream::connect(&path))));
        }
        for conn in listener.incoming() {
            if self.is_shutting_down() {
                break;
            }
            match conn {
                Ok(s) => {
                    let id = self.next_id.fetch_add(1, Ordering::SeqCst);
                    let closer = s.try_clone().ok();
                    self.spawn(
                        s,
                        id,
                        format!("unix#{id}"),
                        closer.map(|c| -> Closer {
                            Box::new(move || drop(c.shutdown(std::net::Shutdown::Both)))
                        }),
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        Ok(())
    }

    /// Accepts connections on a TCP socket until [`shutdown`](Self::shutdown).
    pub fn serve_tcp(self: &Arc<Self>, listener: TcpListener) -> io::Result<()> {
        let addr = listener.local_addr()?;
        self.wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(move || {
                drop(TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
            }));
        for conn in listener.incoming() {
            if self.is_shutting_down() {
                break;
            }
            match conn {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let id = self.next_id.fetch_add(1, Ordering::SeqCst);
                    let peer = s
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_else(|_| format!("tcp#{id}"));
                    let closer = s.try_clone().ok();
                    self.spawn(
                        s,
                        id,
                        peer,
                        closer.map(|c| -> Closer {
                            Box::new(move || drop(c.shutdown(std::net::Shutdown::Both)))
                        }),
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        Ok(())
    }

    fn spawn<S: Transport + Send + 'static>(
        self: &Arc<Self>,
        stream: S,
        id: u64,
        peer: String,
        closer: Option<Closer>,
    ) {
        if self.active.load(Ordering::SeqCst) >= self.options.max_connections {
            self.log(format_args!(
                "client {peer} refused: {} connections already",
                self.options.max_connections
            ));
            return;
        }
        let _ = Transport::set_write_timeout(&stream, Some(self.options.write_timeout));
        self.active.fetch_add(1, Ordering::SeqCst);
        if let Some(c) = closer {
            self.closers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, c);
        }
        let server = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-{id}"))
            .spawn(move || {
                server.log(format_args!("client {peer} connected"));
                let result = server.handle(stream, &peer);
                match result {
                    Ok(()) => server.log(format_args!("client {peer} disconnected")),
                    Err(e) => server.log(format_args!(
                        "client {peer} disconnected: {}",
                        io_message(&e)
                    )),
                }
                server
                    .closers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                server.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.active.fetch_sub(1, Ordering::SeqCst);
            self.closers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
    }

    /// Serves one client over `stream` until it disconnects or breaks the protocol.
    /// `peer` names the client in log lines. Never panics on any input.
    pub fn handle<S: Transport>(&self, stream: S, peer: &str) -> io::Result<()> {
        let _ = stream.set_read_timeout(Some(self.options.handshake_timeout));
        let started = Instant::now();
        let mut conn = Conn {
            s: Buffered {
                r: io::BufReader::with_capacity(64 << 10, stream),
            },
            server: self,
            peer,
            structured: false,
            meta: None,
            no_zeroes: false,
            tls: false,
        };
        conn.greet()?;
        match conn.options(started)? {
            Next::Done => Ok(()),
            Next::Go(index) => conn.go(index),
            #[cfg(feature = "tls")]
            Next::StartTls(tls) => {
                let Conn { s, no_zeroes, .. } = conn;
                let early = s.r.buffer().to_vec();
                let deadline = started + self.options.handshake_timeout;
                let stream = tls.accept(s.r.into_inner(), &early, deadline)?;
                self.log(format_args!("client {peer}: TLS session started"));
                // What was negotiated in plaintext is forgotten (as nbdkit does).
                let mut conn = Conn {
                    s: Buffered {
                        r: io::BufReader::with_capacity(64 << 10, stream),
                    },
                    server: self,
                    peer,
                    structured: false,
                    meta: None,
                    no_zeroes,
                    tls: true,
                };
                match conn.options(started)? {
                    Next::Go(index) => conn.go(index),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// Where option haggling ended.
enum Next {
    /// Abort, or an unknown export with `NBD_OPT_EXPORT_NAME`: hang up.
    Done,
    /// Transmission of this export.
    Go(usize),
    /// STARTTLS acknowledged: the TLS handshake comes next.
    #[cfg(feature = "tls")]
    StartTls(crate::tls::ServerTls),
}

/// What a connection's workers need to serve READ and WRITE.
struct Worker<'a> {
    server: &'a Server,
    export: &'a (String, Export),
    peer: &'a str,
    structured: bool,
}

impl Worker<'_> {
    /// Serves jobs until the reader hangs up the queue.
    fn run(&self, pipe: &Pipe, rx: &Mutex<std::sync::mpsc::Receiver<Job>>) {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(job) = job else { return };
            let bytes = job.payload.len();
            if !pipe.broken.load(Ordering::Relaxed) {
                if let Err(e) = self.serve(pipe, &job, &mut buf) {
                    if !pipe.broken.swap(true, Ordering::Relaxed) {
                        self.server.log(format_args!(
                            "client {}: reply not sent: {}",
                            self.peer,
                            io_message(&e)
                        ));
                        // Wake the reader out of its read: the connection is over.
                        let out = pipe.out.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = rustix::net::shutdown(&out.0, rustix::net::Shutdown::Both);
                    }
                }
            }
            pipe.give_buf(job.payload);
            if buf.capacity() > 4 << 20 {
                buf = Vec::new();
            }
            pipe.done(bytes);
        }
    }

    fn serve(&self, pipe: &Pipe, job: &Job, buf: &mut Vec<u8>) -> io::Result<()> {
        let (name, export) = self.export;
        let req = &job.req;
        let dev = &export.device;
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let result = if req.kind == CMD_READ {
            if let Some((file, base)) = &export.direct {
                let mut out = pipe.out.lock().unwrap_or_else(|e| e.into_inner());
                return send_read_direct_to(
                    &mut *out,
                    self.structured,
                    req,
                    file,
                    base + req.offset,
                );
            }
            buf.resize(req.len as usize, 0);
            match dev.read_exact_at(buf, req.offset) {
                Ok(()) => {
                    let mut out = pipe.out.lock().unwrap_or_else(|e| e.into_inner());
                    return send_read_to(&mut *out, self.structured, req, buf);
                }
                Err(e) => Err(Failure::errno(e)),
            }
        } else {
            dev.write_all_at(&job.payload, req.offset)
                .and_then(|()| if fua { dev.flush() } else { Ok(()) })
                .map_err(Failure::errno)
        };
        let reply = match result {
            Ok(()) => simple_reply(0, req.cookie).to_vec(),
            Err(f) => {
                self.server.log(format_args!(
                    "client {} export {name:?}: {} at {} length {}: {}",
                    self.peer,
                    command_name(req.kind),
                    req.offset,
                    req.len,
                    f.1
                ));
                if self.structured {
                    error_chunk(req.cookie, f.0, &f.1)
                } else {
                    simple_reply(f.0, req.cookie).to_vec()
                }
            }
        };
        let mut out = pipe.out.lock().unwrap_or_else(|e| e.into_inner());
        out.write_all(&reply)
    }
}

/// An io::Error's message without Rust's "(os error N)" suffix.
pub fn io_message(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code).to_string(),
        None => e.to_string(),
    }
}

fn protocol_error(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

struct Conn<'a, S: Transport> {
    s: Buffered<S>,
    server: &'a Server,
    peer: &'a str,
    structured: bool,
    /// The export for which `base:allocation` was selected.
    meta: Option<usize>,
    no_zeroes: bool,
    /// The stream is a TLS session.
    tls: bool,
}

/// What an error reply says: an NBD error and a message for the human.
struct Failure(u32, String);

impl Failure {
    fn errno(e: Errno) -> Failure {
        Failure(errno_to_nbd(e), e.to_string())
    }
    fn inval(msg: impl Into<String>) -> Failure {
        Failure(NBD_EINVAL, msg.into())
    }
}

impl<S: Transport> Conn<'_, S> {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes)?;
        self.s.flush()
    }

    fn opt_reply(&mut self, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
        let bytes = option_reply(option, kind, data);
        self.send(&bytes)
    }

    fn opt_error(&mut self, option: u32, kind: u32, msg: &str) -> io::Result<()> {
        self.opt_reply(option, kind, truncate_utf8(msg, MAX_STRING).as_bytes())
    }

    /// Sends the server's greeting and reads the client's flags.
    fn greet(&mut self) -> io::Result<()> {
        let mut hello = Vec::with_capacity(18);
        hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        self.send(&hello)?;
        let cflags = read_u32(&mut self.s)?;
        if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(protocol_error("unknown client flags"));
        }
        self.no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;
        Ok(())
    }

    /// Enters transmission of export `index`.
    fn go(&mut self, index: usize) -> io::Result<()> {
        let _ = self.s.set_read_timeout(None);
        self.transmission(index)
    }

    /// True while TLS is required and not yet running.
    fn tls_required(&self) -> bool {
        #[cfg(feature = "tls")]
        if !self.tls {
            if let Some(t) = &self.server.options.tls {
                return t.mode() == crate::tls::TlsMode::Require;
            }
        }
        false
    }

    /// Answers `NBD_OPT_STARTTLS`; `Some` when the TLS handshake is to start.
    fn starttls(&mut self, data: &[u8]) -> io::Result<Option<Next>> {
        if self.tls {
            self.opt_error(OPT_STARTTLS, REP_ERR_INVALID, "TLS is already running")?;
            return Ok(None);
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = self.server.options.tls.clone() {
            if !data.is_empty() {
                self.opt_error(OPT_STARTTLS, REP_ERR_INVALID, "option takes no data")?;
                return Ok(None);
            }
            self.opt_reply(OPT_STARTTLS, REP_ACK, &[])?;
            return Ok(Some(Next::StartTls(tls)));
        }
        let _ = data;
        self.opt_error(OPT_STARTTLS, REP_ERR_POLICY, "TLS is not offered")?;
        Ok(None)
    }

    /// Option haggling, up to transmission, STARTTLS or the end.
    fn options(&mut self, started: Instant) -> io::Result<Next> {
        for _ in 0..MAX_OPTIONS {
            if started.elapsed() > self.server.options.handshake_timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake too slow",
                ));
            }
            if read_u64(&mut self.s)? != IHAVEOPT {
                return Err(protocol_error("bad option magic"));
            }
            let option = read_u32(&mut self.s)?;
            let len = read_u32(&mut self.s)?;
            if len > MAX_OPTION_LEN {
                if option == OPT_EXPORT_NAME {
                    return Err(protocol_error("export name too long"));
                }
                self.opt_error(option, REP_ERR_TOO_BIG, "option data over 64 KiB")?;
                if len > MAX_SKIPPABLE_OPTION {
                    return Err(protocol_error("option data too big"));
                }
                discard_bytes(&mut self.s, len.into())?;
                continue;
            }
            let mut data = vec![0u8; len as usize];
            self.s.read_exact(&mut data)?;
            if self.server.is_shutting_down() {
                self.opt_error(option, REP_ERR_SHUTDOWN, "server shutting down")?;
                return Ok(Next::Done);
            }
            if self.tls_required() && option != OPT_STARTTLS && option != OPT_ABORT {
                if option == OPT_EXPORT_NAME {
                    // It cannot be answered with an error.
                    self.server.log(format_args!(
                        "client {}: NBD_OPT_EXPORT_NAME without TLS, which is required",
                        self.peer
                    ));
                    return Ok(Next::Done);
                }
                self.opt_error(
                    option,
                    REP_ERR_TLS_REQD,
                    "TLS is required: send NBD_OPT_STARTTLS first",
                )?;
                continue;
            }
            match option {
                OPT_EXPORT_NAME => {
                    let name = std::str::from_utf8(&data).unwrap_or("\u{fffd}");
                    let Some(index) = self.server.find(name) else {
                        self.server.log(format_args!(
                            "client {} asked for unknown export {name:?}",
                            self.peer
                        ));
                        return Ok(Next::Done);
                    };
                    let export = &self.server.exports[index].1;
                    let mut reply = Vec::with_capacity(134);
                    reply.extend_from_slice(&export.device.size().to_be_bytes());
                    reply.extend_from_slice(&export.flags(self.structured).to_be_bytes());
                    if !self.no_zeroes {
                        reply.extend_from_slice(&[0u8; 124]);
                    }
                    self.send(&reply)?;
                    return Ok(Next::Go(index));
                }
                OPT_ABORT => {
                    let _ = self.opt_reply(option, REP_ACK, &[]);
                    return Ok(Next::Done);
                }
                OPT_LIST => {
                    if !data.is_empty() {
                        self.opt_error(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data")?;
                        continue;
                    }
                    for i in 0..self.server.exports.len() {
                        let (name, export) = &self.server.exports[i];
                        let mut d = Vec::new();
                        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                        d.extend_from_slice(name.as_bytes());
                        d.extend_from_slice(
                            truncate_utf8(&export.description, MAX_STRING).as_bytes(),
                        );
                        self.opt_reply(option, REP_SERVER, &d)?;
                    }
                    self.opt_reply(option, REP_ACK, &[])?;
                }
                OPT_INFO | OPT_GO => {
                    if let Some(index) = self.info_or_go(option, &data)? {
                        if option == OPT_GO {
                            return Ok(Next::Go(index));
                        }
                    }
                }
                OPT_STRUCTURED_REPLY => {
                    if !data.is_empty() {
                        self.opt_error(option, REP_ERR_INVALID, "option takes no data")?;
                    } else {
                        self.structured = true;
                        self.opt_reply(option, REP_ACK, &[])?;
                    }
                }
                OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                    self.meta_context(option, &data)?;
                }
                OPT_STARTTLS => {
                    if let Some(next) = self.starttls(&data)? {
                        return Ok(next);
                    }
                }
                _ => {
                    self.opt_error(option, REP_ERR_UNSUP, "unknown option")?;
                }
            }
        }
        Err(protocol_error("too many options"))
    }

    fn info_or_go(&mut self, option: u32, data: &[u8]) -> io::Result<Option<usize>> {
        let mut c = Cursor::new(data);
        let parsed = (|| {
            let name = c.string32()?;
            let n = c.u16()? as usize;
            if c.remaining() != 2 * n {
                return None;
            }
            let requests: Vec<u16> = (0..n).filter_map(|_| c.u16()).collect();
            Some((name, requests))
        })();
        let Some((name, requests)) = parsed else {
            self.opt_error(option, REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO")?;
            return Ok(None);
        };
        let Some(index) = self.server.find(name) else {
            let msg = format!("no export named {name:?}");
            self.server.log(format_args!("client {}: {msg}", self.peer));
            self.opt_error(option, REP_ERR_UNKNOWN, &msg)?;
            return Ok(None);
        };
        let (canonical, export) = &self.server.exports[index];
        let mut info = Vec::with_capacity(12);
        info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        info.extend_from_slice(&export.device.size().to_be_bytes());
        info.extend_from_slice(&export.flags(self.structured).to_be_bytes());
        let mut replies = vec![info];
        if requests.contains(&INFO_NAME) {
            let mut d = INFO_NAME.to_be_bytes().to_vec();
            d.extend_from_slice(canonical.as_bytes());
            replies.push(d);
        }
        if requests.contains(&INFO_DESCRIPTION) && !export.description.is_empty() {
            let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
            d.extend_from_slice(truncate_utf8(&export.description, MAX_STRING).as_bytes());
            replies.push(d);
        }
        let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        bs.extend_from_slice(&1u32.to_be_bytes());
        bs.extend_from_slice(&4096u32.to_be_bytes());
        bs.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
        replies.push(bs);
        for r in replies {
            self.opt_reply(option, REP_INFO, &r)?;
        }
        self.opt_reply(option, REP_ACK, &[])?;
        Ok(Some(index))
    }

    fn meta_context(&mut self, option: u32, data: &[u8]) -> io::Result<()> {
        if option == OPT_SET_META_CONTEXT {
            self.meta = None;
        }
        if !self.structured {
            return self.opt_error(
                option,
                REP_ERR_INVALID,
                "negotiate structured replies first",
            );
        }
        let mut c = Cursor::new(data);
        let Some(name) = c.string32() else {
            return self.opt_error(option, REP_ERR_INVALID, "malformed export name");
        };
        let Some(count) = c.u32() else {
            return self.opt_error(option, REP_ERR_INVALID, "missing query count");
        };
        if count > MAX_QUERIES {
            return self.opt_error(option, REP_ERR_TOO_BIG, "too many queries");
        }
        let mut queries = Vec::new();
        for _ in 0..count {
            match c.string32() {
                Some(q) => queries.push(q.to_string()),
                None => return self.opt_error(option, REP_ERR_INVALID, "malformed query"),
            }
        }
        if c.remaining() != 0 {
            return self.opt_error(option, REP_ERR_INVALID, "trailing data");
        }
        let Some(index) = self.server.find(name) else {
            return self.opt_error(
                option,
                REP_ERR_UNKNOWN,
                &format!("no export named {name:?}"),
            );
        };
        let matches = if option == OPT_LIST_META_CONTEXT {
            count == 0 || queries.iter().any(|q| q == "base:" || q == BASE_ALLOCATION)
        } else {
            queries.iter().any(|q| q == BASE_ALLOCATION)
        };
        if matches {
            let id: u32 = if option == OPT_SET_META_CONTEXT { 1 } else { 0 };
            let mut d = id.to_be_bytes().to_vec();
            d.extend_from_slice(BASE_ALLOCATION.as_bytes());
            self.opt_reply(option, REP_META_CONTEXT, &d)?;
            if option == OPT_SET_META_CONTEXT {
                self.meta = Some(index);
            }
        }
        self.opt_reply(option, REP_ACK, &[])
    }

    fn reply_ok(&mut self, cookie: u64) -> io::Result<()> {
        self.send(&simple_reply(0, cookie))
    }

    fn reply_failure(&mut self, req: &Request, f: Failure, export: &str) -> io::Result<()> {
        self.server.log(format_args!(
            "client {} export {export:?}: {} at {} length {}: {}",
            self.peer,
            command_name(req.kind),
            req.offset,
            req.len,
            f.1
        ));
        if self.structured {
            let chunk = error_chunk(req.cookie, f.0, &f.1);
            self.send(&chunk)
        } else {
            self.send(&simple_reply(f.0, req.cookie))
        }
    }

    fn transmission(&mut self, index: usize) -> io::Result<()> {
        let Some(fd) = self.s.clone_socket() else {
            return self.serve(index, None);
        };
        let pipe = Pipe {
            out: Mutex::new(SockOut(std::fs::File::from(fd))),
            inflight: Mutex::new((0, 0)),
            idle: std::sync::Condvar::new(),
            broken: AtomicBool::new(false),
            spare: Mutex::new(Vec::new()),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUED);
        let rx = Mutex::new(rx);
        let worker = Worker {
            server: self.server,
            export: &self.server.exports[index],
            peer: self.peer,
            structured: self.structured,
        };
        std::thread::scope(|scope| {
            for _ in 0..WORKERS {
                let (pipe, rx, worker) = (&pipe, &rx, &worker);
                scope.spawn(move || worker.run(pipe, rx));
            }
            let res = self.serve(index, Some((&pipe, tx)));
            pipe.wait_below(0);
            res
        })
    }

    /// The transmission phase: requests read here; READ and WRITE handed to the workers
    /// of `pipe` when there are some, everything else (and everything without workers)
    /// served here, once the workers are idle.
    fn serve(
        &mut self,
        index: usize,
        pipe: Option<(&Pipe, std::sync::mpsc::SyncSender<Job>)>,
    ) -> io::Result<()> {
        let server = self.server;
        let (name, export) = &server.exports[index];
        let size = export.device.size();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            if let Some((p, _)) = &pipe {
                if p.broken.load(Ordering::Relaxed) {
                    return Err(protocol_error("a reply could not be sent"));
                }
            }
            let mut header = [0u8; Request::SIZE];
            match self.s.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let Some(req) = Request::decode(&header) else {
                return Err(protocol_error("bad request magic"));
            };
            let end = req.offset.checked_add(req.len.into());
            let in_range = end.is_some_and(|e| e <= size);
            if req.kind == CMD_WRITE {
                if req.len > MAX_PAYLOAD {
                    // The payload cannot be skipped cheaply: answer, then hang up.
                    let f = Failure::inval("write longer than 32 MiB");
                    if let Some((p, _)) = &pipe {
                        p.wait_below(0);
                    }
                    let _ = self.reply_failure(&req, f, name);
                    return Err(protocol_error("write payload too big"));
                }
                if let Some((p, _)) = &pipe {
                    buf = p.take_buf();
                }
                buf.resize(req.len as usize, 0);
                self.s.read_exact(&mut buf)?;
            }
            if let Some((p, tx)) = &pipe {
                let ok_flags = req.flags & !CMD_FLAG_FUA == 0
                    || (req.kind == CMD_READ
                        && self.structured
                        && req.flags & !(CMD_FLAG_FUA | CMD_FLAG_DF) == 0);
                let ready = !server.is_shutting_down()
                    && ok_flags
                    && in_range
                    && req.len <= MAX_PAYLOAD
                    && (req.kind == CMD_READ || (req.kind == CMD_WRITE && !export.read_only));
                if ready {
                    let payload = if req.kind == CMD_WRITE {
                        std::mem::take(&mut buf)
                    } else {
                        Vec::new()
                    };
                    p.wait_below(MAX_INFLIGHT_BYTES.saturating_sub(payload.len()));
                    {
                        let mut n = p.inflight.lock().unwrap_or_else(|e| e.into_inner());
                        n.0 += 1;
                        n.1 += payload.len();
                    }
                    if tx.send(Job { req, payload }).is_err() {
                        return Err(protocol_error("the workers stopped"));
                    }
                    continue;
                }
                // Replies from here on are written by this thread: none may interleave.
                p.wait_below(0);
            }
            if server.is_shutting_down() {
                let f = Failure(NBD_ESHUTDOWN, "server shutting down".into());
                self.reply_failure(&req, f, name)?;
                continue;
            }
            let allowed = match req.kind {
                CMD_READ if self.structured => CMD_FLAG_FUA | CMD_FLAG_DF,
                CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
                _ => CMD_FLAG_FUA,
            };
            if req.flags & !allowed != 0 {
                self.reply_failure(&req, Failure::inval("unknown command flags"), name)?;
                continue;
            }
            let fua = req.flags & CMD_FLAG_FUA != 0;
            let dev = &export.device;
            let result: Result<(), Failure> = match req.kind {
                CMD_DISC => return Ok(()),
                CMD_READ => {
                    if req.len > MAX_PAYLOAD {
                        Err(Failure::inval("read longer than 32 MiB"))
                    } else if !in_range {
                        Err(Failure::inval("read past the end of the export"))
                    } else if let Some((file, base)) = &export.direct {
                        if self.s.socket_fd().is_some() {
                            self.send_read_direct(&req, file, base + req.offset)?;
                            continue;
                        }
                        buf.resize(req.len as usize, 0);
                        match dev.read_exact_at(&mut buf, req.offset) {
                            Ok(()) => {
                                self.send_read(&req, &buf)?;
                                continue;
                            }
                            Err(e) => Err(Failure::errno(e)),
                        }
                    } else {
                        buf.resize(req.len as usize, 0);
                        match dev.read_exact_at(&mut buf, req.offset) {
                            Ok(()) => {
                                self.send_read(&req, &buf)?;
                                continue;
                            }
                            Err(e) => Err(Failure::errno(e)),
                        }
                    }
                }
                CMD_WRITE => {
                    if export.read_only {
                        Err(Failure(NBD_EPERM, "export is read-only".into()))
                    } else if !in_range {
                        Err(Failure(
                            NBD_ENOSPC,
                            "write past the end of the export".into(),
                        ))
                    } else {
                        dev.write_all_at(&buf, req.offset)
                            .and_then(|()| if fua { dev.flush() } else { Ok(()) })
                            .map_err(Failure::errno)
                    }
                }
                CMD_FLUSH => dev.flush().map_err(Failure::errno),
                CMD_TRIM => {
                    if export.read_only {
                        Err(Failure(NBD_EPERM, "export is read-only".into()))
                    } else if !in_range {
                        Err(Failure::inval("trim past the end of the export"))
                    } else {
                        dev.discard(req.offset, req.len.into())
                            .and_then(|()| if fua { dev.flush() } else { Ok(()) })
                            .map_err(Failure::errno)
                    }
                }
                CMD_CACHE => {
                    if in_range {
                        dev.prefetch(req.offset, req.len.into());
                        Ok(())
                    } else {
                        Err(Failure::inval("cache past the end of the export"))
                    }
                }
                CMD_WRITE_ZEROES => {
                    if export.read_only {
                        Err(Failure(NBD_EPERM, "export is read-only".into()))
                    } else if !in_range {
                        Err(Failure(
                            NBD_ENOSPC,
                            "zeroing past the end of the export".into(),
                        ))
                    } else {
                        let can_punch = req.flags & CMD_FLAG_NO_HOLE == 0 && dev.discard_zeroes();
                        if req.flags & CMD_FLAG_FAST_ZERO != 0 && !can_punch {
                            Err(Failure(NBD_ENOTSUP, "zeroing would not be fast".into()))
                        } else {
                            let r = if can_punch {
                                dev.discard(req.offset, req.len.into())
                            } else {
                                write_zeros(dev.as_ref(), req.offset, req.len.into())
                            };
                            r.and_then(|()| if fua { dev.flush() } else { Ok(()) })
                                .map_err(Failure::errno)
                        }
                    }
                }
                CMD_BLOCK_STATUS => {
                    if !self.structured || self.meta != Some(index) {
                        Err(Failure::inval("no metadata context was selected"))
                    } else if req.len == 0 || !in_range {
                        Err(Failure::inval("block status outside the export"))
                    } else {
                        let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
                            1
                        } else {
                            MAX_EXTENTS
                        };
                        match export.device.extents(req.offset, req.len.into(), max) {
                            Ok(extents) => {
                                self.send_block_status(&req, &extents, max)?;
                                continue;
                            }
                            Err(e) => Err(Failure::errno(e)),
                        }
                    }
                }
                _ => Err(Failure::inval("unknown command")),
            };
            match result {
                Ok(()) => self.reply_ok(req.cookie)?,
                Err(f) => self.reply_failure(&req, f, name)?,
            }
            if buf.capacity() > 4 << 20 {
                buf = Vec::new();
            }
        }
    }

    fn send_read(&mut self, req: &Request, data: &[u8]) -> io::Result<()> {
        send_read_to(&mut self.s, self.structured, req, data)
    }

    fn send_read_direct(&mut self, req: &Request, file: &FileDevice, at: u64) -> io::Result<()> {
        send_read_direct_to(&mut self.s, self.structured, req, file, at)
    }

    /// Sends the device's extents as one `base:allocation` chunk: extents that read as
    /// zeros are `NBD_STATE_HOLE | NBD_STATE_ZERO`, the others 0 (data).
    fn send_block_status(
        &mut self,
        req: &Request,
        extents: &[vudev::Extent],
        max: usize,
    ) -> io::Result<()> {
        let mut payload = Vec::with_capacity(4 + 8 * extents.len().min(max));
        payload.extend_from_slice(&1u32.to_be_bytes());
        let limit = u64::from(req.len);
        let mut covered = 0u64;
        for e in extents.iter().take(max) {
            if e.len == 0 || covered >= limit {
                continue;
            }
            let len = e.len.min(limit - covered);
            payload.extend_from_slice(&(len as u32).to_be_bytes());
            let flags = if e.zero { STATE_HOLE | STATE_ZERO } else { 0 };
            payload.extend_from_slice(&flags.to_be_bytes());
            covered += len;
        }
        if covered == 0 {
            payload.extend_from_slice(&req.len.to_be_bytes());
            payload.extend_from_slice(&0u32.to_be_bytes());
        }
        let mut v = chunk_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            req.cookie,
            payload.len() as u32,
        )
        .to_vec();
        v.extend_from_slice(&payload);
        self.send(&v)
    }
}

fn send_read_to<W: Transport>(
    w: &mut W,
    structured: bool,
    req: &Request,
    data: &[u8],
) -> io::Result<()> {
    if !structured {
        let h = simple_reply(0, req.cookie);
        return write_parts(w, &mut [io::IoSlice::new(&h), io::IoSlice::new(data)]);
    }
    if data.is_empty() {
        let h = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.cookie, 0);
        w.write_all(&h)?;
        return w.flush();
    }
    if data.iter().all(|&b| b == 0) {
        let mut v = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_HOLE, req.cookie, 12).to_vec();
        v.extend_from_slice(&req.offset.to_be_bytes());
        v.extend_from_slice(&req.len.to_be_bytes());
        w.write_all(&v)?;
        return w.flush();
    }
    let mut h = chunk_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        req.cookie,
        8 + data.len() as u32,
    )
    .to_vec();
    h.extend_from_slice(&req.offset.to_be_bytes());
    write_parts(w, &mut [io::IoSlice::new(&h), io::IoSlice::new(data)])
}

/// A read reply whose data goes from `file` at `at` to the socket with `sendfile`:
/// the header first, then the bytes without a copy through the server. The file
/// ending early (truncated under us) breaks the connection: the reply cannot be
/// taken back once its header is out.
fn send_read_direct_to<W: Transport>(
    w: &mut W,
    structured: bool,
    req: &Request,
    file: &FileDevice,
    at: u64,
) -> io::Result<()> {
    let len = req.len as usize;
    if structured && len == 0 {
        let h = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.cookie, 0);
        w.write_all(&h)?;
        return w.flush();
    }
    if structured {
        let mut h = chunk_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            req.cookie,
            8 + req.len,
        )
        .to_vec();
        h.extend_from_slice(&req.offset.to_be_bytes());
        w.write_all(&h)?;
    } else {
        w.write_all(&simple_reply(0, req.cookie))?;
    }
    let Some(sock) = w.socket_fd() else {
        return Err(protocol_error("no socket to send from"));
    };
    let mut offset = at;
    let mut left = len;
    while left > 0 {
        match rustix::fs::sendfile(sock, file.file(), Some(&mut offset), left) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => left -= n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes `len` zero bytes at `offset` in 1 MiB pieces.
fn write_zeros(dev: &dyn BlockDevice, mut offset: u64, mut len: u64) -> vudev::Result<()> {
    let zeros = vec![0u8; (1 << 20).min(len as usize)];
    while len > 0 {
        let n = len.min(zeros.len() as u64) as usize;
        dev.write_all_at(&zeros[..n], offset)?;
        offset += n as u64;
        len -= n as u64;
    }
    Ok(())
}

fn command_name(kind: u16) -> &'static str {
    match kind {
        CMD_READ => "READ",
        CMD_WRITE => "WRITE",
        CMD_DISC => "DISC",
        CMD_FLUSH => "FLUSH",
        CMD_TRIM => "TRIM",
        CMD_CACHE => "CACHE",
        CMD_WRITE_ZEROES => "WRITE_ZEROES",
        CMD_BLOCK_STATUS => "BLOCK_STATUS",
        _ => "unknown command",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vudev::Ramdisk;

    /// Client bytes in, server bytes counted: the fuzz target's transport.
    struct Duplex<'a> {
        input: &'a [u8],
        output: Vec<u8>,
    }

    impl Read for Duplex<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Transport for Duplex<'_> {}

    fn server() -> (Server, Arc<Ramdisk>) {
        let disk = Arc::new(Ramdisk::new(1 << 20).unwrap());
        let mut s = Server::new(ServerOptions::default());
        s.add_export("disk", Export::new(disk.clone())).unwrap();
        (s, disk)
    }

    fn go_prefix(structured: bool) -> Vec<u8> {
        let mut v = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .to_be_bytes()
            .to_vec();
        if structured {
            v.extend_from_slice(&option_request(OPT_STRUCTURED_REPLY, &[]));
            let mut d = 4u32.to_be_bytes().to_vec();
            d.extend_from_slice(b"disk");
            d.extend_from_slice(&1u32.to_be_bytes());
            d.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
            d.extend_from_slice(BASE_ALLOCATION.as_bytes());
            v.extend_from_slice(&option_request(OPT_SET_META_CONTEXT, &d));
        }
        v.extend_from_slice(&option_request(OPT_GO, &[0, 0, 0, 0, 0, 0]));
        v
    }

    #[test]
    fn a_scripted_session_writes_reads_and_ends_at_eof() {
        let (s, disk) = server();
        let mut input = go_prefix(false);
        let w = Request {
            flags: CMD_FLAG_FUA,
            kind: CMD_WRITE,
            cookie: 1,
            offset: 100,
            len: 3,
        };
        input.extend_from_slice(&w.encode());
        input.extend_from_slice(b"abc");
        let r = Request {
            kind: CMD_READ,
            cookie: 2,
            flags: 0,
            ..w
        };
        input.extend_from_slice(&r.encode());
        let mut d = Duplex {
            input: &input,
            output: Vec::new(),
        };
        s.handle(&mut d, "test").unwrap();
        let mut b = [0u8; 3];
        disk.read_exact_at(&mut b, 100).unwrap();
        assert_eq!(&b, b"abc");
        // The output ends with the write's ack, then the read's reply and its data.
        let out = &d.output;
        assert_eq!(&out[out.len() - 3..], b"abc");
        assert_eq!(&out[out.len() - 19..out.len() - 3], &simple_reply(0, 2));
        assert_eq!(&out[out.len() - 35..out.len() - 19], &simple_reply(0, 1));
    }

    #[test]
    fn pseudo_random_streams_never_panic() {
        let (s, _) = server();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..400 {
            let mut input = if round % 4 == 0 {
                Vec::new()
            } else {
                go_prefix(round % 2 == 0)
            };
            let n = (next() % 300) as usize;
            for _ in 0..n {
                // Mostly plausible requests with random fields, sometimes raw noise.
                if next() % 3 == 0 {
                    input.extend_from_slice(&next().to_be_bytes());
                } else {
                    let req = Request {
                        flags: (next() % 64) as u16,
                        kind: (next() % 10) as u16,
                        cookie: next(),
                        offset: next() % (2 << 20),
                        len: (next() % (1 << 16)) as u32,
                    };
                    input.extend_from_slice(&req.encode());
                }
            }
            let mut d = Duplex {
                input: &input,
                output: Vec::new(),
            };
            let _ = s.handle(&mut d, "noise");
        }
    }
}
