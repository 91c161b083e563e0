//! The reply workers of a connection: READ and WRITE requests handed over by the
//! reader and served concurrently, their replies written under one lock.

use super::transmission::{
    command_name, send_read_direct_to, send_read_to, sends_from_file, Failure,
};
use super::transport::SockOut;
use super::{io_message, Export, Server};
use crate::proto::*;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Workers per connection: requests of one connection (READ, WRITE) served concurrently.
pub(super) const WORKERS: usize = 4;
/// Requests queued for the workers of one connection.
pub(super) const QUEUED: usize = 16;
/// Most payload bytes of one connection's queued and running writes.
pub(super) const MAX_INFLIGHT_BYTES: usize = 64 << 20;

/// A READ or WRITE handed to a worker.
pub(super) struct Job {
    pub(super) req: Request,
    pub(super) payload: Vec<u8>,
}

/// What a connection's reader and workers share.
pub(super) struct Pipe {
    pub(super) out: Mutex<SockOut>,
    /// Jobs queued or running, and their payload bytes.
    pub(super) inflight: Mutex<(usize, usize)>,
    pub(super) idle: std::sync::Condvar,
    /// A reply could not be written: the connection is over.
    pub(super) broken: AtomicBool,
    /// Payload buffers to reuse.
    pub(super) spare: Mutex<Vec<Vec<u8>>>,
}

impl Pipe {
    /// Waits until no more than `bytes_left` payload bytes are in flight (0: until the
    /// workers are idle, before the reader itself replies).
    pub(super) fn wait_below(&self, bytes_left: usize) {
        let mut n = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        while n.0 > 0 && (bytes_left == 0 || n.1 > bytes_left) {
            n = self.idle.wait(n).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// No job queued or running.
    pub(super) fn is_idle(&self) -> bool {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).0 == 0
    }

    fn done(&self, bytes: usize) {
        let mut n = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        n.0 -= 1;
        n.1 -= bytes;
        self.idle.notify_all();
    }

    pub(super) fn take_buf(&self) -> Vec<u8> {
        self.spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    pub(super) fn give_buf(&self, buf: Vec<u8>) {
        if buf.capacity() <= 4 << 20 {
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            if spare.len() < QUEUED + WORKERS {
                spare.push(buf);
            }
        }
    }
}

/// What a connection's workers need to serve READ and WRITE.
pub(super) struct Worker<'a> {
    pub(super) server: &'a Server,
    pub(super) export: &'a (String, Export),
    pub(super) peer: &'a str,
    pub(super) structured: bool,
}

impl Worker<'_> {
    /// Serves jobs until the reader hangs up the queue.
    pub(super) fn run(&self, pipe: &Pipe, rx: &Mutex<std::sync::mpsc::Receiver<Job>>) {
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
            if let Some((file, base)) = export.direct.as_ref().filter(|_| sends_from_file(req)) {
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
