//! Fuzzes the NBD client: the input is everything a server sends (greeting, option
//! replies, transmission replies incl. block status chunks), written to a real Unix socket
//! the client connects to. The client must never panic or hang, whatever the bytes: it
//! fails the connection or the request with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use vudev::BlockDevice;
use vudev_nbd::{ClientOptions, NbdDevice};

fuzz_target!(|data: &[u8]| {
    // A listener of its own per run: a reconnection never lands in a stale backlog.
    static RUN: AtomicU64 = AtomicU64::new(0);
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("nbd-client-fuzz-{}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    let uri = format!("nbd+unix:///?socket={}", path.display());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Every connection (the first and each reconnection) gets the same bytes.
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut s) = conn else { return };
                let _ = s.write_all(data);
                // End of the server's bytes: the client sees EOF, never waits for more.
                let _ = s.shutdown(Shutdown::Write);
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            }
        });
        let options = ClientOptions {
            timeout: Duration::from_secs(2),
            attempts: 2,
            retry_delay: Duration::from_millis(1),
        };
        if let Ok(dev) = NbdDevice::connect_with(&uri, options) {
            let _ = vudev::data_ranges(&dev);
            let mut buf = vec![0u8; 4096];
            let _ = dev.read_at(&mut buf, 0);
            let _ = dev.write_at(&buf[..512], 0);
            let _ = dev.flush();
        }
        stop.store(true, Ordering::Relaxed);
        let _ = UnixStream::connect(&path);
    });
    let _ = std::fs::remove_file(&path);
});
