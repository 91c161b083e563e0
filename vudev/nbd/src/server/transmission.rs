//! The transmission phase: requests read in order, READ and WRITE handed to the
//! workers, everything else (FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS, DISC)
//! served by the reader once the workers are idle; and the replies.

use super::batch::ReplyBatch;
use super::connection::Conn;
use super::protocol_error;
use super::transport::{write_parts, SockOut, Transport};
use super::workers::{Job, Pipe, Worker, MAX_INFLIGHT_BYTES, QUEUED, WORKERS};
use super::Export;
use crate::proto::*;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use vudev::{BlockDevice, Errno, FileDevice};

/// Most extents in one block status reply.
const MAX_EXTENTS: usize = 1 << 16;

/// What the reader does after serving a request.
enum Step {
    /// Read the next request.
    Next,
    /// `NBD_CMD_DISC`: the client is done.
    HangUp,
}

/// What an error reply says: an NBD error and a message for the human.
pub(super) struct Failure(pub(super) u32, pub(super) String);

impl Failure {
    pub(super) fn errno(e: Errno) -> Failure {
        Failure(errno_to_nbd(e), e.to_string())
    }
    fn inval(msg: impl Into<String>) -> Failure {
        Failure(NBD_EINVAL, msg.into())
    }
}

impl<S: Transport> Conn<'_, S> {
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

    pub(super) fn transmission(&mut self, index: usize) -> io::Result<()> {
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
        let size = self.server.exports[index].1.device.size();
        let mut buf: Vec<u8> = Vec::new();
        let mut batch = ReplyBatch::default();
        loop {
            if let Some((p, _)) = &pipe {
                if p.broken.load(Ordering::Relaxed) {
                    return Err(protocol_error("a reply could not be sent"));
                }
            }
            let Some(req) = self.read_request()? else {
                if let Some((p, _)) = &pipe {
                    batch.send(&p.out)?;
                }
                return Ok(());
            };
            let end = req.offset.checked_add(req.len.into());
            let in_range = end.is_some_and(|e| e <= size);
            if let Some((p, _)) = &pipe {
                if self.batched(index, &req, in_range, &mut batch) {
                    if batch.is_full() || !self.next_request_is_here() {
                        batch.send(&p.out)?;
                    }
                    continue;
                }
                batch.send(&p.out)?;
            }
            if req.kind == CMD_WRITE {
                self.read_payload(index, &req, pipe.as_ref().map(|(p, _)| *p), &mut buf)?;
            }
            let mut inline = pipe.is_none();
            if let Some((p, tx)) = &pipe {
                // A request that arrives alone (nothing running, nothing more read ahead: a
                // client waiting for each reply) is served here; a hand-over to a worker
                // would only add a thread switch to its wait.
                inline = p.is_idle() && self.s.r.buffer().is_empty();
                if !inline && self.hand_over(index, p, tx, req, in_range, &mut buf)? {
                    continue;
                }
                // Replies from here on are written by this thread: none may interleave.
                p.wait_below(0);
            }
            let step = self.execute(index, req, in_range, &mut buf)?;
            if let (Some((p, _)), true) = (&pipe, inline) {
                p.give_buf(std::mem::take(&mut buf));
            }
            if let Step::HangUp = step {
                return Ok(());
            }
        }
    }

    /// Serves a plain, valid small READ into `batch` when its data is in the page cache
    /// of the export's file (see [`ReplyBatch`]); false for anything else.
    fn batched(&self, index: usize, req: &Request, in_range: bool, batch: &mut ReplyBatch) -> bool {
        let export = &self.server.exports[index].1;
        let plain = req.flags & !CMD_FLAG_FUA == 0
            || (self.structured && req.flags & !(CMD_FLAG_FUA | CMD_FLAG_DF) == 0);
        let Some((file, base)) = export.direct.as_ref() else {
            return false;
        };
        req.kind == CMD_READ
            && plain
            && in_range
            && !sends_from_file(req)
            && !self.server.is_shutting_down()
            && batch.add_cached_read(self.structured, req, file, base + req.offset)
    }

    /// Whether a whole request header has arrived already (reading it will not wait).
    fn next_request_is_here(&self) -> bool {
        self.s.r.buffer().len() >= Request::SIZE
    }

    /// The next request header; None at the end of the stream.
    fn read_request(&mut self) -> io::Result<Option<Request>> {
        let mut header = [0u8; Request::SIZE];
        match self.s.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        match Request::decode(&header) {
            Some(req) => Ok(Some(req)),
            None => Err(protocol_error("bad request magic")),
        }
    }

    /// Reads a WRITE's payload into `buf` (a reused buffer of `pipe` when there is one).
    /// One over 32 MiB is answered with `EINVAL` and ends the connection: it cannot be
    /// skipped cheaply.
    fn read_payload(
        &mut self,
        index: usize,
        req: &Request,
        pipe: Option<&Pipe>,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        if req.len > MAX_PAYLOAD {
            let f = Failure::inval("write longer than 32 MiB");
            if let Some(p) = pipe {
                p.wait_below(0);
            }
            let _ = self.reply_failure(req, f, &self.server.exports[index].0);
            return Err(protocol_error("write payload too big"));
        }
        if let Some(p) = pipe {
            *buf = p.take_buf();
        }
        buf.resize(req.len as usize, 0);
        self.s.read_exact(buf)
    }

    /// Queues a plain, valid READ or WRITE for the workers; false for anything else
    /// (served by [`execute`](Self::execute)). Waits while too much write payload is in
    /// flight.
    fn hand_over(
        &self,
        index: usize,
        p: &Pipe,
        tx: &std::sync::mpsc::SyncSender<Job>,
        req: Request,
        in_range: bool,
        buf: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let export = &self.server.exports[index].1;
        let ok_flags = req.flags & !CMD_FLAG_FUA == 0
            || (req.kind == CMD_READ
                && self.structured
                && req.flags & !(CMD_FLAG_FUA | CMD_FLAG_DF) == 0);
        let ready = !self.server.is_shutting_down()
            && ok_flags
            && in_range
            && req.len <= MAX_PAYLOAD
            && (req.kind == CMD_READ || (req.kind == CMD_WRITE && !export.read_only));
        if !ready {
            return Ok(false);
        }
        let payload = if req.kind == CMD_WRITE {
            std::mem::take(buf)
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
        Ok(true)
    }

    /// Serves one request on this thread and replies to it (`buf` holds a WRITE's
    /// payload, and is reused for read data).
    fn execute(
        &mut self,
        index: usize,
        req: Request,
        in_range: bool,
        buf: &mut Vec<u8>,
    ) -> io::Result<Step> {
        let server = self.server;
        let (name, export) = &server.exports[index];
        if let Some(f) = self.refusal(&req) {
            self.reply_failure(&req, f, name)?;
            return Ok(Step::Next);
        }
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let served = match req.kind {
            CMD_DISC => return Ok(Step::HangUp),
            CMD_READ => self.serve_read(export, &req, in_range, buf)?,
            CMD_WRITE => Served::Answer(write_payload(export, &req, in_range, fua, buf)),
            CMD_FLUSH => Served::Answer(export.device.flush().map_err(Failure::errno)),
            CMD_TRIM => Served::Answer(trim(export, &req, in_range, fua)),
            CMD_CACHE => Served::Answer(cache(export, &req, in_range)),
            CMD_WRITE_ZEROES => Served::Answer(write_zeroes(export, &req, in_range, fua)),
            CMD_BLOCK_STATUS => self.serve_block_status(index, &req, in_range)?,
            _ => Served::Answer(Err(Failure::inval("unknown command"))),
        };
        let Served::Answer(result) = served else {
            return Ok(Step::Next);
        };
        match result {
            Ok(()) => self.reply_ok(req.cookie)?,
            Err(f) => self.reply_failure(&req, f, name)?,
        }
        if buf.capacity() > 4 << 20 {
            *buf = Vec::new();
        }
        Ok(Step::Next)
    }

    /// Why `req` is refused before it is looked at, if it is: the server shutting down, or
    /// flags its command does not take (here).
    fn refusal(&self, req: &Request) -> Option<Failure> {
        if self.server.is_shutting_down() {
            return Some(Failure(NBD_ESHUTDOWN, "server shutting down".into()));
        }
        let allowed = match req.kind {
            CMD_READ if self.structured => CMD_FLAG_FUA | CMD_FLAG_DF,
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            _ => CMD_FLAG_FUA,
        };
        (req.flags & !allowed != 0).then(|| Failure::inval("unknown command flags"))
    }

    /// READ: the data sent from the raw file with `sendfile` when the export has one and
    /// the stream is a plain socket, else read into `buf` and sent from there.
    fn serve_read(
        &mut self,
        export: &Export,
        req: &Request,
        in_range: bool,
        buf: &mut Vec<u8>,
    ) -> io::Result<Served> {
        if req.len > MAX_PAYLOAD {
            return Ok(Served::Answer(Err(Failure::inval(
                "read longer than 32 MiB",
            ))));
        }
        if !in_range {
            return Ok(Served::Answer(Err(Failure::inval(
                "read past the end of the export",
            ))));
        }
        if let Some((file, base)) = export.direct.as_ref().filter(|_| sends_from_file(req)) {
            if self.s.socket_fd().is_some() {
                self.send_read_direct(req, file, base + req.offset)?;
                return Ok(Served::Replied);
            }
        }
        buf.resize(req.len as usize, 0);
        match export.device.read_exact_at(buf, req.offset) {
            Ok(()) => {
                self.send_read(req, buf)?;
                Ok(Served::Replied)
            }
            Err(e) => Ok(Served::Answer(Err(Failure::errno(e)))),
        }
    }

    /// BLOCK_STATUS of export `index` (only with `base:allocation` selected for it): at
    /// most one extent with `NBD_CMD_FLAG_REQ_ONE`.
    fn serve_block_status(
        &mut self,
        index: usize,
        req: &Request,
        in_range: bool,
    ) -> io::Result<Served> {
        if !self.structured || self.meta != Some(index) {
            return Ok(Served::Answer(Err(Failure::inval(
                "no metadata context was selected",
            ))));
        }
        if req.len == 0 || !in_range {
            return Ok(Served::Answer(Err(Failure::inval(
                "block status outside the export",
            ))));
        }
        let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
            1
        } else {
            MAX_EXTENTS
        };
        let export = &self.server.exports[index].1;
        match export.device.extents(req.offset, req.len.into(), max) {
            Ok(extents) => {
                self.send_block_status(req, &extents, max)?;
                Ok(Served::Replied)
            }
            Err(e) => Ok(Served::Answer(Err(Failure::errno(e)))),
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

pub(super) fn send_read_to<W: Transport>(
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
pub(super) fn send_read_direct_to<W: Transport>(
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

/// Read replies of at least this many bytes go from the image file to the socket with
/// `sendfile`; smaller ones are read into a buffer and sent with their header in one write,
/// so a 4 KiB reply is one TCP segment, not a header segment and a data segment (the socket
/// has TCP_NODELAY).
const SENDFILE_MIN: u32 = 64 << 10;

/// Whether a READ's reply is sent from the image file directly (see [`SENDFILE_MIN`]).
pub(super) fn sends_from_file(req: &Request) -> bool {
    req.len >= SENDFILE_MIN
}

/// How [`execute`](Conn::execute) ends a command: replied to already (read data, block
/// status), or to be answered with a plain reply (or an error).
enum Served {
    Replied,
    Answer(Result<(), Failure>),
}

/// `r`, then a flush when the request asked for FUA.
fn flushed_if(dev: &dyn BlockDevice, fua: bool, r: vudev::Result<()>) -> Result<(), Failure> {
    r.and_then(|()| if fua { dev.flush() } else { Ok(()) })
        .map_err(Failure::errno)
}

/// WRITE served here (the workers serve the plain ones): `data` at the request's offset.
fn write_payload(
    export: &Export,
    req: &Request,
    in_range: bool,
    fua: bool,
    data: &[u8],
) -> Result<(), Failure> {
    if export.read_only {
        return Err(Failure(NBD_EPERM, "export is read-only".into()));
    }
    if !in_range {
        return Err(Failure(
            NBD_ENOSPC,
            "write past the end of the export".into(),
        ));
    }
    let dev = export.device.as_ref();
    flushed_if(dev, fua, dev.write_all_at(data, req.offset))
}

/// TRIM: the range discarded.
fn trim(export: &Export, req: &Request, in_range: bool, fua: bool) -> Result<(), Failure> {
    if export.read_only {
        return Err(Failure(NBD_EPERM, "export is read-only".into()));
    }
    if !in_range {
        return Err(Failure::inval("trim past the end of the export"));
    }
    let dev = export.device.as_ref();
    flushed_if(dev, fua, dev.discard(req.offset, req.len.into()))
}

/// CACHE: the range prefetched.
fn cache(export: &Export, req: &Request, in_range: bool) -> Result<(), Failure> {
    if !in_range {
        return Err(Failure::inval("cache past the end of the export"));
    }
    export.device.prefetch(req.offset, req.len.into());
    Ok(())
}

/// WRITE_ZEROES: punched when the device's discard zeroes and holes are allowed, else
/// zeros written; refused with `NBD_CMD_FLAG_FAST_ZERO` when it cannot punch.
fn write_zeroes(export: &Export, req: &Request, in_range: bool, fua: bool) -> Result<(), Failure> {
    if export.read_only {
        return Err(Failure(NBD_EPERM, "export is read-only".into()));
    }
    if !in_range {
        return Err(Failure(
            NBD_ENOSPC,
            "zeroing past the end of the export".into(),
        ));
    }
    let dev = export.device.as_ref();
    let can_punch = req.flags & CMD_FLAG_NO_HOLE == 0 && dev.discard_zeroes();
    if req.flags & CMD_FLAG_FAST_ZERO != 0 && !can_punch {
        return Err(Failure(NBD_ENOTSUP, "zeroing would not be fast".into()));
    }
    let r = if can_punch {
        dev.discard(req.offset, req.len.into())
    } else {
        write_zeros(dev, req.offset, req.len.into())
    };
    flushed_if(dev, fua, r)
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

/// The spec's name of a command, for log lines.
pub(super) fn command_name(kind: u16) -> &'static str {
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
