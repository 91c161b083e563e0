//! Replies to pipelined small reads, served on the reading thread from the page cache and
//! sent together: a client with many reads in flight (fio at queue depth 16, a VM's disk)
//! gets one write per burst instead of one per reply and a hand-over to a worker each.
//!
//! Why: over loopback TCP each `write` of a reply runs the receiver's network stack too,
//! and each hand-over wakes a thread; a burst of 16 4 KiB reads cost 16 of both. Only data
//! already cached is served here (`preadv2` with `RWF_NOWAIT`; on tmpfs and ramfs, which
//! refuse that flag, everything is in memory): a read that would wait for the disk goes
//! to the workers, so one slow read never holds back the others.

use super::transport::SockOut;
use crate::proto::*;
use std::io::{self, Write};
use std::sync::Mutex;
use vudev::FileDevice;

/// A burst's replies are sent once they reach this many bytes, or when no complete
/// request is left to read.
const FULL: usize = 256 << 10;

/// Replies waiting to be sent, whole, in order.
#[derive(Default)]
pub(super) struct ReplyBatch {
    bytes: Vec<u8>,
    /// Whether the export's file is on tmpfs or ramfs (asked once, when RWF_NOWAIT is
    /// refused).
    in_memory_fs: Option<bool>,
}

impl ReplyBatch {
    /// Appends the reply to READ `req`, its data read from `file` at `at`, when that data
    /// is all in the page cache; false (nothing appended) when it is not, or the file ends
    /// before it: the caller serves the request another way.
    pub(super) fn add_cached_read(
        &mut self,
        structured: bool,
        req: &Request,
        file: &FileDevice,
        at: u64,
    ) -> bool {
        let start = self.bytes.len();
        if structured {
            let header = chunk_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                req.cookie,
                8 + req.len,
            );
            self.bytes.extend_from_slice(&header);
            self.bytes.extend_from_slice(&req.offset.to_be_bytes());
        } else {
            self.bytes.extend_from_slice(&simple_reply(0, req.cookie));
        }
        let data_at = self.bytes.len();
        self.bytes.resize(data_at + req.len as usize, 0);
        let in_memory_fs = &mut self.in_memory_fs;
        if read_cached(file, &mut self.bytes[data_at..], at, in_memory_fs) {
            true
        } else {
            self.bytes.truncate(start);
            false
        }
    }

    /// Whether the batch should go out before more is added.
    pub(super) fn is_full(&self) -> bool {
        self.bytes.len() >= FULL
    }

    /// Sends the waiting replies (one write, under the connection's reply lock).
    pub(super) fn send(&mut self, out: &Mutex<SockOut>) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
        let result = out.write_all(&self.bytes);
        self.bytes.clear();
        if self.bytes.capacity() > 4 * FULL {
            self.bytes = Vec::new();
        }
        result
    }
}

/// Fills `buf` from `file` at `at` if every byte is in the page cache, without waiting
/// (`in_memory_fs`: what [`is_in_memory_fs`] said of the file, once asked).
fn read_cached(
    file: &FileDevice,
    buf: &mut [u8],
    at: u64,
    in_memory_fs: &mut Option<bool>,
) -> bool {
    let mut flags = if *in_memory_fs == Some(true) {
        rustix::io::ReadWriteFlags::empty()
    } else {
        rustix::io::ReadWriteFlags::NOWAIT
    };
    let mut done = 0;
    while done < buf.len() {
        let mut slice = [io::IoSliceMut::new(&mut buf[done..])];
        match rustix::io::preadv2(file.file(), &mut slice, at + done as u64, flags) {
            Ok(0) => return false,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::OPNOTSUPP)
                if *in_memory_fs.get_or_insert_with(|| is_in_memory_fs(file)) =>
            {
                flags = rustix::io::ReadWriteFlags::empty();
            }
            Err(_) => return false,
        }
    }
    true
}

/// Whether `file` lives in memory (tmpfs, ramfs): its reads never wait for a disk.
fn is_in_memory_fs(file: &FileDevice) -> bool {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    rustix::fs::fstatfs(file.file()).is_ok_and(|s| {
        let kind = s.f_type as u64;
        kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_read_is_appended_whole_and_an_uncached_one_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = FileDevice::open(&path, true).unwrap();
        let mut batch = ReplyBatch::default();
        let req = |cookie, offset, len| Request {
            flags: 0,
            kind: CMD_READ,
            cookie,
            offset,
            len,
        };
        // Just written: in the page cache.
        assert!(batch.add_cached_read(true, &req(7, 4096, 4096), &file, 4096));
        assert_eq!(batch.bytes.len(), 20 + 8 + 4096);
        assert_eq!(&batch.bytes[28..], &data[4096..]);
        assert_eq!(&batch.bytes[8..16], &7u64.to_be_bytes());
        // Past the end of the file: nothing appended.
        assert!(!batch.add_cached_read(false, &req(8, 8192, 4096), &file, 8192));
        assert_eq!(batch.bytes.len(), 20 + 8 + 4096);
        assert!(batch.add_cached_read(false, &req(9, 0, 16), &file, 0));
        assert_eq!(&batch.bytes[4124..4140], &simple_reply(0, 9));
        assert_eq!(&batch.bytes[4140..], &data[..16]);
    }
}
