//! One client connection from greeting to hang-up: the handshake, possibly a TLS
//! session started within it, then transmission.

use super::negotiation::Next;
use super::transport::{Buffered, Transport};
use super::Server;
use crate::proto::*;
use std::io::{self, Write};
use std::time::Instant;

impl Server {
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

/// A connection's state through the handshake and transmission.
pub(super) struct Conn<'a, S: Transport> {
    pub(super) s: Buffered<S>,
    pub(super) server: &'a Server,
    pub(super) peer: &'a str,
    pub(super) structured: bool,
    /// The export for which `base:allocation` was selected.
    pub(super) meta: Option<usize>,
    pub(super) no_zeroes: bool,
    /// The stream is a TLS session.
    pub(super) tls: bool,
}

impl<S: Transport> Conn<'_, S> {
    /// Writes `bytes` and flushes.
    pub(super) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes)?;
        self.s.flush()
    }

    pub(super) fn opt_reply(&mut self, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
        let bytes = option_reply(option, kind, data);
        self.send(&bytes)
    }

    pub(super) fn opt_error(&mut self, option: u32, kind: u32, msg: &str) -> io::Result<()> {
        self.opt_reply(option, kind, truncate_utf8(msg, MAX_STRING).as_bytes())
    }

    /// Enters transmission of export `index`.
    pub(super) fn go(&mut self, index: usize) -> io::Result<()> {
        let _ = self.s.set_read_timeout(None);
        self.transmission(index)
    }
}
