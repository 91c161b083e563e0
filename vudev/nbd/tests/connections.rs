//! Clients coming and going: vunbd's threads and memory stay flat, and the client keeps
//! no thread of its own per connection. Alone in its test binary, so the thread count
//! of this process is the client's.

mod common;

use common::*;
use std::time::{Duration, Instant};
use vudev::BlockDevice;
use vudev_nbd::NbdDevice;

/// Threads of process `pid` (`self` for this one).
fn threads(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// VmRSS of process `pid` in KiB.
fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Opens the export `n` times, reading 4 KiB each time (which starts the connection's
/// reply workers on the server), and drops it.
fn cycle(uri: &str, n: usize) {
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        let dev = NbdDevice::connect(uri).unwrap();
        dev.read_exact_at(&mut buf, 0).unwrap();
    }
}

/// Waits (up to 5 s) until `pid` has at most `want` threads; returns the count.
fn settled_threads(pid: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = threads(pid);
        if n <= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_thousand_connections_leave_no_threads_and_little_memory_behind() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let server = Vunbd::start(&sock, &["--ramdisk", "1M"]);
    let pid = server.child.as_ref().unwrap().id().to_string();
    let uri = server.uri("");
    // Warm up: the allocator's arenas and the listener's first connections.
    cycle(&uri, 200);
    std::thread::sleep(Duration::from_millis(200));
    let idle = threads(&pid);
    let own = threads("self");
    let rss_before = rss_kib(&pid);
    cycle(&uri, 1000);
    // Each connection had a handler thread and 4 reply workers while it lasted.
    assert_eq!(
        settled_threads(&pid, idle),
        idle,
        "server threads left behind"
    );
    assert_eq!(threads("self"), own, "client threads left behind");
    // 1000 connections leaking even 2 KiB each would add 2 MiB.
    let grown = rss_kib(&pid).saturating_sub(rss_before);
    assert!(
        grown < 2048,
        "vunbd grew by {grown} KiB over 1000 connections"
    );
}
