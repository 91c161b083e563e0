//! The server engine: named exports, a thread per connection, fixed newstyle handshake and
//! the transmission phase.
//!
//! [`Server::handle`] speaks the whole protocol over any [`Transport`] (a socket, or an
//! in-memory pipe for the fuzzer); [`Server::serve_unix`] and [`Server::serve_tcp`] accept
//! connections and run one handler thread each. Requests of one connection are served in
//! order; all connections of an export share one device, so a FLUSH on any of them makes
//! the writes of all of them durable (hence `NBD_FLAG_CAN_MULTI_CONN`).
//!
//! By concept: `exports` (the export table), `listen` (accepting, the connection
//! limit, shutdown), `connection` (one client from greeting to hang-up),
//! `negotiation` (the handshake and its options), `transmission` (requests and
//! replies), `batch` (pipelined small reads from the page cache, replies sent
//! together), `workers` (READ and WRITE served concurrently), `transport` (the
//! streams).

mod batch;
mod connection;
mod exports;
mod listen;
mod negotiation;
#[cfg(test)]
mod tests;
mod transmission;
mod transport;
mod workers;

pub use exports::Export;
pub use transport::Transport;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Mutex;
use std::time::Duration;
use vudev::Errno;

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

    /// Writes a log line when verbose.
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
}

/// An io::Error's message without Rust's "(os error N)" suffix.
pub fn io_message(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code).to_string(),
        None => e.to_string(),
    }
}

/// An error for a peer that broke the protocol (the connection ends with it).
fn protocol_error(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}
