//! Block I/O benchmark: sequential 1 MiB reads and writes through a partition
//! window vs the same byte range of the plain image file, and a ramdisk vs a
//! file on tmpfs. Prints the ratios and the peak RSS of each group at the end.
//!
//! Run: `cargo bench -p vudev --bench blockio` (set BLOCKIO_DIR to put the
//! image somewhere other than the target directory).

use criterion::{criterion_group, Criterion, Throughput};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vudev::part::{self, NewPartition, PartType, PartitionTable};
use vudev::{BlockDevice, FileDevice, PartitionedDisk, Ramdisk};

const MIB: u64 = 1 << 20;
/// Bytes moved per iteration.
const SPAN: u64 = 64 * MIB;
const CHUNK: usize = MIB as usize;

fn image_dir() -> PathBuf {
    std::env::var_os("BLOCKIO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn read_span(dev: &dyn BlockDevice, base: u64, buf: &mut [u8]) {
    let mut off = 0;
    while off < SPAN {
        dev.read_exact_at(buf, base + off).unwrap();
        off += CHUNK as u64;
    }
}

fn write_span(dev: &dyn BlockDevice, base: u64, buf: &[u8]) {
    let mut off = 0;
    while off < SPAN {
        dev.write_all_at(buf, base + off).unwrap();
        off += CHUNK as u64;
    }
}

/// Resets the kernel's peak-RSS counter (VmHWM) for this process.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size in KiB since the last reset.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

fn window_vs_file(c: &mut Criterion) {
    let path = image_dir().join("blockio-window.img");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(256 * MIB).unwrap();
    drop(file);
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&path, false).unwrap());
    let mut table = PartitionTable::new_gpt(dev.size(), 512, uuid::Uuid::nil()).unwrap();
    table
        .add(NewPartition {
            sectors: Some(128 * 2048),
            ..NewPartition::new(PartType::parse("linux", true).unwrap())
        })
        .unwrap();
    part::write(dev.as_ref(), &table).unwrap();
    let disk = PartitionedDisk::new(dev.clone());
    let window = disk.partition(1).unwrap();
    let base = window.start();
    // Fill the range once so reads hit real (cached) data, not holes.
    write_span(dev.as_ref(), base, &vec![0xA5; CHUNK]);

    reset_peak_rss();
    let mut group = c.benchmark_group("window_vs_file");
    group.throughput(Throughput::Bytes(SPAN));
    let mut buf = vec![0u8; CHUNK];
    group.bench_function("file_read", |b| {
        b.iter(|| read_span(dev.as_ref(), base, &mut buf))
    });
    group.bench_function("window_read", |b| {
        b.iter(|| read_span(&window, 0, &mut buf))
    });
    let data = vec![0x5A; CHUNK];
    group.bench_function("file_write", |b| {
        b.iter(|| write_span(dev.as_ref(), base, &data))
    });
    group.bench_function("window_write", |b| b.iter(|| write_span(&window, 0, &data)));
    group.finish();
    println!("window_vs_file peak RSS: {} KiB", peak_rss_kib());
    let _ = std::fs::remove_file(&path);
}

fn ramdisk_vs_tmpfs(c: &mut Criterion) {
    let path = PathBuf::from("/dev/shm").join(format!("blockio-{}.img", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(SPAN).unwrap();
    drop(file);
    let tmpfs = FileDevice::open(&path, false).unwrap();
    let ram = Ramdisk::new(SPAN).unwrap();
    write_span(&tmpfs, 0, &vec![0xA5; CHUNK]);
    write_span(&ram, 0, &vec![0xA5; CHUNK]);

    reset_peak_rss();
    let mut group = c.benchmark_group("ramdisk_vs_tmpfs");
    group.throughput(Throughput::Bytes(SPAN));
    let mut buf = vec![0u8; CHUNK];
    group.bench_function("tmpfs_read", |b| b.iter(|| read_span(&tmpfs, 0, &mut buf)));
    group.bench_function("ramdisk_read", |b| b.iter(|| read_span(&ram, 0, &mut buf)));
    let data = vec![0x5A; CHUNK];
    group.bench_function("tmpfs_write", |b| b.iter(|| write_span(&tmpfs, 0, &data)));
    group.bench_function("ramdisk_write", |b| b.iter(|| write_span(&ram, 0, &data)));
    group.finish();
    println!(
        "ramdisk_vs_tmpfs peak RSS: {} KiB (ramdisk holds {} KiB)",
        peak_rss_kib(),
        ram.allocated_bytes() / 1024
    );
    let _ = std::fs::remove_file(&path);
}

/// Mean time of one benchmark as criterion saved it, in nanoseconds.
fn mean_ns(group: &str, bench: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(".."));
    let path = target
        .join("criterion")
        .join(group)
        .join(bench)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let key = "\"mean\":{\"confidence_interval\":{\"confidence_level\":0.95,\"lower_bound\":";
    let rest = &text[text.find("\"mean\"")?..];
    let point = &rest[rest.find("\"point_estimate\":")? + 17..];
    let _ = key;
    point.split([',', '}']).next()?.parse().ok()
}

fn report() {
    println!("\nratios (mean time; < 1.00 means the first is faster), throughput in MiB/s:");
    for (group, pairs) in [
        (
            "window_vs_file",
            [("window_read", "file_read"), ("window_write", "file_write")],
        ),
        (
            "ramdisk_vs_tmpfs",
            [
                ("ramdisk_read", "tmpfs_read"),
                ("ramdisk_write", "tmpfs_write"),
            ],
        ),
    ] {
        for (ours, base) in pairs {
            match (mean_ns(group, ours), mean_ns(group, base)) {
                (Some(a), Some(b)) => {
                    let mibs = |ns: f64| SPAN as f64 / MIB as f64 / (ns / 1e9);
                    println!(
                        "  {group}: {ours} / {base} = {:.3}  ({:.0} vs {:.0} MiB/s)",
                        a / b,
                        mibs(a),
                        mibs(b)
                    );
                }
                _ => println!("  {group}: {ours} / {base}: no estimates found"),
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).sample_size(20);
    targets = window_vs_file, ramdisk_vs_tmpfs
}

fn main() {
    benches();
    Criterion::default().final_summary();
    report();
}
