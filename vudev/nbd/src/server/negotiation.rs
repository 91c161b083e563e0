//! The fixed newstyle handshake: the greeting, then option haggling (`EXPORT_NAME`,
//! `ABORT`, `LIST`, `INFO`, `GO`, `STRUCTURED_REPLY`, `LIST_META_CONTEXT`,
//! `SET_META_CONTEXT`, `STARTTLS`) up to transmission, TLS or the end.

use super::connection::Conn;
use super::protocol_error;
use super::transport::Transport;
use crate::proto::*;
use std::io::{self, Read};
use std::time::Instant;

/// Most options one handshake may send before the server gives up on the client.
const MAX_OPTIONS: usize = 1024;
/// Most queries in one `NBD_OPT_*_META_CONTEXT`.
const MAX_QUERIES: u32 = 64;
/// An oversized option of at most this many bytes is skipped; a bigger one ends the session.
const MAX_SKIPPABLE_OPTION: u32 = 1 << 20;

/// Where option haggling ended.
pub(super) enum Next {
    /// Abort, or an unknown export with `NBD_OPT_EXPORT_NAME`: hang up.
    Done,
    /// Transmission of this export.
    Go(usize),
    /// STARTTLS acknowledged: the TLS handshake comes next.
    #[cfg(feature = "tls")]
    StartTls(crate::tls::ServerTls),
}

impl<S: Transport> Conn<'_, S> {
    /// Sends the server's greeting and reads the client's flags.
    pub(super) fn greet(&mut self) -> io::Result<()> {
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
    pub(super) fn options(&mut self, started: Instant) -> io::Result<Next> {
        for _ in 0..MAX_OPTIONS {
            if started.elapsed() > self.server.options.handshake_timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake too slow",
                ));
            }
            let Some((option, data)) = self.read_option()? else {
                continue;
            };
            if let Some(next) = self.answer_option(option, &data)? {
                return Ok(next);
            }
        }
        Err(protocol_error("too many options"))
    }

    /// The next option and its data; None for one whose data is over 64 KiB, refused
    /// with `NBD_REP_ERR_TOO_BIG` and skipped (an export name that long, or data over
    /// 1 MiB, ends the session).
    fn read_option(&mut self) -> io::Result<Option<(u32, Vec<u8>)>> {
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
            return Ok(None);
        }
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data)?;
        Ok(Some((option, data)))
    }

    /// Answers one option; `Some` when haggling ends with it.
    fn answer_option(&mut self, option: u32, data: &[u8]) -> io::Result<Option<Next>> {
        if self.server.is_shutting_down() {
            self.opt_error(option, REP_ERR_SHUTDOWN, "server shutting down")?;
            return Ok(Some(Next::Done));
        }
        if self.tls_required() && option != OPT_STARTTLS && option != OPT_ABORT {
            return self.refuse_without_tls(option);
        }
        match option {
            OPT_EXPORT_NAME => return self.export_name(data).map(Some),
            OPT_ABORT => {
                let _ = self.opt_reply(option, REP_ACK, &[]);
                return Ok(Some(Next::Done));
            }
            OPT_LIST => self.list(data)?,
            OPT_INFO | OPT_GO => {
                if let Some(index) = self.info_or_go(option, data)? {
                    if option == OPT_GO {
                        return Ok(Some(Next::Go(index)));
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
                self.meta_context(option, data)?;
            }
            OPT_STARTTLS => return self.starttls(data),
            _ => {
                self.opt_error(option, REP_ERR_UNSUP, "unknown option")?;
            }
        }
        Ok(None)
    }

    /// Refuses an option sent before the TLS that is required: with
    /// `NBD_REP_ERR_TLS_REQD`, or for `NBD_OPT_EXPORT_NAME` (which cannot be answered with
    /// an error) by hanging up.
    fn refuse_without_tls(&mut self, option: u32) -> io::Result<Option<Next>> {
        if option == OPT_EXPORT_NAME {
            // It cannot be answered with an error.
            self.server.log(format_args!(
                "client {}: NBD_OPT_EXPORT_NAME without TLS, which is required",
                self.peer
            ));
            return Ok(Some(Next::Done));
        }
        self.opt_error(
            option,
            REP_ERR_TLS_REQD,
            "TLS is required: send NBD_OPT_STARTTLS first",
        )?;
        Ok(None)
    }

    /// Answers `NBD_OPT_EXPORT_NAME`: the export's size and flags, then transmission; an
    /// unknown name ends the session (it cannot be answered with an error).
    fn export_name(&mut self, data: &[u8]) -> io::Result<Next> {
        let name = std::str::from_utf8(data).unwrap_or("\u{fffd}");
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
        Ok(Next::Go(index))
    }

    /// Answers `NBD_OPT_LIST`: one `NBD_REP_SERVER` per export, name and description.
    fn list(&mut self, data: &[u8]) -> io::Result<()> {
        if !data.is_empty() {
            return self.opt_error(OPT_LIST, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
        }
        for i in 0..self.server.exports.len() {
            let (name, export) = &self.server.exports[i];
            let mut d = Vec::new();
            d.extend_from_slice(&(name.len() as u32).to_be_bytes());
            d.extend_from_slice(name.as_bytes());
            d.extend_from_slice(truncate_utf8(&export.description, MAX_STRING).as_bytes());
            self.opt_reply(OPT_LIST, REP_SERVER, &d)?;
        }
        self.opt_reply(OPT_LIST, REP_ACK, &[])
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
}
