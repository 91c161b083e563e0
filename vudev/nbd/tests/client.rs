//! NbdDevice against nbdkit, nbd-server and our own server.

mod common;

use common::*;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::s;
use vudev::{BlockDevice, Errno, Ramdisk};
use vudev_nbd::{ClientOptions, Export, NbdDevice, Server, ServerOptions};

fn nbdkit(sock: &Path, args: &[&str]) -> Peer {
    let child = Command::new("nbdkit")
        .args(["-f", "-U", s(sock)])
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Peer(child);
    wait_for_socket(sock, Some(&mut p.0));
    p
}

/// Reads, writes, flushes and checks the end-of-device rules on `dev`, mirrored in `model`.
fn exercise(dev: &NbdDevice, model: &mut [u8]) {
    let size = dev.size();
    assert_eq!(size, model.len() as u64);
    let mut all = vec![0u8; model.len()];
    assert_eq!(dev.read_at(&mut all, 0).unwrap(), model.len());
    assert!(all == model, "initial contents differ");
    for (i, &(off, len)) in [(0u64, 4096usize), (12345, 70000), (size - 1000, 1000)]
        .iter()
        .enumerate()
    {
        let data = random_bytes(len, 100 + i as u64);
        dev.write_all_at(&data, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&data);
    }
    dev.flush().unwrap();
    // Straddling the end: the part before it.
    assert_eq!(dev.write_at(&[9u8; 100], size - 10).unwrap(), 10);
    model[size as usize - 10..].fill(9);
    assert_eq!(dev.write_at(&[1], size), Err(Errno::ENOSPC));
    let mut tail = [0u8; 64];
    assert_eq!(dev.read_at(&mut tail, size - 16).unwrap(), 16);
    assert_eq!(dev.read_at(&mut tail, size).unwrap(), 0);
    dev.read_exact_at(&mut all, 0).unwrap();
    assert!(all == model, "contents after writes differ");
}

#[test]
fn nbdkit_file_plugin_reads_writes_and_flushes_into_the_file() {
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut model = random_bytes(8 << 20, 11);
    std::fs::write(&img, &model).unwrap();
    let sock = dir.path().join("s");
    let _kit = nbdkit(&sock, &["file", s(&img)]);
    let dev = NbdDevice::connect(&uri(&sock, "")).unwrap();
    assert!(!dev.read_only());
    exercise(&dev, &mut model);
    dev.flush().unwrap();
    assert!(
        std::fs::read(&img).unwrap() == model,
        "file differs after flush"
    );
    dev.discard(0, 1 << 20).unwrap();
}

#[test]
fn nbdkit_memory_plugin_and_read_only_exports() {
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let kit = nbdkit(&sock, &["memory", "64M"]);
    let dev = NbdDevice::connect(&uri(&sock, "")).unwrap();
    assert_eq!(dev.size(), 64 << 20);
    let mut model = vec![0u8; 64 << 20];
    exercise(&dev, &mut model);
    // A read bigger than one request (32 MiB) is split.
    let big = random_bytes(40 << 20, 12);
    dev.write_all_at(&big, 1 << 20).unwrap();
    let mut back = vec![0u8; 40 << 20];
    dev.read_exact_at(&mut back, 1 << 20).unwrap();
    assert!(back == big);
    drop((dev, kit));

    let sock = dir.path().join("r");
    let _kit = nbdkit(&sock, &["-r", "memory", "1M"]);
    let dev = NbdDevice::connect(&uri(&sock, "")).unwrap();
    assert!(dev.read_only());
    assert_eq!(dev.write_at(b"x", 0), Err(Errno::EROFS));
}

#[test]
fn nbd_server_over_a_unix_socket() {
    if !have("nbd-server") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut model = random_bytes(4 << 20, 13);
    std::fs::write(&img, &model).unwrap();
    let sock = dir.path().join("s");
    let conf = dir.path().join("config");
    std::fs::write(
        &conf,
        format!(
            "[generic]\nunixsock = {}\n[disk]\nexportname = {}\n",
            s(&sock),
            s(&img)
        ),
    )
    .unwrap();
    let child = Command::new("nbd-server")
        .args(["-C", s(&conf), "-d"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _peer = Peer(child);
    // `-d` serves a single connection, so no probe: retry until the socket listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    let dev = loop {
        match NbdDevice::connect(&uri(&sock, "disk")) {
            Ok(d) => break d,
            Err(e) => {
                assert!(Instant::now() < deadline, "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(dev.size(), 4 << 20);
    exercise(&dev, &mut model);
    dev.flush().unwrap();
    assert!(
        std::fs::read(&img).unwrap() == model,
        "file differs after flush"
    );
}

#[test]
fn a_killed_server_gives_eio_in_bounded_time() {
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let kit = nbdkit(&sock, &["memory", "16M"]);
    let dev = NbdDevice::connect_with(
        &uri(&sock, ""),
        ClientOptions {
            timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    dev.write_all_at(b"before", 0).unwrap();
    drop(kit);
    let start = Instant::now();
    let mut buf = [0u8; 6];
    assert_eq!(dev.read_at(&mut buf, 0), Err(Errno::EIO));
    assert_eq!(dev.write_at(b"x", 0), Err(Errno::EIO));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_stopped_server_times_out_instead_of_hanging() {
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let kit = nbdkit(&sock, &["memory", "16M"]);
    let dev = NbdDevice::connect_with(
        &uri(&sock, ""),
        ClientOptions {
            timeout: Duration::from_millis(300),
            attempts: 2,
            retry_delay: Duration::from_millis(10),
        },
    )
    .unwrap();
    let pid = kit.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    // Wait until it is really stopped (state T), so no reply slips out.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .trim_start()
        .starts_with('T')
    {
        assert!(Instant::now() < deadline, "nbdkit did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    let mut buf = [0u8; 512];
    let r = dev.read_at(&mut buf, 0);
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert_eq!(r, Err(Errno::EIO));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

fn our_server(sock: &Path, disk: Arc<Ramdisk>) -> Arc<Server> {
    let mut server = Server::new(ServerOptions::default());
    server.add_export("d", Export::new(disk)).unwrap();
    let server = Arc::new(server);
    let _ = std::fs::remove_file(sock);
    let listener = UnixListener::bind(sock).unwrap();
    let s = server.clone();
    std::thread::spawn(move || s.serve_unix(listener));
    server
}

#[test]
fn reconnects_after_the_server_restarts_and_resends_unacknowledged_requests() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let disk = Arc::new(Ramdisk::new(8 << 20).unwrap());
    let first = our_server(&sock, disk.clone());
    let dev = NbdDevice::connect(&uri(&sock, "d")).unwrap();
    let mut model = vec![0u8; 8 << 20];
    exercise(&dev, &mut model);
    // The server goes away and a new one takes its place on the same socket.
    first.shutdown();
    let _second = our_server(&sock, disk.clone());
    dev.write_all_at(b"after restart", 4096).unwrap();
    dev.flush().unwrap();
    let mut buf = [0u8; 13];
    disk.read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(&buf, b"after restart");
    dev.read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(&buf, b"after restart");
}

#[test]
fn our_client_against_vunbd_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut model = random_bytes(2 << 20, 14);
    std::fs::write(&img, &model).unwrap();
    let (_peer, port) = vunbd_tcp(&[s(&img), "--name", "x"]);
    let dev = NbdDevice::connect(&format!("nbd://127.0.0.1:{port}/x")).unwrap();
    exercise(&dev, &mut model);
    dev.flush().unwrap();
    assert!(std::fs::read(&img).unwrap() == model);
    let err = NbdDevice::connect(&format!("nbd://127.0.0.1:{port}/missing")).unwrap_err();
    assert!(err.to_string().contains("no such export"), "{err}");
}

/// A sparse file with data at `runs` (offset, length), the rest holes.
fn sparse_file(path: &Path, size: u64, runs: &[(u64, usize)]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in runs.iter().enumerate() {
        f.write_all_at(&random_bytes(len, 40 + i as u64), off)
            .unwrap();
    }
}

#[test]
fn data_ranges_come_from_base_allocation_of_nbdkit_and_of_our_server() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [(1u64 << 20, 64usize << 10), (40 << 20, 1 << 20)];
    // Every written run inside one range, and far less than the export mapped as data.
    let maps_the_runs = |ranges: &[(u64, u64)]| {
        let mapped: u64 = ranges.iter().map(|r| r.1).sum();
        assert!(mapped < 8 << 20, "{ranges:?}");
        for &(off, len) in &runs {
            let len = len as u64;
            let covered = ranges.iter().any(|&(a, n)| a <= off && off + len <= a + n);
            assert!(covered, "{off}: {ranges:?}");
        }
    };
    // Our server over the sparse file: its holes (SEEK_HOLE) are left out.
    let img = dir.path().join("sparse.img");
    sparse_file(&img, 64 << 20, &runs);
    let file = Arc::new(vudev::FileDevice::open(&img, true).unwrap());
    let mut server = Server::new(ServerOptions::default());
    server.add_export("d", Export::new(file)).unwrap();
    // A qcow2 export answers from its L2 tables: the same map as the image's own.
    let qcow2 = dir.path().join("disk.qcow2");
    vudev_formats::create_qcow2(&qcow2, 64 << 20, None).unwrap();
    {
        let q = vudev_formats::open_image(&qcow2, false, None).unwrap();
        for &(off, len) in &runs {
            q.write_all_at(&random_bytes(len, off), off).unwrap();
        }
        q.flush().unwrap();
    }
    let q = vudev_formats::open_image(&qcow2, true, None).unwrap();
    let own = vudev::data_ranges(q.as_ref()).unwrap();
    server.add_export("q", Export::new(q)).unwrap();
    let server = Arc::new(server);
    let sock = dir.path().join("ours");
    let listener = UnixListener::bind(&sock).unwrap();
    let serving = server.clone();
    std::thread::spawn(move || serving.serve_unix(listener));
    let dev = NbdDevice::connect(&uri(&sock, "d")).unwrap();
    maps_the_runs(&vudev::data_ranges(&dev).unwrap());
    let dev = NbdDevice::connect(&uri(&sock, "q")).unwrap();
    let ranges = vudev::data_ranges(&dev).unwrap();
    assert_eq!(ranges, own, "the qcow2 export's map is the image's");
    maps_the_runs(&ranges);
    if !have("nbdkit") {
        return;
    }
    // nbdkit's file plugin over the same file.
    let sock = dir.path().join("kit");
    let _kit = nbdkit(&sock, &["file", s(&img)]);
    let dev = NbdDevice::connect(&uri(&sock, "")).unwrap();
    maps_the_runs(&vudev::data_ranges(&dev).unwrap());
    // Without block status (nbdkit's noextents filter) there is no map: copy it all.
    let sock = dir.path().join("flat");
    let _flat = nbdkit(&sock, &["--filter=noextents", "file", s(&img)]);
    let dev = NbdDevice::connect(&uri(&sock, "")).unwrap();
    assert_eq!(
        vudev::data_ranges(&dev).unwrap(),
        vec![(0, 64 << 20)],
        "noextents: all data"
    );
}
