//! Hostile and broken clients against the in-process server: each gets an error reply or
//! a closed socket, and the server goes on serving a normal client.

mod common;

use common::*;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vudev::{BlockDevice, Ramdisk};
use vudev_nbd::proto::*;
use vudev_nbd::{Export, Server, ServerOptions};

struct Fixture {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    disk: Arc<Ramdisk>,
    server: Arc<Server>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let disk = Arc::new(Ramdisk::new(4 << 20).unwrap());
    let mut server = Server::new(ServerOptions {
        handshake_timeout: Duration::from_secs(1),
        ..ServerOptions::default()
    });
    server
        .add_export("disk", Export::new(disk.clone()))
        .unwrap();
    let ro = Arc::new(Ramdisk::new(1 << 20).unwrap());
    server
        .add_export("ro", Export::new(ro).read_only(true))
        .unwrap();
    let server = Arc::new(server);
    let listener = UnixListener::bind(&sock).unwrap();
    let s = server.clone();
    std::thread::spawn(move || s.serve_unix(listener));
    Fixture {
        _dir: dir,
        sock,
        disk,
        server,
    }
}

/// A well-behaved client still gets its writes and reads served.
fn normal_client_works(sock: &Path) {
    let (mut raw, size, _) = Raw::go(sock, "disk", true);
    assert_eq!(size, 4 << 20);
    raw.send(CMD_WRITE, 0, 1, 8192, 4);
    raw.s.write_all(b"okay").unwrap();
    assert_eq!(raw.error_of_reply(0), 0);
    raw.send(CMD_READ, 0, 2, 8192, 4);
    assert_eq!(raw.error_of_reply(4), 0);
    raw.send(CMD_DISC, 0, 3, 0, 0);
}

#[test]
fn garbage_magic_closes_the_connection() {
    let f = fixture();
    let mut raw = Raw::greet(&f.sock);
    raw.s.write_all(b"GARBAGE!GARBAGE!GARBAGE!").unwrap();
    assert!(raw.closed());
    // Garbage in the transmission phase too.
    let (mut raw, _, _) = Raw::go(&f.sock, "disk", false);
    raw.s.write_all(&[0xAB; 28]).unwrap();
    assert!(raw.closed());
    // Unknown client flags.
    let mut raw = Raw::greet(&f.sock);
    drop(raw.s.write_all(&[0u8; 0]));
    let mut s = std::os::unix::net::UnixStream::connect(&f.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = [0u8; 18];
    std::io::Read::read_exact(&mut s, &mut hello).unwrap();
    s.write_all(&0xffff_ffffu32.to_be_bytes()).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(
        std::io::Read::read(&mut s, &mut b),
        Ok(0) | Err(_)
    ));
    assert!(raw.s.write_all(&option_request(OPT_ABORT, &[])).is_ok());
    assert_eq!(raw.option_reply().0, REP_ACK);
    normal_client_works(&f.sock);
}

#[test]
fn truncated_request_and_stalled_handshake_are_dropped() {
    let f = fixture();
    let (mut raw, _, _) = Raw::go(&f.sock, "disk", false);
    raw.s.write_all(&[0x25, 0x60, 0x95, 0x13, 0, 0]).unwrap();
    drop(raw);
    // A client that says nothing after the greeting is dropped by the handshake timeout.
    let mut raw = Raw::greet(&f.sock);
    let start = Instant::now();
    assert!(raw.closed(), "stalled handshake not closed");
    assert!(start.elapsed() < Duration::from_secs(5));
    normal_client_works(&f.sock);
    assert_eq!(&read(&f.disk, 8192, 4), b"okay");
}

fn read(d: &Ramdisk, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    d.read_exact_at(&mut b, offset).unwrap();
    b
}

#[test]
fn out_of_range_and_oversized_requests_get_errors_and_the_connection_survives() {
    let f = fixture();
    for structured in [false, true] {
        let (mut raw, size, _) = Raw::go(&f.sock, "disk", structured);
        raw.send(CMD_READ, 0, 1, size - 100, 200);
        assert_eq!(raw.error_of_reply(200), NBD_EINVAL, "read past the end");
        raw.send(CMD_READ, 0, 2, u64::MAX - 10, 100);
        assert_eq!(raw.error_of_reply(100), NBD_EINVAL, "offset overflow");
        raw.send(CMD_READ, 0, 3, 0, 1 << 30);
        assert_eq!(raw.error_of_reply(1 << 30), NBD_EINVAL, "1 GiB read");
        raw.send(CMD_TRIM, 0, 4, size, 4096);
        assert_eq!(raw.error_of_reply(0), NBD_EINVAL, "trim past the end");
        raw.send(CMD_WRITE_ZEROES, 0, 5, size - 1, 2);
        assert_eq!(raw.error_of_reply(0), NBD_ENOSPC, "zeroes past the end");
        raw.send(CMD_WRITE, 0, 6, size - 2, 4);
        raw.s.write_all(b"abcd").unwrap();
        assert_eq!(raw.error_of_reply(0), NBD_ENOSPC, "write past the end");
        raw.send(99, 0, 7, 0, 0);
        assert_eq!(raw.error_of_reply(0), NBD_EINVAL, "unknown command");
        raw.send(CMD_FLUSH, 1 << 9, 8, 0, 0);
        assert_eq!(raw.error_of_reply(0), NBD_EINVAL, "unknown flag");
        raw.send(CMD_BLOCK_STATUS, 0, 9, 0, 4096);
        assert_eq!(raw.error_of_reply(0), NBD_EINVAL, "no context selected");
        // Still usable.
        raw.send(CMD_READ, 0, 10, 0, 512);
        assert_eq!(raw.error_of_reply(512), 0);
    }
    // A write longer than 32 MiB: an error and a closed connection.
    let (mut raw, _, _) = Raw::go(&f.sock, "disk", false);
    raw.send(CMD_WRITE, 0, 1, 0, 64 << 20);
    assert_eq!(raw.simple(), (NBD_EINVAL, 1));
    assert!(raw.closed());
    normal_client_works(&f.sock);
}

#[test]
fn disconnect_mid_write_writes_nothing_and_acknowledged_writes_stay() {
    let f = fixture();
    let (mut raw, _, _) = Raw::go(&f.sock, "disk", false);
    raw.send(CMD_WRITE, CMD_FLAG_FUA, 1, 0, 4096);
    raw.s.write_all(&[0x11; 4096]).unwrap();
    assert_eq!(raw.simple(), (0, 1));
    raw.send(CMD_WRITE, 0, 2, 65536, 1 << 20);
    raw.s.write_all(&vec![0x22; 300_000]).unwrap();
    drop(raw);
    // The server notices and drops the connection; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.server.active_connections() > 0 {
        assert!(Instant::now() < deadline, "connection not dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        read(&f.disk, 0, 4096).iter().all(|&b| b == 0x11),
        "acked write lost"
    );
    assert!(
        read(&f.disk, 65536, 1 << 20).iter().all(|&b| b == 0),
        "a half-received write was applied"
    );
    normal_client_works(&f.sock);
}

#[test]
fn handshake_options_are_bounded_and_checked() {
    let f = fixture();
    let mut raw = Raw::greet(&f.sock);
    // 100 KiB of option data: TOO_BIG, skipped, and the session goes on.
    let big = vec![0u8; 100 * 1024];
    raw.s.write_all(&option_request(OPT_INFO, &big)).unwrap();
    assert_eq!(raw.option_reply().0, REP_ERR_TOO_BIG);
    // A name length that lies.
    let mut d = 1000u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"disk\0\0");
    raw.s.write_all(&option_request(OPT_GO, &d)).unwrap();
    assert_eq!(raw.option_reply().0, REP_ERR_INVALID);
    // Unknown export, unknown option, meta context before structured replies.
    let mut d = 4u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"nope\0\0");
    raw.s.write_all(&option_request(OPT_GO, &d)).unwrap();
    assert_eq!(raw.option_reply().0, REP_ERR_UNKNOWN);
    raw.s.write_all(&option_request(77, b"xyz")).unwrap();
    assert_eq!(raw.option_reply().0, REP_ERR_UNSUP);
    raw.s
        .write_all(&option_request(OPT_SET_META_CONTEXT, &[]))
        .unwrap();
    assert_eq!(raw.option_reply().0, REP_ERR_INVALID);
    raw.s.write_all(&option_request(OPT_STARTTLS, &[])).unwrap();
    assert_eq!(raw.option_reply().0, REP_ERR_POLICY);
    // LIST: both exports, then ACK.
    raw.s.write_all(&option_request(OPT_LIST, &[])).unwrap();
    assert_eq!(raw.option_reply().0, REP_SERVER);
    assert_eq!(raw.option_reply().0, REP_SERVER);
    assert_eq!(raw.option_reply().0, REP_ACK);
    // A 2 GiB option: TOO_BIG and a closed connection.
    raw.s
        .write_all(&option_request(OPT_INFO, &[])[..12])
        .unwrap();
    raw.s.write_all(&(2u32 << 30).to_be_bytes()).unwrap();
    assert_eq!(raw.option_reply().0, REP_ERR_TOO_BIG);
    assert!(raw.closed());
    normal_client_works(&f.sock);
}

#[test]
fn block_status_and_read_only_rules_over_structured_replies() {
    let f = fixture();
    let mut raw = Raw::greet(&f.sock);
    raw.s
        .write_all(&option_request(OPT_STRUCTURED_REPLY, &[]))
        .unwrap();
    assert_eq!(raw.option_reply().0, REP_ACK);
    let mut d = 4u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"disk");
    d.extend_from_slice(&1u32.to_be_bytes());
    d.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
    d.extend_from_slice(BASE_ALLOCATION.as_bytes());
    raw.s
        .write_all(&option_request(OPT_SET_META_CONTEXT, &d))
        .unwrap();
    let (kind, data) = raw.option_reply();
    assert_eq!(kind, REP_META_CONTEXT);
    assert_eq!(&data[4..], BASE_ALLOCATION.as_bytes());
    assert_eq!(raw.option_reply().0, REP_ACK);
    let mut go = 4u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"disk\0\0");
    raw.s.write_all(&option_request(OPT_GO, &go)).unwrap();
    while raw.option_reply().0 != REP_ACK {}
    raw.structured = true;
    raw.send(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 1, 0, 65536);
    assert_eq!(raw.error_of_reply(0), 0);
    raw.send(CMD_BLOCK_STATUS, 0, 2, 0, 0);
    assert_eq!(raw.error_of_reply(0), NBD_EINVAL, "zero-length status");

    let (mut ro, _, flags) = Raw::go(&f.sock, "ro", true);
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    ro.send(CMD_WRITE, 0, 1, 0, 3);
    ro.s.write_all(b"abc").unwrap();
    assert_eq!(ro.error_of_reply(0), NBD_EPERM);
    ro.send(CMD_WRITE_ZEROES, 0, 2, 0, 3);
    assert_eq!(ro.error_of_reply(0), NBD_EPERM);
    ro.send(CMD_FLUSH, 0, 3, 0, 0);
    assert_eq!(ro.error_of_reply(0), 0);
}

#[test]
fn many_clients_at_once_share_the_device() {
    let f = fixture();
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let sock = f.sock.clone();
            std::thread::spawn(move || {
                let (mut raw, _, _) = Raw::go(&sock, "disk", i % 2 == 0);
                for k in 0..20u64 {
                    let off = (u64::from(i) * 20 + k) * 4096;
                    raw.send(CMD_WRITE, 0, k, off, 4096);
                    raw.s.write_all(&[i + 1; 4096]).unwrap();
                    assert_eq!(raw.error_of_reply(0), 0);
                }
                raw.send(CMD_FLUSH, 0, 99, 0, 0);
                assert_eq!(raw.error_of_reply(0), 0);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for i in 0..8u8 {
        let off = u64::from(i) * 20 * 4096;
        assert!(read(&f.disk, off, 20 * 4096).iter().all(|&b| b == i + 1));
    }
}
