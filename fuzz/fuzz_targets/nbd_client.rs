//! Fuzzes the NBD client: the input is everything a server sends (greeting, option
//! replies, transmission replies incl. block status chunks), written to a real Unix socket
//! the client connects to. The client must never panic or hang, whatever the bytes: it
//! fails the connection or the request with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixListener;
use std::sync::OnceLock;
use std::time::Duration;
use vudev::BlockDevice;
use vudev_nbd::{ClientOptions, NbdDevice};

/// One listening socket per fuzzing process.
fn listener() -> &'static (UnixListener, String) {
    static L: OnceLock<(UnixListener, String)> = OnceLock::new();
    L.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("nbd-client-fuzz-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).expect("bind");
        let uri = format!("nbd+unix:///?socket={}", path.display());
        (l, uri)
    })
}

fuzz_target!(|data: &[u8]| {
    let (l, uri) = listener();
    let input = data.to_vec();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.write_all(&input);
            // End of the server's bytes: the client sees EOF, never waits for more.
            let _ = s.shutdown(Shutdown::Write);
            let _ = std::io::copy(&mut s, &mut std::io::sink());
        });
        let options = ClientOptions {
            timeout: Duration::from_secs(2),
            attempts: 1,
            retry_delay: Duration::from_millis(1),
        };
        if let Ok(dev) = NbdDevice::connect_with(uri, options) {
            let _ = dev.data_ranges();
            let mut buf = vec![0u8; 4096];
            let _ = dev.read_at(&mut buf, 0);
            let _ = dev.write_at(&buf[..512], 0);
            let _ = dev.flush();
        }
    });
});
