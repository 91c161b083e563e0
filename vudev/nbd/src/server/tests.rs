//! The handler over scripted and pseudo-random byte streams (no sockets).

use super::{Export, Server, ServerOptions, Transport};
use crate::proto::*;
use std::io::{self, Read, Write};
use std::sync::Arc;
use vudev::BlockDevice;
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
