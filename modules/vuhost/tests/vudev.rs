//! vudevramdisk.so and vudevpartx.so driven through vudev's C ABI: layout, probe codes
//! checked against the kernel headers (compiled with gcc), units, errno conventions,
//! partition numbering, and real filesystems written through the module and checked outside
//! with e2fsck, fsck.fat, sfdisk and sgdisk.

#![allow(unsafe_code)] // reads the modules' exported tables through raw pointers, as umvu does

use std::collections::BTreeMap;
use std::ffi::c_ulong;
use std::path::Path;
use vuhost::*;

const MIB: u64 = 1 << 20;

/// Tests that hold large buffers take this lock, so the 64 GiB ramdisk test measures its own
/// memory growth, not theirs (tests of one binary run as threads of one process).
static MEMORY_HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn memory_heavy() -> std::sync::MutexGuard<'static, ()> {
    MEMORY_HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_all(fd: &mut DevFd, data: &[u8], mut off: i64) {
    let mut done = 0;
    while done < data.len() {
        let n = fd.pwrite(&data[done..], off).expect("pwrite");
        assert!(n > 0);
        done += n;
        off += n as i64;
    }
}

fn read_exact(fd: &mut DevFd, len: usize, mut off: i64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = fd.pread(&mut out[done..], off).expect("pread");
        assert!(n > 0, "early EOF at {off}");
        done += n;
        off += n as i64;
    }
    out
}

/// The Linux request numbers and the fake probe codes expected for them, from the real
/// headers: `name request probe`.
fn kernel_codes(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    let src = dir.join("codes.c");
    std::fs::write(
        &src,
        r#"
#include <stdio.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <linux/hdreg.h>
#include <linux/blkzoned.h>
#include <linux/fd.h>
#define P(name, probe) printf("%s %lu %lu\n", #name, (unsigned long)(name), (unsigned long)(probe))
int main(void) {
  P(BLKGETSIZE64, _IOW(' ', 0, uint64_t));
  P(BLKGETSIZE, _IOW(' ', 0, unsigned long));
  P(BLKSSZGET, _IOW(' ', 0, int));
  P(BLKPBSZGET, _IOW(' ', 0, unsigned int));
  P(BLKIOMIN, _IOW(' ', 0, unsigned int));
  P(BLKIOOPT, _IOW(' ', 0, unsigned int));
  P(BLKALIGNOFF, _IOW(' ', 0, int));
  P(BLKDISCARDZEROES, _IOW(' ', 0, unsigned int));
  P(BLKGETZONESZ, _IOW(' ', 0, uint32_t));
  P(BLKROGET, _IOW(' ', 0, int));
  P(BLKROSET, _IOR(' ', 0, int));
  P(BLKRRPART, _IO(' ', 0));
  P(BLKFLSBUF, _IO(' ', 0));
  P(HDIO_GETGEO, _IOW(' ', 0, struct hd_geometry));
  P(BLKDISCARD, _IOR(' ', 0, uint64_t[2]));
  P(BLKZEROOUT, _IOR(' ', 0, uint64_t[2]));
  P(FDGETFDCSTAT, _IO(' ', 0));
  printf("sizeof_hd_geometry %zu %zu\n", sizeof(struct hd_geometry), __builtin_offsetof(struct hd_geometry, start));
  return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.join("codes");
    sh(&format!("gcc -o {} {}", exe.display(), src.display()));
    sh(&exe.display().to_string())
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_string(),
                (f[1].parse().unwrap(), f[2].parse().unwrap()),
            )
        })
        .collect()
}

#[test]
fn module_imports_are_all_provided_by_the_host() {
    let provided: Vec<&str> = host_symbols().iter().map(|(n, _)| *n).collect();
    for lib in ["vudevramdisk", "vudevpartx", "vufs"] {
        let path = module_path(lib);
        let imports = undefined_imports(&path);
        assert!(!imports.is_empty(), "{lib}: expected host imports");
        for name in &imports {
            assert!(
                provided.contains(&name.as_str()),
                "{lib}.so imports {name}, which neither umvu/vudev nor this host provides"
            );
        }
        // RTLD_NOW: every import resolves against the host now.
        Module::load(&path).unwrap_or_else(|e| panic!("{lib}: {e}"));
    }
    let vudev_imports = undefined_imports(&module_path("vudevpartx"));
    assert_eq!(
        vudev_imports,
        ["vudev_get_private_data", "vudev_set_devtype"],
        "a vudev submodule imports exactly vudev.so's two helpers"
    );
}

#[test]
fn exported_tables_have_the_c_layout() {
    for lib in ["vudevramdisk", "vudevpartx"] {
        let path = module_path(lib);
        assert_eq!(
            symbol_size(&path, "vudev_ops"),
            Some(96),
            "{lib}: 12 pointers"
        );
        let module = Module::load(&path).unwrap();
        let ops = module.symbol("vudev_ops").unwrap() as *const [usize; 12];
        // SAFETY: the symbol is 96 bytes (checked above).
        let table = unsafe { *ops };
        // confirm_subdev open close read write pread pwrite lseek ioctl epoll_ctl init fini
        let present: Vec<bool> = table.iter().map(|p| *p != 0).collect();
        assert_eq!(
            present,
            [true, true, true, false, false, true, true, true, true, false, true, true],
            "{lib}: block devices have pread/pwrite, no read/write/epoll_ctl"
        );
        for p in table.iter().filter(|p| **p != 0) {
            // SAFETY: dladdr only inspects the address.
            let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
            assert_ne!(unsafe { libc::dladdr(*p as *const _, &mut info) }, 0);
            // SAFETY: dladdr filled a C string.
            let file = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
            assert!(file.to_string_lossy().ends_with(&format!("lib{lib}.so")));
        }
    }
    let vufs = module_path("vufs");
    assert_eq!(symbol_size(&vufs, "vu_module"), Some(32));
    let module = Module::load(&vufs).unwrap();
    let m = module.symbol("vu_module").unwrap() as *const (usize, usize, u64, u64);
    // SAFETY: 32 bytes: name, description, flags, filler.
    let (name, desc, flags, filler) = unsafe { *m };
    // SAFETY: static C strings of the module.
    let name = unsafe { std::ffi::CStr::from_ptr(name as *const _) };
    assert_eq!(name.to_str().unwrap(), "vufs");
    assert_ne!(desc, 0);
    assert_eq!(flags, 1, "VU_USE_PRW");
    assert_eq!(filler, 0);
    for call in [
        "init",
        "fini",
        "mount",
        "umount2",
        "cleanup",
        "lstat",
        "readlink",
        "open",
        "close",
        "pread64",
        "pwrite64",
        "getdents64",
        "lseek",
        "unlink",
        "mkdir",
        "rmdir",
        "mknod",
        "truncate",
        "chmod",
        "lchown",
        "utimensat",
        "link",
        "symlink",
        "rename",
        "statfs",
        "lgetxattr",
        "lsetxattr",
        "llistxattr",
        "lremovexattr",
        "fcntl",
    ] {
        assert!(
            module.symbol(&format!("vu_vufs_{call}")).is_some(),
            "vu_vufs_{call}"
        );
    }
}

#[test]
fn ioctl_probe_codes_and_values_match_the_kernel_headers() {
    let dir = tempfile::tempdir().unwrap();
    let codes = kernel_codes(dir.path());
    assert_eq!(codes["sizeof_hd_geometry"], (16, 8));
    let mut m = VudevMount::mount("vudevramdisk", "none", 0, "size=10M").unwrap();
    assert_eq!(m.vudev.devtype, libc::S_IFBLK, "init sets S_IFBLK");
    let mut fd = m.open(0, libc::O_RDWR).unwrap();
    for (name, (request, probe)) in &codes {
        if name.starts_with("sizeof") {
            continue;
        }
        assert_eq!(
            fd.probe(*request as c_ulong),
            *probe,
            "{name}: probe code (size and direction umvu copies)"
        );
    }
    let req = |n: &str| codes[n].0 as c_ulong;
    assert_eq!(fd.ioctl_get::<u64>(req("BLKGETSIZE64")), Ok(10 * MIB));
    assert_eq!(
        fd.ioctl_get::<c_ulong>(req("BLKGETSIZE")),
        Ok(20480),
        "BLKGETSIZE counts 512-byte sectors in an unsigned long"
    );
    assert_eq!(fd.ioctl_get::<i32>(req("BLKSSZGET")), Ok(512));
    assert_eq!(fd.ioctl_get::<u32>(req("BLKPBSZGET")), Ok(512));
    assert_eq!(fd.ioctl_get::<i32>(req("BLKROGET")), Ok(0));
    assert_eq!(fd.ioctl_get::<i32>(req("BLKALIGNOFF")), Ok(0));
    assert_eq!(fd.ioctl_get::<u32>(req("BLKGETZONESZ")), Ok(0));
    assert_eq!(fd.ioctl_get::<u32>(req("BLKDISCARDZEROES")), Ok(1));
    let geo = fd.ioctl_get::<[u8; 16]>(req("HDIO_GETGEO")).unwrap();
    assert_eq!(
        (geo[0], geo[1], u16::from_ne_bytes([geo[2], geo[3]])),
        (16, 16, 80)
    );
    assert_eq!(u64::from_ne_bytes(geo[8..16].try_into().unwrap()), 0);
    assert_eq!(
        fd.ioctl(req("FDGETFDCSTAT"), &mut []),
        Err(libc::EINVAL),
        "unknown requests: no copy, then EINVAL"
    );
    assert_eq!(
        fd.ioctl(req("BLKRRPART"), &mut []),
        Err(libc::EINVAL),
        "a ramdisk has no partition table to re-read"
    );
    // BLKROSET reads an int from the caller; then writes fail with EROFS.
    fd.ioctl(req("BLKROSET"), &mut 1i32.to_ne_bytes()).unwrap();
    assert_eq!(fd.ioctl_get::<i32>(req("BLKROGET")), Ok(1));
    assert_eq!(fd.pwrite(b"x", 0), Err(libc::EROFS));
    fd.ioctl(req("BLKROSET"), &mut 0i32.to_ne_bytes()).unwrap();
    assert_eq!(fd.pwrite(b"x", 0), Ok(1));
    fd.close().unwrap();
    assert_eq!(m.unmount(), 0);
}

#[test]
fn ramdisk_options_end_of_device_and_errno() {
    let size = |data: &str| -> Result<u64, i32> {
        let mut m = VudevMount::mount("vudevramdisk", "none", 0, data)?;
        let mut fd = m.open(0, libc::O_RDONLY).unwrap();
        let s = fd.ioctl_get::<u64>(vuglue_req::BLKGETSIZE64).unwrap();
        assert_eq!(fd.lseek(0, libc::SEEK_END), Ok(s as i64));
        fd.close().unwrap();
        m.unmount();
        Ok(s)
    };
    assert_eq!(size(""), Ok(32 * MIB), "default 32 MiB");
    assert_eq!(
        size("size=1000"),
        Ok(524_288),
        "bare N = sectors, rounded to 256 sectors"
    );
    assert_eq!(
        size("size=64k"),
        Ok(128 * 1024),
        "rounded up to a whole cylinder"
    );
    assert_eq!(
        size("size=1G,mode=0644,uid=1000,gid=100,major=7,minor=5,blk"),
        Ok(1 << 30)
    );
    assert_eq!(size("size=12Q"), Err(libc::EINVAL));
    assert_eq!(size("size="), Err(libc::EINVAL));
    assert_eq!(size("bogus=1"), Err(libc::EINVAL));

    let mut m = VudevMount::mount("vudevramdisk", "none", 0, "size=1M").unwrap();
    assert!(m.confirm(0));
    assert!(!m.confirm(1), "a ramdisk has no subdevices");
    assert_eq!(m.open(1, libc::O_RDONLY).err(), Some(libc::ENXIO));
    let mut fd = m.open(0, libc::O_RDWR).unwrap();
    let end = MIB as i64;
    let mut buf = [7u8; 16];
    assert_eq!(fd.pread(&mut buf, end), Ok(0), "read at the end: EOF");
    assert_eq!(
        fd.pread(&mut buf, end - 4),
        Ok(4),
        "read straddling the end"
    );
    assert_eq!(fd.pwrite(&buf, end), Err(libc::ENOSPC), "write at the end");
    assert_eq!(fd.pwrite(&buf, end - 4), Ok(4), "write straddling the end");
    assert_eq!(fd.pread(&mut buf, -1), Err(libc::EINVAL));
    assert_eq!(fd.lseek(-1, libc::SEEK_SET), Err(libc::EINVAL));
    assert_eq!(fd.lseek(0, 99), Err(libc::EINVAL));
    fd.close().unwrap();
    let mut ro = m.open(0, libc::O_RDONLY).unwrap();
    assert_eq!(
        ro.pwrite(b"x", 0),
        Err(libc::EBADF),
        "write on an O_RDONLY fd"
    );
    ro.close().unwrap();
    let mut wo = m.open(0, libc::O_WRONLY).unwrap();
    assert_eq!(
        wo.pread(&mut buf, 0),
        Err(libc::EBADF),
        "read on an O_WRONLY fd"
    );
    wo.close().unwrap();
    m.unmount();

    let mut m = VudevMount::mount("vudevramdisk", "none", libc::MS_RDONLY, "size=1M").unwrap();
    assert_eq!(m.open(0, libc::O_RDWR).err(), Some(libc::EROFS));
    let mut fd = m.open(0, libc::O_RDONLY).unwrap();
    assert_eq!(fd.ioctl_get::<i32>(vuglue_req::BLKROGET), Ok(1));
    assert_eq!(
        fd.ioctl(vuglue_req::BLKROSET, &mut 0i32.to_ne_bytes()),
        Err(libc::EACCES),
        "a read-only mount cannot be made writable"
    );
    fd.close().unwrap();
    m.unmount();
}

/// Request numbers used directly (checked against the headers in the probe test).
mod vuglue_req {
    pub const BLKGETSIZE64: std::ffi::c_ulong = 0x8008_1272;
    pub const BLKGETSIZE: std::ffi::c_ulong = 0x1260;
    pub const BLKROGET: std::ffi::c_ulong = 0x125e;
    pub const BLKROSET: std::ffi::c_ulong = 0x125d;
    pub const BLKRRPART: std::ffi::c_ulong = 0x125f;
    pub const BLKDISCARD: std::ffi::c_ulong = 0x1277;
    pub const BLKZEROOUT: std::ffi::c_ulong = 0x127f;
    pub const HDIO_GETGEO: std::ffi::c_ulong = 0x0301;
}

#[test]
fn ramdisk_carries_an_ext4_filesystem_written_and_read_through_the_module() {
    let _heavy = memory_heavy();
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made.img");
    let back = dir.path().join("back.img");
    sh(&format!(
        "truncate -s 16M {0} && mkfs.ext4 -q -F -E root_owner=0:0 {0} && \
         debugfs -w -R 'write /etc/os-release os-release' {0}",
        made.display()
    ));
    let image = std::fs::read(&made).unwrap();
    let mut m = VudevMount::mount("vudevramdisk", "none", 0, "size=16M").unwrap();
    let mut fd = m.open(0, libc::O_RDWR).unwrap();
    for (i, chunk) in image.chunks(1 << 20).enumerate() {
        write_all(&mut fd, chunk, (i << 20) as i64);
    }
    fd.close().unwrap();
    let mut fd = m.open(0, libc::O_RDONLY).unwrap();
    let read = read_exact(&mut fd, image.len(), 0);
    assert!(read == image, "bytes read back differ from those written");
    std::fs::write(&back, &read).unwrap();
    sh(&format!("e2fsck -fn {}", back.display()));
    let listing = sh(&format!(
        "debugfs -R 'cat os-release' {} 2>/dev/null",
        back.display()
    ));
    assert_eq!(
        listing.as_bytes(),
        std::fs::read("/etc/os-release").unwrap()
    );
    fd.close().unwrap();
    m.unmount();
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_64g_ramdisk_with_little_written_stays_small_and_discard_zeroes() {
    let _heavy = memory_heavy();
    let before = vm_rss_kib();
    let mut m = VudevMount::mount("vudevramdisk", "none", 0, "size=64G").unwrap();
    let mut fd = m.open(0, libc::O_RDWR).unwrap();
    assert_eq!(fd.ioctl_get::<u64>(vuglue_req::BLKGETSIZE64), Ok(64 << 30));
    assert_eq!(
        fd.ioctl_get::<c_ulong>(vuglue_req::BLKGETSIZE),
        Ok(64 << 21)
    );
    let geo = fd.ioctl_get::<[u8; 16]>(vuglue_req::HDIO_GETGEO).unwrap();
    assert_eq!(
        u16::from_ne_bytes([geo[2], geo[3]]),
        u16::MAX,
        "cylinders saturate instead of wrapping"
    );
    let data = vec![0x5au8; 4 << 20];
    for gib in [0u64, 13, 63] {
        write_all(&mut fd, &data, (gib << 30) as i64);
    }
    let grown = vm_rss_kib().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "RSS grew by {grown} KiB for 12 MiB written"
    );
    // Discard 1 MiB inside the written range at 13 GiB: zeros after.
    let mut range = [0u8; 16];
    range[..8].copy_from_slice(&((13u64 << 30) + (1 << 20)).to_ne_bytes());
    range[8..].copy_from_slice(&(1u64 << 20).to_ne_bytes());
    fd.ioctl(vuglue_req::BLKDISCARD, &mut range).unwrap();
    let r = read_exact(&mut fd, 3 << 20, 13 << 30);
    assert!(r[..1 << 20].iter().all(|&b| b == 0x5a));
    assert!(
        r[1 << 20..2 << 20].iter().all(|&b| b == 0),
        "discarded range reads zeros"
    );
    assert!(r[2 << 20..].iter().all(|&b| b == 0x5a));
    // BLKZEROOUT likewise; unaligned or out-of-range requests are EINVAL.
    range[..8].copy_from_slice(&(512u64).to_ne_bytes());
    range[8..].copy_from_slice(&(1024u64).to_ne_bytes());
    fd.ioctl(vuglue_req::BLKZEROOUT, &mut range).unwrap();
    assert!(read_exact(&mut fd, 1024, 512).iter().all(|&b| b == 0));
    range[..8].copy_from_slice(&(100u64).to_ne_bytes());
    assert_eq!(
        fd.ioctl(vuglue_req::BLKDISCARD, &mut range),
        Err(libc::EINVAL)
    );
    range[..8].copy_from_slice(&(64u64 << 30).to_ne_bytes());
    assert_eq!(
        fd.ioctl(vuglue_req::BLKDISCARD, &mut range),
        Err(libc::EINVAL)
    );
    fd.close().unwrap();
    m.unmount();
}

/// `sfdisk --json` partitions: (number, start sector, sectors).
fn sfdisk_parts(image: &Path) -> Vec<(u32, u64, u64)> {
    let json: serde_json::Value =
        serde_json::from_str(&sh(&format!("sfdisk --json {}", image.display()))).unwrap();
    json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let digits: String = node
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            let number: u32 = digits.chars().rev().collect::<String>().parse().unwrap();
            (
                number,
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn partx_mbr_numbering_units_and_filesystems_through_the_module() {
    let _heavy = memory_heavy();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    sh(&format!(
        "truncate -s 256M {0} && printf 'label: dos\\n,100M,83\\n,50M,c\\n,,5\\n,40M,83\\n,,83\\n' \
         | sfdisk -q {0}",
        img.display()
    ));
    let parts = sfdisk_parts(&img);
    let numbers: Vec<u32> = parts.iter().map(|p| p.0).collect();
    assert_eq!(numbers, [1, 2, 3, 5, 6]);

    let mut m = VudevMount::mount("vudevpartx", img.to_str().unwrap(), 0, "").unwrap();
    assert_eq!(m.vudev.devtype, libc::S_IFBLK);
    for n in 0..10 {
        assert_eq!(
            m.confirm(n),
            n == 0 || numbers.contains(&n),
            "confirm_subdev({n}): Linux numbering (slot 4 empty, logicals 5 and 6)"
        );
    }
    assert_eq!(m.open(4, libc::O_RDONLY).err(), Some(libc::ENXIO));
    for &(n, start, sectors) in &parts {
        let mut fd = m.open(n, libc::O_RDONLY).unwrap();
        let expected = if n == 3 { 2 } else { sectors }; // Linux shows an extended partition as 1 KiB
        let bytes = fd.ioctl_get::<u64>(vuglue_req::BLKGETSIZE64).unwrap();
        if n != 3 {
            assert_eq!(bytes, expected * 512, "hda{n} BLKGETSIZE64");
            assert_eq!(
                fd.ioctl_get::<c_ulong>(vuglue_req::BLKGETSIZE),
                Ok(expected as c_ulong),
                "hda{n} BLKGETSIZE in sectors"
            );
        }
        let geo = fd.ioctl_get::<[u8; 16]>(vuglue_req::HDIO_GETGEO).unwrap();
        assert_eq!((geo[0], geo[1]), (255, 63));
        assert_eq!(
            u64::from_ne_bytes(geo[8..16].try_into().unwrap()),
            start,
            "hda{n} HDIO_GETGEO.start in sectors"
        );
        fd.close().unwrap();
    }
    let mut whole = m.open(0, libc::O_RDONLY).unwrap();
    assert_eq!(
        whole.ioctl_get::<u64>(vuglue_req::BLKGETSIZE64),
        Ok(256 * MIB)
    );
    whole.close().unwrap();

    // A FAT volume on hda2 and an ext4 one on hda5, written through the module.
    let (_, s2, n2) = parts[1];
    let (_, s5, n5) = parts[3];
    let fat = dir.path().join("fat.img");
    let ext = dir.path().join("ext.img");
    sh(&format!(
        "truncate -s {} {f} && mkfs.vfat {f} >/dev/null && echo hello > {d}/hello.txt && \
         mcopy -i {f} {d}/hello.txt ::/ && truncate -s {} {e} && mkfs.ext4 -q -F {e}",
        n2 * 512,
        n5 * 512,
        f = fat.display(),
        e = ext.display(),
        d = dir.path().display()
    ));
    for (n, file) in [(2u32, &fat), (5, &ext)] {
        let data = std::fs::read(file).unwrap();
        let mut fd = m.open(n, libc::O_RDWR).unwrap();
        for (i, chunk) in data.chunks(1 << 20).enumerate() {
            write_all(&mut fd, chunk, (i << 20) as i64);
        }
        let end = data.len() as i64;
        assert_eq!(
            fd.pwrite(b"x", end),
            Err(libc::ENOSPC),
            "hda{n}: past its end"
        );
        let mut b = [0u8; 8];
        assert_eq!(fd.pread(&mut b, end), Ok(0), "hda{n}: EOF at its end");
        assert!(
            read_exact(&mut fd, data.len(), 0) == data,
            "hda{n} reads back"
        );
        fd.close().unwrap();
    }
    m.unmount();
    // Outside: the table is intact and both filesystems are clean at their offsets.
    assert_eq!(sfdisk_parts(&img), parts);
    let i = img.display();
    sh(&format!(
        "dd if={i} of={f}.out bs=512 skip={s2} count={n2} status=none && fsck.fat -n {f}.out && \
         mtype -i {i}@@{o2} ::/hello.txt | grep -q hello && \
         dd if={i} of={e}.out bs=512 skip={s5} count={n5} status=none && e2fsck -fn {e}.out",
        f = fat.display(),
        e = ext.display(),
        o2 = s2 * 512
    ));
}

#[test]
fn partx_gpt_slots_and_blkrrpart_after_sgdisk_rewrote_the_table() {
    let _heavy = memory_heavy();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gpt.img");
    let i = img.display();
    sh(&format!(
        "truncate -s 64M {i} && sgdisk -n 1:2048:+10M -t 1:8300 -n 3:0:+10M -t 3:0700 {i} >/dev/null"
    ));
    let mut m = VudevMount::mount("vudevpartx", img.to_str().unwrap(), 0, "").unwrap();
    assert!(
        m.confirm(1) && !m.confirm(2) && m.confirm(3),
        "GPT keeps slot numbers"
    );
    let mut one = m.open(1, libc::O_RDWR).unwrap();
    let mut three = m.open(3, libc::O_RDWR).unwrap();
    write_all(&mut three, b"partition three", 0);
    let mut whole = m.open(0, libc::O_RDWR).unwrap();
    assert_eq!(
        whole.ioctl_get::<u64>(vuglue_req::BLKGETSIZE64),
        Ok(64 * MIB)
    );

    // Another program rewrites the table: 1 deleted, 2 added.
    sh(&format!(
        "sgdisk -d 1 -n 2:2048:+5M -t 2:8300 {i} >/dev/null"
    ));
    assert!(
        m.confirm(1) && !m.confirm(2),
        "nothing changes before BLKRRPART"
    );
    whole.ioctl(vuglue_req::BLKRRPART, &mut []).unwrap();
    assert!(
        !m.confirm(1) && m.confirm(2) && m.confirm(3),
        "table re-read"
    );
    let mut b = [0u8; 15];
    assert_eq!(
        one.pread(&mut b, 0),
        Err(libc::EIO),
        "the deleted partition's fd is revoked"
    );
    assert_eq!(one.pwrite(&b, 0), Err(libc::EIO));
    assert_eq!(
        three.pread(&mut b, 0),
        Ok(15),
        "an unchanged partition keeps working"
    );
    assert_eq!(&b, b"partition three");
    let mut two = m.open(2, libc::O_RDONLY).unwrap();
    assert_eq!(two.ioctl_get::<u64>(vuglue_req::BLKGETSIZE64), Ok(5 * MIB));
    for fd in [one, two, three, whole] {
        fd.close().unwrap();
    }
    m.unmount();
    sh(&format!("sgdisk -v {i} | grep -q 'No problems found'"));
}

#[test]
fn partx_read_only_mount_and_bad_sources() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    sh(&format!(
        "truncate -s 8M {0} && printf 'label: dos\\n,4M,83\\n' | sfdisk -q {0}",
        img.display()
    ));
    let before = std::fs::read(&img).unwrap();
    let mut m =
        VudevMount::mount("vudevpartx", img.to_str().unwrap(), libc::MS_RDONLY, "").unwrap();
    assert_eq!(m.open(1, libc::O_RDWR).err(), Some(libc::EROFS));
    let mut fd = m.open(1, libc::O_RDONLY).unwrap();
    assert_eq!(fd.ioctl_get::<i32>(vuglue_req::BLKROGET), Ok(1));
    fd.close().unwrap();
    m.unmount();
    assert!(
        std::fs::read(&img).unwrap() == before,
        "a read-only mount never writes"
    );

    let missing = dir.path().join("missing.img");
    let err = VudevMount::mount("vudevpartx", missing.to_str().unwrap(), 0, "").err();
    assert_eq!(err, Some(libc::ENOENT));
    let err = VudevMount::mount("vudevpartx", dir.path().to_str().unwrap(), 0, "").err();
    assert_eq!(err, Some(libc::EISDIR));
    let err = VudevMount::mount("vudevpartx", img.to_str().unwrap(), 0, "size=1M").err();
    assert_eq!(err, Some(libc::EINVAL), "partx takes no data options");
    // A blank image: only the whole disk.
    let blank = dir.path().join("blank.img");
    sh(&format!("truncate -s 1M {}", blank.display()));
    let mut m = VudevMount::mount("vudevpartx", blank.to_str().unwrap(), 0, "").unwrap();
    assert!(m.confirm(0) && !m.confirm(1));
    m.unmount();
}
