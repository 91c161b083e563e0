//! Image format throughput: this crate's qcow2 device against the raw `FileDevice` and
//! against qemu (`qemu-img bench` on the same kind of file), in one run.
//!
//! Figures over a 1 GiB image (each on a fresh file, raw sparse or an empty qcow2 v3 with
//! 64 KiB clusters), queue depth 1 (our devices are synchronous; qemu-img bench `-d 1`):
//! - seq write: 1 GiB in 1 MiB writes onto the fresh image, then a flush (fdatasync);
//! - seq read cold: the same 1 GiB in 1 MiB reads after `drop_caches` (when root);
//! - seq read warm: again, from the page cache;
//! - rand read 4k / rand write 4k: 65,536 requests of 4 KiB at offset i * 104729 * 4 KiB
//!   modulo the size (qemu-img bench's `-S` step pattern, which visits every 4 KiB block
//!   once per 262,144 requests in a scattered order), warm, on the written image; writes
//!   end with a flush.
//!
//! Run: `cargo bench -p vudev-formats --bench throughput` (root for the cold figures;
//! THROUGHPUT_DIR puts the images somewhere other than the target directory; RUNS=N
//! repeats every figure, median printed; QEMU_IMG=path or QEMU_IMG= to skip qemu;
//! QEMU_DEPTH=N gives qemu-img bench a queue depth of N instead of 1).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use vudev::{BlockDevice, FileDevice};
use vudev_formats::{create_qcow2, Qcow2};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 1 << 30;
const RAND_OPS: u64 = 65536;
const STEP_BLOCKS: u64 = 104_729;

const FIGURES: [&str; 5] = [
    "seq write",
    "seq read cold",
    "seq read warm",
    "rand read 4k",
    "rand write 4k",
];

fn image_dir() -> PathBuf {
    std::env::var_os("THROUGHPUT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn drop_caches() -> bool {
    sync_all();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn sync_all() {
    // `sync(1)`: the workspace denies the unsafe libc call.
    let _ = Command::new("sync").status();
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Raw,
    Qcow2,
}

fn fresh(path: &Path, kind: Kind) {
    let _ = std::fs::remove_file(path);
    match kind {
        Kind::Raw => {
            let f = std::fs::File::create(path).unwrap();
            f.set_len(SIZE).unwrap();
        }
        Kind::Qcow2 => create_qcow2(path, SIZE, None).unwrap(),
    }
}

fn open(path: &Path, kind: Kind) -> Box<dyn BlockDevice> {
    match kind {
        Kind::Raw => Box::new(FileDevice::open(path, false).unwrap()),
        Kind::Qcow2 => Box::new(Qcow2::open(path, false).unwrap()),
    }
}

fn seq_read(dev: &dyn BlockDevice) -> f64 {
    let mut buf = vec![0u8; MIB as usize];
    let t = Instant::now();
    let mut off = 0;
    while off < SIZE {
        dev.read_exact_at(&mut buf, off).unwrap();
        off += MIB;
    }
    t.elapsed().as_secs_f64()
}

/// Seconds of each figure for one of our devices, on a fresh image at `path`.
fn ours(path: &Path, kind: Kind) -> [f64; 5] {
    fresh(path, kind);
    let mut out = [0.0; 5];
    {
        let dev = open(path, kind);
        let buf = vec![0x5au8; MIB as usize];
        let t = Instant::now();
        let mut off = 0;
        while off < SIZE {
            dev.write_all_at(&buf, off).unwrap();
            off += MIB;
        }
        dev.flush().unwrap();
        out[0] = t.elapsed().as_secs_f64();
    }
    let cold = drop_caches();
    let dev = open(path, kind);
    out[1] = if cold { seq_read(&*dev) } else { f64::NAN };
    out[2] = seq_read(&*dev);
    let blocks = SIZE / 4096;
    let mut b4 = vec![0u8; 4096];
    let t = Instant::now();
    for i in 0..RAND_OPS {
        let off = (i * STEP_BLOCKS % blocks) * 4096;
        dev.read_exact_at(&mut b4, off).unwrap();
    }
    out[3] = t.elapsed().as_secs_f64();
    let w4 = vec![0xa5u8; 4096];
    let t = Instant::now();
    for i in 0..RAND_OPS {
        let off = (i * STEP_BLOCKS % blocks) * 4096;
        dev.write_all_at(&w4, off).unwrap();
    }
    dev.flush().unwrap();
    out[4] = t.elapsed().as_secs_f64();
    out
}

/// Seconds of one `qemu-img bench` (its own "Run completed in X seconds").
fn qemu_bench(qemu_img: &str, fmt: &str, path: &Path, args: &[&str]) -> f64 {
    let depth = std::env::var("QEMU_DEPTH").unwrap_or_else(|_| "1".into());
    let out = Command::new(qemu_img)
        .args([
            "bench",
            "-f",
            fmt,
            "-t",
            "writeback",
            "-i",
            "threads",
            "-d",
            &depth,
        ])
        .args(args)
        .arg(path)
        .output()
        .expect("qemu-img bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img bench failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.split("Run completed in ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no time in qemu-img bench output: {text}"))
}

/// The same figures through qemu, on a fresh image at `path`.
fn qemu(qemu_img: &str, path: &Path, kind: Kind) -> [f64; 5] {
    let fmt = if kind == Kind::Raw { "raw" } else { "qcow2" };
    let _ = std::fs::remove_file(path);
    let st = Command::new(qemu_img)
        .args(["create", "-q", "-f", fmt])
        .arg(path)
        .arg(SIZE.to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let seq_n = (SIZE / MIB).to_string();
    let rand_n = RAND_OPS.to_string();
    let step = (STEP_BLOCKS * 4096).to_string();
    let seq_flush = format!("--flush-interval={seq_n}");
    let rand_flush = format!("--flush-interval={rand_n}");
    let mut out = [0.0; 5];
    out[0] = qemu_bench(
        qemu_img,
        fmt,
        path,
        &[
            "-w",
            "--pattern=90",
            "-s",
            "1M",
            "-S",
            "1M",
            "-c",
            &seq_n,
            &seq_flush,
        ],
    );
    out[1] = if drop_caches() {
        qemu_bench(qemu_img, fmt, path, &["-s", "1M", "-S", "1M", "-c", &seq_n])
    } else {
        f64::NAN
    };
    out[2] = qemu_bench(qemu_img, fmt, path, &["-s", "1M", "-S", "1M", "-c", &seq_n]);
    out[3] = qemu_bench(
        qemu_img,
        fmt,
        path,
        &["-s", "4k", "-S", &step, "-c", &rand_n],
    );
    out[4] = qemu_bench(
        qemu_img,
        fmt,
        path,
        &[
            "-w",
            "--pattern=165",
            "-s",
            "4k",
            "-S",
            &step,
            "-c",
            &rand_n,
            &rand_flush,
        ],
    );
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn rate(fig: usize, secs: f64) -> String {
    if secs.is_nan() {
        return "n/a".into();
    }
    if fig < 3 {
        format!(
            "{:.2} GiB/s ({secs:.3} s)",
            SIZE as f64 / secs / (1u64 << 30) as f64
        )
    } else {
        format!("{:.0} kIOPS ({secs:.3} s)", RAND_OPS as f64 / secs / 1000.0)
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let dir = image_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let qemu_img = std::env::var("QEMU_IMG").unwrap_or_else(|_| "qemu-img".into());
    let have_qemu =
        !qemu_img.is_empty() && Command::new(&qemu_img).arg("--version").output().is_ok();
    let raw = dir.join("tp.raw");
    let q = dir.join("tp.qcow2");
    type Row = (&'static str, Box<dyn Fn() -> [f64; 5]>);
    let mut rows: Vec<Row> = vec![
        (
            "ours raw (FileDevice)",
            Box::new({
                let raw = raw.clone();
                move || ours(&raw, Kind::Raw)
            }),
        ),
        (
            "ours qcow2",
            Box::new({
                let q = q.clone();
                move || ours(&q, Kind::Qcow2)
            }),
        ),
    ];
    if have_qemu {
        let (a, b) = (qemu_img.clone(), qemu_img.clone());
        rows.push((
            "qemu-img bench raw",
            Box::new({
                let raw = raw.clone();
                move || qemu(&a, &raw, Kind::Raw)
            }),
        ));
        rows.push((
            "qemu-img bench qcow2",
            Box::new({
                let q = q.clone();
                move || qemu(&b, &q, Kind::Qcow2)
            }),
        ));
    } else {
        eprintln!("note: qemu-img not found, the qemu rows are skipped");
    }
    // Interleaved: one run of each row in turn.
    let mut secs: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); 5]; rows.len()];
    for _ in 0..runs {
        for (r, (_, f)) in rows.iter().enumerate() {
            let t = f();
            for i in 0..5 {
                secs[r][i].push(t[i]);
            }
        }
    }
    let med: Vec<[f64; 5]> = secs
        .iter()
        .map(|row| std::array::from_fn(|i| median(row[i].clone())))
        .collect();
    println!(
        "\n1 GiB image in {}, queue depth 1 (qemu-img bench -d {}), median of {runs}\n",
        dir.display(),
        std::env::var("QEMU_DEPTH").unwrap_or_else(|_| "1".into())
    );
    println!("| | {} |", FIGURES.join(" | "));
    println!("|---|---|---|---|---|---|");
    for (r, (name, _)) in rows.iter().enumerate() {
        let cells: Vec<String> = (0..5).map(|i| rate(i, med[r][i])).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    println!("\ntime / time of ours raw (>1: slower than our raw device)\n");
    println!("| | {} |", FIGURES.join(" | "));
    println!("|---|---|---|---|---|---|");
    for (r, (name, _)) in rows.iter().enumerate().skip(1) {
        let cells: Vec<String> = (0..5)
            .map(|i| format!("{:.3}", med[r][i] / med[0][i]))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    if have_qemu {
        println!("\ntime of ours / time of qemu, same format (<1: ours faster)\n");
        println!("| | {} |", FIGURES.join(" | "));
        println!("|---|---|---|---|---|---|");
        for (o, qi, name) in [(0, 2, "raw"), (1, 3, "qcow2")] {
            let cells: Vec<String> = (0..5)
                .map(|i| format!("{:.3}", med[o][i] / med[qi][i]))
                .collect();
            println!("| {name} | {} |", cells.join(" | "));
        }
    }
    println!(
        "\npeak RSS of this process (our devices; qemu-img runs as a child): {} MiB",
        peak_rss_kib() / 1024
    );
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&q);
}
