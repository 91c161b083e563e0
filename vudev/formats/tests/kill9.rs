//! SIGKILL in the middle of writing: a child process (this test binary, re-run as
//! `kill9_child`) writes seeded data through the qcow2 or VDI device (and discards whole
//! qcow2 clusters, freeing them), flushing now and
//! then and saying so on stdout; the parent kills it with SIGKILL at a seeded random
//! moment, then checks the image with `qemu-img check` (no corruption; leaked clusters are
//! accepted, as qemu accepts them after a crash) and that every write acknowledged before
//! a flush the child reported reads back (a later write over it may show instead).
//!
//! `KILL9_TRIALS=N` sets the trials per format (3 by default; `tests/kill9.sh` runs 20),
//! `KILL9_SEED=S` the first seed.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use testkit::s;
use vudev::BlockDevice;
use vudev_formats::open_image;

const SECTOR: u64 = 4096;
const DISK: u64 = 64 << 20;

/// Operation `i` of the sequence of `seed`: (offset, length, discard), offset and length
/// multiples of `SECTOR`; a mix of sub-cluster, whole-cluster and multi-cluster writes
/// and, where the format reads discarded ranges as zeros (qcow2), discards of whole
/// clusters (which free them, so the refcount ordering of frees is tested too).
fn op_no(seed: u64, i: u64, discards: bool) -> (u64, u64, bool) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i + 1));
    rng.next();
    if discards && i % 5 == 4 {
        let clusters = rng.below(8) + 1;
        let at = rng.below(DISK / 65536 - clusters);
        return (at * 65536, clusters * 65536, true);
    }
    let sectors = match i % 3 {
        0 => rng.below(4) + 1,
        1 => 16,
        _ => rng.below(96) + 1,
    };
    let at = rng.below(DISK / SECTOR - sectors);
    (at * SECTOR, sectors * SECTOR, false)
}

/// What operation `i` leaves in the sector at `off`.
fn content(seed: u64, i: u64, off: u64, discards: bool) -> Vec<u8> {
    if op_no(seed, i, discards).2 {
        vec![0u8; SECTOR as usize]
    } else {
        sector_data(i, off)
    }
}

/// The content write `i` puts into the sector at `off`: its number and the offset,
/// repeated, so that any sector tells which write it came from.
fn sector_data(i: u64, off: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(SECTOR as usize);
    while v.len() < SECTOR as usize {
        v.extend_from_slice(&(i + 1).to_le_bytes());
        v.extend_from_slice(&off.to_le_bytes());
    }
    v
}

/// The child: writes forever (until killed), flushing every 7th write.
#[test]
fn kill9_child() {
    let Ok(img) = std::env::var("KILL9_IMAGE") else {
        return;
    };
    let seed: u64 = std::env::var("KILL9_CHILD_SEED").unwrap().parse().unwrap();
    let dev = open_image(Path::new(&img), false, None).unwrap();
    let discards = img.ends_with(".qcow2");
    println!("READY");
    for i in 0.. {
        let (off, len, discard) = op_no(seed, i, discards);
        if discard {
            dev.discard(off, len).unwrap();
        } else {
            let mut buf = Vec::with_capacity(len as usize);
            for k in 0..len / SECTOR {
                buf.extend(sector_data(i, off + k * SECTOR));
            }
            dev.write_all_at(&buf, off).unwrap();
        }
        if i % 7 == 6 {
            dev.flush().unwrap();
            // Every write up to i is durable (as far as a process crash goes).
            println!("FLUSHED {i}");
        }
    }
}

fn trial(dir: &Path, format: &str, seed: u64) {
    let img = dir.join(format!("k{seed}.{format}"));
    let _ = std::fs::remove_file(&img);
    qemu_img(&["create", "-q", "-f", format, s(&img), &DISK.to_string()]);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill9_child", "--nocapture", "--test-threads=1"])
        .env("KILL9_IMAGE", &img)
        .env("KILL9_CHILD_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // libtest's "test kill9_child ... " may start the first line.
            if line.ends_with("READY") {
                let _ = tx.send(None);
            } else if let Some((_, n)) = line.split_once("FLUSHED ") {
                let _ = tx.send(Some(n.trim().parse::<u64>().unwrap()));
            }
        }
    });
    let mut rng = Rng(seed ^ 0x5eed);
    // Wait until it writes, then let it run 5-300 ms.
    assert_eq!(rx.recv().unwrap(), None, "child did not start");
    std::thread::sleep(std::time::Duration::from_millis(5 + rng.below(296)));
    // Child::kill sends SIGKILL.
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    let flushed = rx.try_iter().flatten().max();

    // qemu-img check: 0 clean, 3 leaks only; anything else is corruption.
    let o = testkit::run("qemu-img", &["check", "-f", format, s(&img)]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let code = o.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "{format} seed {seed}: qemu-img check exit {code:?}:\n{text}"
    );
    assert!(
        !text.contains("ERROR") && !text.contains("corrupt"),
        "{format} seed {seed}: qemu-img check:\n{text}"
    );

    // Every sector holds the last write to it up to `flushed`, or a later write's data.
    let Some(flushed) = flushed else {
        eprintln!("{format} seed {seed}: killed before the first flush");
        return;
    };
    let mut durable: std::collections::HashMap<u64, u64> = Default::default();
    let mut later: std::collections::HashMap<u64, Vec<u64>> = Default::default();
    let discards = format == "qcow2";
    for i in 0..=flushed {
        let (off, len, _) = op_no(seed, i, discards);
        for k in 0..len / SECTOR {
            durable.insert(off + k * SECTOR, i);
        }
    }
    // Writes after the flush may have landed too: up to the next flush (which may have
    // finished unreported) and the writes after that, 13 at most.
    for i in flushed + 1..flushed + 14 {
        let (off, len, _) = op_no(seed, i, discards);
        for k in 0..len / SECTOR {
            later.entry(off + k * SECTOR).or_default().push(i);
        }
    }
    let dev = open_image(&img, true, None).unwrap();
    let mut got = vec![0u8; SECTOR as usize];
    for (&off, &i) in &durable {
        dev.read_exact_at(&mut got, off).unwrap();
        let ok = got == content(seed, i, off, discards)
            || later
                .get(&off)
                .is_some_and(|l| l.iter().any(|&j| got == content(seed, j, off, discards)));
        assert!(
            ok,
            "{format} seed {seed}: sector at {off} lost write {i} (flushed through {flushed})"
        );
    }
    eprintln!(
        "{format} seed {seed}: killed after flush {flushed}, {} sectors checked, check exit {code:?}",
        durable.len()
    );
}

fn trials(format: &str) {
    if !have(&["qemu-img"]) {
        return;
    }
    let n: u64 = std::env::var("KILL9_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let first: u64 = std::env::var("KILL9_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    for seed in first..first + n {
        trial(dir.path(), format, seed);
    }
}

#[test]
fn kill9_mid_write_qcow2() {
    trials("qcow2");
}

#[test]
fn kill9_mid_write_vdi() {
    trials("vdi");
}
