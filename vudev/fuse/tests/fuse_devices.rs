//! vudevpartx and vudevramdisk through the real kernel FUSE, checked with
//! the real tools (sfdisk, sgdisk, dd, mkfs.vfat, fsck.fat, mtools,
//! mkfs.ext4, e2fsck, fusermount3).
//!
//! Each test starts the built binary as a child, waits for the mount to
//! appear in /proc/self/mountinfo, runs the tools, unmounts and checks the
//! daemon's exit status. A guard unmounts (`fusermount3 -u -z`) and kills
//! the daemon if a test fails half way.

use std::collections::hash_map::DefaultHasher;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use testkit::{is_mounted, lazy_unmount, run, run_ok, s, sh};

const PARTX: &str = env!("CARGO_BIN_EXE_vudevpartx");
const RAMDISK: &str = env!("CARGO_BIN_EXE_vudevramdisk");

/// Hang guard for waits on the kernel or a daemon (never reached when things work).
const PATIENCE: Duration = Duration::from_secs(20);

/// True if this machine can run the calling test; prints why not otherwise.
fn can_run(tools: &[&str]) -> bool {
    if !Path::new("/dev/fuse").exists() {
        testkit::skip("/dev/fuse is missing (no FUSE in this kernel or container)");
        return false;
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        testkit::skip(&format!(
            "cannot open /dev/fuse ({e}); run as root or make it 0666"
        ));
        return false;
    }
    for tool in ["fusermount3"].iter().chain(tools) {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false)
            || Path::new("/sbin").join(tool).is_file()
            || Path::new("/usr/sbin").join(tool).is_file();
        if !found {
            testkit::skip(&format!("{tool} is not installed (.ci/run installs it)"));
            return false;
        }
    }
    true
}

/// Waits until `done` holds; panics with `what` after [`PATIENCE`].
fn wait_until(what: &str, done: impl FnMut() -> bool) {
    testkit::wait_until(what, PATIENCE, done);
}

/// A running foreground daemon and its mount; dropping it cleans up.
struct Mounted {
    mountpoint: PathBuf,
    child: Option<Child>,
}

impl Mounted {
    /// Starts `binary -f args...` and waits until `mountpoint` is mounted.
    fn start(binary: &str, args: &[&str], mountpoint: &Path) -> Mounted {
        let child = Command::new(binary)
            .arg("-f")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let mut mounted = Mounted {
            mountpoint: mountpoint.to_path_buf(),
            child: Some(child),
        };
        wait_until(
            &format!("{binary} to mount {}", mountpoint.display()),
            || {
                if let Some(status) = mounted
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    let stderr = mounted.take_stderr();
                    panic!("{binary} {args:?} exited early ({status}):\n{stderr}");
                }
                is_mounted(mountpoint)
            },
        );
        mounted
    }

    fn take_stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut err) = self.child.as_mut().and_then(|c| c.stderr.take()) {
            let _ = err.read_to_string(&mut text);
        }
        text
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Waits for the daemon to exit by itself and returns its status and stderr.
    fn wait_exit(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("daemon running");
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        let status = child.wait().expect("wait for the daemon");
        (status, stderr)
    }

    /// `fusermount3 -u` (EBUSY retried for a moment), then the daemon must exit with status 0.
    fn unmount(self) {
        let mountpoint = self.mountpoint.clone();
        testkit::unmount(&mountpoint);
        let (status, stderr) = self.wait_exit();
        assert!(status.success(), "daemon exited with {status}:\n{stderr}");
        assert!(
            !is_mounted(&mountpoint),
            "still mounted after the daemon exited"
        );
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if is_mounted(&self.mountpoint) {
                lazy_unmount(&self.mountpoint);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A partition as `sfdisk --json` reports it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    number: u32,
    start: u64,
    size: u64,
}

fn sfdisk_parts(image: &Path) -> Vec<Part> {
    let text = run_ok("sfdisk", &["--json", s(image)]);
    let json: serde_json::Value = serde_json::from_str(&text).expect("sfdisk --json");
    let table = &json["partitiontable"];
    let device = table["device"].as_str().unwrap();
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    table["partitions"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| Part {
                    number: p["node"].as_str().unwrap()[device.len()..]
                        .trim_start_matches('p')
                        .parse()
                        .unwrap(),
                    start: p["start"].as_u64().unwrap() * sector,
                    size: p["size"].as_u64().unwrap() * sector,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An image of `mib` MiB filled with a position-dependent pattern, so every
/// byte range has its own content.
fn patterned_image(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let path = dir.join(name);
    let mut file = File::create(&path).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    for m in 0..mib {
        for (i, b) in chunk.iter_mut().enumerate() {
            let pos = m * (1 << 20) + i as u64;
            *b = (pos.wrapping_mul(31) ^ (pos >> 9)) as u8;
        }
        file.write_all(&chunk).unwrap();
    }
    path
}

fn read_range(image: &Path, start: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    File::open(image)
        .unwrap()
        .read_exact_at(&mut buf, start)
        .unwrap();
    buf
}

fn hash_file(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    std::fs::read(path).unwrap().hash(&mut h);
    h.finish()
}

fn stat_size(path: &Path) -> u64 {
    run_ok("stat", &["-c", "%s", s(path)])
        .trim()
        .parse()
        .unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// An MBR image with two primaries, an extended partition and two logicals.
fn mbr_image(dir: &Path) -> PathBuf {
    let image = patterned_image(dir, "mbr.img", 32);
    sh(&format!(
        "printf 'label: dos\\nsize=8MiB, type=83\\nsize=6MiB, type=c\\ntype=5\\n\
         size=4MiB, type=83\\nsize=4MiB, type=83\\n' | sfdisk -q {}",
        s(&image)
    ));
    image
}

/// A GPT image with three partitions made by sgdisk.
fn gpt_image(dir: &Path) -> PathBuf {
    let image = patterned_image(dir, "gpt.img", 32);
    run_ok(
        "sgdisk",
        &[
            "-n",
            "1:0:+4M",
            "-n",
            "2:0:+8M",
            "-t",
            "2:0700",
            "-n",
            "3:0:+4M",
            s(&image),
        ],
    );
    image
}

#[test]
fn partx_files_have_the_partition_sizes_and_bytes() {
    if !can_run(&["sfdisk", "dd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = mbr_image(dir.path());
    let parts = sfdisk_parts(&image);
    assert_eq!(
        parts.iter().map(|p| p.number).collect::<Vec<_>>(),
        [1, 2, 3, 5, 6]
    );
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Mounted::start(PARTX, &[s(&image), s(&mnt)], &mnt);

    assert_eq!(
        listing(&mnt),
        ["disk", "disk1", "disk2", "disk3", "disk5", "disk6"]
    );
    assert_eq!(stat_size(&mnt.join("disk")), 32 << 20);
    for p in &parts {
        let file = mnt.join(format!("disk{}", p.number));
        assert_eq!(stat_size(&file), p.size, "size of {}", file.display());
        let out = run("dd", &[&format!("if={}", s(&file)), "bs=1M", "status=none"]);
        assert!(out.status.success(), "dd {}", file.display());
        assert!(
            out.stdout == read_range(&image, p.start, p.size),
            "bytes of disk{} differ from the image range",
            p.number
        );
    }
    // Writes through one file are seen at once through the other (no stale cache).
    let p5 = parts.iter().find(|p| p.number == 5).unwrap();
    let marker = b"written through disk5";
    OpenOptions::new()
        .write(true)
        .open(mnt.join("disk5"))
        .unwrap()
        .write_all_at(marker, 4096)
        .unwrap();
    let mut back = vec![0u8; marker.len()];
    File::open(mnt.join("disk"))
        .unwrap()
        .read_exact_at(&mut back, p5.start + 4096)
        .unwrap();
    assert_eq!(back, marker);
    OpenOptions::new()
        .write(true)
        .open(mnt.join("disk"))
        .unwrap()
        .write_all_at(b"and back", p5.start + 4096)
        .unwrap();
    File::open(mnt.join("disk5"))
        .unwrap()
        .read_exact_at(&mut back[..8], 4096)
        .unwrap();
    assert_eq!(&back[..8], b"and back");
    // Writes past a partition's end fail instead of spilling into the next one.
    let out = run(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={}", s(&mnt.join("disk1"))),
            "bs=512",
            "count=1",
            &format!("seek={}", parts[0].size / 512),
            "conv=notrunc",
            "status=none",
        ],
    );
    assert!(!out.status.success(), "dd past the end of disk1 succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left on device"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.unmount();
    assert_eq!(
        read_range(&image, p5.start + 4096, 8),
        b"and back",
        "the write reached the image"
    );
}

#[test]
fn mkfs_vfat_on_a_partition_file_is_clean_and_stays_inside() {
    if !can_run(&["sgdisk", "sfdisk", "mkfs.vfat", "fsck.fat", "minfo", "dd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = gpt_image(dir.path());
    let parts = sfdisk_parts(&image);
    let two = *parts.iter().find(|p| p.number == 2).unwrap();
    let before_one = read_range(&image, parts[0].start, parts[0].size);
    let before_three = read_range(&image, parts[2].start, parts[2].size);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Mounted::start(PARTX, &[s(&image), s(&mnt)], &mnt);
    run_ok("mkfs.vfat", &["-n", "VURS", s(&mnt.join("disk2"))]);
    run_ok("fsck.fat", &["-n", s(&mnt.join("disk2"))]);
    m.unmount();

    // The filesystem is in partition 2's byte range of the image, and nowhere else.
    let extracted = dir.path().join("p2.img");
    run_ok(
        "dd",
        &[
            &format!("if={}", s(&image)),
            &format!("of={}", s(&extracted)),
            "bs=512",
            &format!("skip={}", two.start / 512),
            &format!("count={}", two.size / 512),
            "status=none",
        ],
    );
    let fsck = run_ok("fsck.fat", &["-n", s(&extracted)]);
    assert!(
        fsck.contains("1 files, 0/"),
        "only the volume label: {fsck}"
    );
    let minfo = run_ok(
        "minfo",
        &["-i", &format!("{}@@{}", s(&image), two.start), "::"],
    );
    assert!(
        minfo.contains("VURS"),
        "minfo does not see the label:\n{minfo}"
    );
    assert!(read_range(&image, parts[0].start, parts[0].size) == before_one);
    assert!(read_range(&image, parts[2].start, parts[2].size) == before_three);
    assert_eq!(sfdisk_parts(&image), parts, "the table is unchanged");
}

#[test]
fn sgdisk_through_disk_makes_the_partition_files_follow() {
    if !can_run(&["sgdisk", "sfdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = gpt_image(dir.path());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Mounted::start(PARTX, &[s(&image), s(&mnt)], &mnt);
    assert_eq!(listing(&mnt), ["disk", "disk1", "disk2", "disk3"]);
    // Cached in the kernel: the attributes of disk3, and an open handle on it.
    assert_eq!(stat_size(&mnt.join("disk3")), 4 << 20);
    let held = File::open(mnt.join("disk3")).unwrap();
    let kept = File::open(mnt.join("disk1")).unwrap();

    run_ok(
        "sgdisk",
        &[
            "-d",
            "3",
            "-n",
            "4:0:+2M",
            "-n",
            "5:0:+3M",
            s(&mnt.join("disk")),
        ],
    );

    assert_eq!(listing(&mnt), ["disk", "disk1", "disk2", "disk4", "disk5"]);
    let parts = sfdisk_parts(&mnt.join("disk"));
    for p in &parts {
        assert_eq!(
            stat_size(&mnt.join(format!("disk{}", p.number))),
            p.size,
            "disk{}",
            p.number
        );
    }
    assert_eq!(stat_size(&mnt.join("disk4")), 2 << 20);
    assert_eq!(stat_size(&mnt.join("disk5")), 3 << 20);
    let gone = std::fs::metadata(mnt.join("disk3")).unwrap_err();
    assert_eq!(gone.raw_os_error(), Some(libc::ENOENT));
    let mut buf = [0u8; 512];
    let revoked = held.read_at(&mut buf, 0).unwrap_err();
    assert_eq!(
        revoked.raw_os_error(),
        Some(libc::EIO),
        "a handle on the deleted partition must fail"
    );
    kept.read_at(&mut buf, 0)
        .expect("a handle on an unchanged partition keeps working");
    drop((held, kept));

    // sfdisk relabels the disk as MBR: the GPT partitions give way to the new ones.
    sh(&format!(
        "printf 'label: dos\\nsize=10MiB, type=83\\nsize=5MiB, type=c\\n' | sfdisk -q --wipe always {}",
        s(&mnt.join("disk"))
    ));
    assert_eq!(listing(&mnt), ["disk", "disk1", "disk2"]);
    assert_eq!(stat_size(&mnt.join("disk1")), 10 << 20);
    assert_eq!(stat_size(&mnt.join("disk2")), 5 << 20);
    m.unmount();
    assert_eq!(
        sfdisk_parts(&image)
            .iter()
            .map(|p| (p.number, p.size))
            .collect::<Vec<_>>(),
        [(1, 10 << 20), (2, 5 << 20)]
    );
}

#[test]
fn read_only_refuses_writes_and_leaves_the_image_alone() {
    if !can_run(&["sfdisk", "dd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = mbr_image(dir.path());
    let before = hash_file(&image);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Mounted::start(PARTX, &["-o", "ro", s(&image), s(&mnt)], &mnt);
    for name in ["disk", "disk1", "disk5"] {
        let err = OpenOptions::new()
            .write(true)
            .open(mnt.join(name))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{name}: {err}");
    }
    let out = run(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={}", s(&mnt.join("disk1"))),
            "bs=4096",
            "count=1",
            "conv=notrunc",
            "status=none",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Reading still works.
    let mut buf = [0u8; 16];
    File::open(mnt.join("disk1"))
        .unwrap()
        .read_exact_at(&mut buf, 0)
        .unwrap();
    m.unmount();
    assert_eq!(hash_file(&image), before, "the image changed");
}

#[test]
fn ramdisk_takes_mkfs_ext4_and_vfat() {
    if !can_run(&["mkfs.ext4", "e2fsck", "mkfs.vfat", "fsck.fat"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ram");
    File::create(&file).unwrap();
    let m = Mounted::start(RAMDISK, &["-o", "size=64M", s(&file)], &file);
    assert_eq!(stat_size(&file), 64 << 20);
    run_ok("mkfs.ext4", &["-F", "-q", s(&file)]);
    let fsck = run("e2fsck", &["-fn", s(&file)]);
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}\n{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    run_ok("mkfs.vfat", &["-n", "RAMDISK", s(&file)]);
    let fsck = run_ok("fsck.fat", &["-n", s(&file)]);
    assert!(
        fsck.contains("1 files, 0/"),
        "only the volume label: {fsck}"
    );
    m.unmount();
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        0,
        "the file under the mount is untouched"
    );
}

#[test]
fn ramdisk_size_follows_the_option() {
    if !can_run(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (option, bytes) in [(None, 32u64 << 20), (Some("size=1000"), 1000 * 512)] {
        let file = dir.path().join("ram");
        File::create(&file).unwrap();
        let mut args = Vec::new();
        if let Some(o) = option {
            args.extend(["-o", o]);
        }
        args.push(s(&file));
        let m = Mounted::start(RAMDISK, &args, &file);
        assert_eq!(stat_size(&file), bytes, "{option:?}");
        m.unmount();
    }
}

/// Pids of processes whose command line mentions `needle` (zombies have none).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn default_mode_daemonizes_once_the_mount_is_live() {
    if !can_run(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ram-daemon");
    File::create(&file).unwrap();
    // output() returns only when the daemon let go of stdout and stderr too.
    let out = run(RAMDISK, &["-o", "size=4M", s(&file)]);
    let guard = Mounted {
        mountpoint: file.clone(),
        child: None,
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&file), "mounted when the starting process exits");
    assert_eq!(stat_size(&file), 4 << 20, "the daemon serves");
    let daemons = processes_mentioning(s(&file));
    assert_eq!(daemons.len(), 1, "one daemon: {daemons:?}");
    testkit::unmount(&file);
    wait_until("the daemon to exit after fusermount3 -u", || {
        processes_mentioning(s(&file)).is_empty()
    });
    assert!(!is_mounted(&file));
    drop(guard);
}

#[test]
fn sigterm_unmounts_cleanly() {
    if !can_run(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = patterned_image(dir.path(), "plain.img", 4);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let m = Mounted::start(PARTX, &[s(&image), s(&mnt)], &mnt);
        assert_eq!(listing(&mnt), ["disk"], "no table: the whole disk only");
        let pid = rustix::process::Pid::from_raw(m.pid()).unwrap();
        rustix::process::kill_process(
            pid,
            rustix::process::Signal::from_named_raw(signal).unwrap(),
        )
        .unwrap();
        let (status, stderr) = m.wait_exit();
        assert!(
            status.success(),
            "signal {signal}: exit {status}:\n{stderr}"
        );
        assert!(!is_mounted(&mnt), "signal {signal}: still mounted");
    }

    // Busy: the mount leaves the namespace at once, open files are served
    // until closed, then the daemon exits cleanly.
    let mut m = Mounted::start(PARTX, &[s(&image), s(&mnt)], &mnt);
    let open = File::open(mnt.join("disk")).unwrap();
    let pid = rustix::process::Pid::from_raw(m.pid()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    wait_until("the busy mount to be detached", || !is_mounted(&mnt));
    let mut buf = [0u8; 512];
    open.read_exact_at(&mut buf, 512).unwrap();
    assert!(
        buf == read_range(&image, 512, 512)[..],
        "served after detach"
    );
    assert!(
        m.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the daemon waits for the open file"
    );
    drop(open);
    let (status, stderr) = m.wait_exit();
    assert!(status.success(), "exit {status}:\n{stderr}");
}

fn failed_start(binary: &str, args: &[&str]) -> (i32, String) {
    let out = run(binary, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "{binary} {args:?} panicked:\n{stderr}"
    );
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn bad_input_gets_a_message_and_an_exit_code() {
    if !can_run(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = patterned_image(dir.path(), "plain.img", 1);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let missing = dir.path().join("missing.img");

    let (code, err) = failed_start(PARTX, &["-o", "frobnicate", s(&image), s(&mnt)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("frobnicate"), "{err}");
    let (code, err) = failed_start(RAMDISK, &["-o", "size=12Q", s(&image)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("size=12Q"), "{err}");
    let (code, err) = failed_start(PARTX, &[s(&image)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("MOUNTPOINT"), "{err}");
    let (code, err) = failed_start(PARTX, &[]);
    assert_eq!(code, 2, "{err}");
    // Missing image: reported by the daemon before it detaches, in both modes.
    for mode in [&["-f"][..], &[][..]] {
        let mut args = mode.to_vec();
        args.extend([s(&missing), s(&mnt)]);
        let (code, err) = failed_start(PARTX, &args);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("missing.img") && err.contains("No such file"),
            "{err}"
        );
        assert!(!is_mounted(&mnt));
    }
    let (code, err) = failed_start(PARTX, &[s(&image), s(&image)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a directory"), "{err}");
    let (code, err) = failed_start(RAMDISK, &[s(&mnt)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    // Busy: already a mount point.
    let m = Mounted::start(PARTX, &[s(&image), s(&mnt)], &mnt);
    let (code, err) = failed_start(PARTX, &["-f", s(&image), s(&mnt)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("busy"), "{err}");
    m.unmount();
    // Help says how to get a writable filesystem.
    let out = run(RAMDISK, &["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("size="));
}

#[test]
fn mount_helper_argument_order_works() {
    // mount(8) runs mount.fuse3, which runs `PROGRAM SOURCE MOUNTPOINT -o OPTIONS`
    // (options after the paths); the old "PROGRAM#SOURCE" form names the binary by path.
    if !can_run(&["mount", "umount", "mount.fuse3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = mbr_image(dir.path());
    let before = hash_file(&image);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let guard = Mounted {
        mountpoint: mnt.clone(),
        child: None,
    };
    run_ok(
        "mount",
        &[
            "-t",
            "fuse",
            &format!("{PARTX}#{}", s(&image)),
            s(&mnt),
            "-o",
            "ro,nosuid",
        ],
    );
    assert!(is_mounted(&mnt));
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(s(&std::fs::canonicalize(&mnt).unwrap())))
        .unwrap();
    assert!(line.contains(" ro,nosuid"), "{line}");
    assert!(line.contains("fuse.vudevpartx"), "{line}");
    assert_eq!(
        listing(&mnt),
        ["disk", "disk1", "disk2", "disk3", "disk5", "disk6"]
    );
    let err = OpenOptions::new()
        .write(true)
        .open(mnt.join("disk1"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    testkit::unmount(&mnt);
    wait_until("the daemon to exit after umount", || {
        processes_mentioning(s(&image)).is_empty()
    });
    assert_eq!(hash_file(&image), before);
    drop(guard);
}

#[test]
fn debug_mode_prints_requests_and_results() {
    if !can_run(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ram");
    File::create(&file).unwrap();
    let m = Mounted::start(RAMDISK, &["-d", "-o", "size=1M", s(&file)], &file);
    let mut buf = [0u8; 4096];
    File::open(&file)
        .unwrap()
        .read_exact_at(&mut buf, 8192)
        .unwrap();
    testkit::unmount(&file);
    let (status, stderr) = m.wait_exit();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("init -> ok pid="), "{stderr}");
    assert!(stderr.contains("open(1, "), "{stderr}");
    assert!(stderr.contains("read(1, fh "), "{stderr}");
    assert!(stderr.contains("-> ok 4096 bytes"), "{stderr}");
    assert!(stderr.contains("destroy"), "{stderr}");
}

/// A qcow2 disk (and a VDI) served by vudevpartx: partitioned and formatted through `disk`
/// and `disk1`, the image then passes `qemu-img check` and its raw conversion holds the
/// table and a clean FAT; `format=raw` shows the image file itself.
#[test]
fn vm_images_are_disks_partitioned_and_formatted_through_the_mount() {
    if !can_run(&["qemu-img", "sfdisk", "mkfs.vfat", "fsck.fat"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    for format in ["qcow2", "vdi"] {
        let image = dir.path().join(format!("disk.{format}"));
        run_ok(
            "qemu-img",
            &["create", "-q", "-f", format, s(&image), "64M"],
        );
        let m = Mounted::start(PARTX, &[s(&image), s(&mnt)], &mnt);
        assert_eq!(std::fs::metadata(mnt.join("disk")).unwrap().len(), 64 << 20);
        sh(&format!(
            "echo 'start=2048, type=c' | sfdisk -q '{}'",
            mnt.join("disk").display()
        ));
        wait_until("disk1 to appear", || mnt.join("disk1").exists());
        run_ok("mkfs.vfat", &["-n", "INVM", s(&mnt.join("disk1"))]);
        m.unmount();
        run_ok("qemu-img", &["check", "-q", s(&image)]);
        let raw = dir.path().join("back.raw");
        run_ok("qemu-img", &["convert", "-O", "raw", s(&image), s(&raw)]);
        let parts = sfdisk_parts(&raw);
        assert_eq!(parts.len(), 1, "{format}: {parts:?}");
        let p1 = dir.path().join("p1.raw");
        run_ok(
            "dd",
            &[
                &format!("if={}", s(&raw)),
                &format!("of={}", s(&p1)),
                "bs=512",
                &format!("skip={}", parts[0].start / 512),
                &format!("count={}", parts[0].size / 512),
                "status=none",
            ],
        );
        run_ok("fsck.fat", &["-n", s(&p1)]);
        let m = Mounted::start(PARTX, &["-o", "ro,format=raw", s(&image), s(&mnt)], &mnt);
        let shown = std::fs::metadata(mnt.join("disk")).unwrap().len();
        assert_eq!(
            shown,
            std::fs::metadata(&image).unwrap().len(),
            "format=raw"
        );
        m.unmount();
    }
}
