//! Fuzzes the NBD server: the input is everything a client sends, fed to the connection
//! handler over an in-memory duplex (replies go to a sink). The handler must never panic,
//! whatever the bytes, and must end when the input does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{self, Read, Write};
use std::sync::Arc;
use vudev::Ramdisk;
use vudev_nbd::{Export, Server, ServerOptions, Transport};

struct Duplex<'a> {
    input: &'a [u8],
    output: u64,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Duplex<'_> {}

fuzz_target!(|data: &[u8]| {
    let mut server = Server::new(ServerOptions::default());
    let disk = Arc::new(Ramdisk::new(1 << 20).unwrap());
    server.add_export("disk", Export::new(disk)).unwrap();
    let ro = Arc::new(Ramdisk::new(64 * 1024).unwrap());
    server
        .add_export("ro", Export::new(ro).read_only(true).description("read-only"))
        .unwrap();
    let _ = server.handle(
        Duplex {
            input: data,
            output: 0,
        },
        "fuzz",
    );
});
