//! Memory over many connections: opens an [`NbdDevice`] against a `vunbd` on a Unix
//! socket, reads 4 KiB and drops it, CYCLES times (20,000 by default), and every 2,000
//! cycles prints this process's VmRSS and the server's VmRSS and thread count. A client
//! that leaks per connection climbs here; so does a server whose connection threads
//! are not ending.
//!
//! ```text
//! cargo build --release -p vudev-nbd --examples
//! target/release/examples/connect_cycle [CYCLES] [VUNBD]
//! ```
//! VUNBD defaults to the `vunbd` next to the examples directory.
//!
//! `connect_cycle --hostile SESSION [CYCLES]` runs the body of the `nbd_client` fuzz
//! target instead, without libFuzzer: each cycle a server thread of this process sends a
//! mutated copy of SESSION (bytes flipped, cut short; `fuzz/nbd_client_seed.py` makes
//! one) to a client that connects, maps, reads, writes and flushes; only this process's
//! VmRSS and threads are printed. It tells the client's error paths apart from what
//! libFuzzer itself keeps (its in-memory corpus of inputs up to `-max_len`).

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vudev::BlockDevice;
use vudev_nbd::{ClientOptions, NbdDevice};

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--hostile") {
        let session = args.nth(1).expect("--hostile SESSION");
        let cycles = args.next().map(|a| a.parse().expect("CYCLES is a number"));
        return hostile(Path::new(&session), cycles.unwrap_or(20_000));
    }
    let cycles: u32 = args
        .next()
        .map(|a| a.parse().expect("CYCLES is a number"))
        .unwrap_or(20_000);
    let vunbd = args.next().map(PathBuf::from).unwrap_or_else(default_vunbd);
    let dir = std::env::temp_dir().join(format!("connect-cycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let socket = dir.join("nbd.sock");
    let mut server = Command::new(&vunbd)
        .args(["--ramdisk", "1M", "--unix"])
        .arg(&socket)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", vunbd.display()));
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    wait_for(&uri);
    println!("cycle   client_rss_kib  server_rss_kib  server_threads");
    report(0, server.id());
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    for n in 1..=cycles {
        let dev = NbdDevice::connect(&uri).expect("connect");
        dev.read_exact_at(&mut buf, 0).expect("read");
        drop(dev);
        if n % 2000 == 0 {
            report(n, server.id());
        }
    }
    println!(
        "{cycles} cycles in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `vunbd` in the directory above this example's (target/release/examples/..).
fn default_vunbd() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("vunbd"))
        .expect("a target directory")
}

/// Waits until the server takes a connection.
fn wait_for(uri: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while NbdDevice::connect(uri).is_err() {
        assert!(Instant::now() < deadline, "vunbd never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One line: the cycle, both resident set sizes and the server's threads. The
/// server's threads are counted a moment later, once the last connection's ended.
fn report(cycle: u32, server: u32) {
    std::thread::sleep(Duration::from_millis(50));
    let own = vm_rss_kib("self");
    let theirs = vm_rss_kib(&server.to_string());
    let threads = std::fs::read_dir(format!("/proc/{server}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    println!("{cycle:>6}  {own:>14}  {theirs:>14}  {threads:>14}");
}

/// VmRSS of /proc/PID/status in KiB (0 when unreadable).
fn vm_rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The `nbd_client` fuzz target's body over mutated copies of `session`, `cycles` times.
fn hostile(session: &Path, cycles: u32) {
    let seed = std::fs::read(session).unwrap_or_else(|e| panic!("{}: {e}", session.display()));
    let dir = std::env::temp_dir().join(format!("connect-cycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    println!("cycle   rss_kib  threads");
    report_self(0);
    let started = Instant::now();
    for n in 1..=cycles {
        let mut data = seed.clone();
        for _ in 0..next() % 4 {
            let at = (next() % data.len() as u64) as usize;
            data[at] ^= 1 << (next() % 8);
        }
        if next() % 3 == 0 {
            data.truncate((next() % seed.len() as u64) as usize);
        }
        serve_once(&dir.join(format!("{n}.sock")), &data);
        if n % 2000 == 0 {
            report_self(n);
        }
    }
    println!(
        "{cycles} cycles in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One fuzz run: a listener at `path` answering every connection with `data`, and a
/// client that connects, maps the export, reads, writes and flushes.
fn serve_once(path: &Path, data: &[u8]) {
    let listener = UnixListener::bind(path).expect("bind");
    let uri = format!("nbd+unix:///?socket={}", path.display());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut s) = conn else { return };
                let _ = s.write_all(data);
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
        let _ = UnixStream::connect(path);
    });
    let _ = std::fs::remove_file(path);
}

/// This process's VmRSS and thread count, on one line.
fn report_self(cycle: u32) {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    println!("{cycle:>6}  {:>8}  {threads:>7}", vm_rss_kib("self"));
}
