//! NBD exports wherever IMAGE is: `fusefatfs` and `fuseext2` mount `nbd+unix:///?socket=`
//! URIs served by nbdkit (the peer), and what they write reaches the exported file.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testkit::{sh, MountGuard};

const FUSEFATFS: &str = env!("CARGO_BIN_EXE_fusefatfs");
const FUSEEXT2: &str = env!("CARGO_BIN_EXE_fuseext2");

/// nbdkit serving `image` on a Unix socket; killed when dropped.
struct Nbdkit {
    child: Child,
}

impl Nbdkit {
    fn serve(image: &Path, socket: &Path) -> Option<Nbdkit> {
        let child = Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(socket)
            .args(["file"])
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        testkit::wait_until("nbdkit's socket", Duration::from_secs(20), || {
            socket.exists()
        });
        Some(Nbdkit { child })
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mount(bin: &str, uri: &str, dir: &Path, options: &str) -> MountGuard {
    std::fs::create_dir_all(dir).unwrap();
    testkit::mount_daemon(bin, &[options], Path::new(uri), dir)
}

#[test]
fn fat_and_ext_mount_nbd_exports_served_by_nbdkit() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return testkit::skip(&format!("cannot open /dev/fuse: {e}"));
    }
    if Command::new("nbdkit").arg("--version").output().is_err() {
        return testkit::skip("nbdkit is not installed (.ci/packages lists it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    for (bin, mkfs, check) in [
        (FUSEFATFS, "mkfs.fat", "fsck.fat -n"),
        (FUSEEXT2, "mke2fs -q -F -t ext4", "e2fsck -fn"),
    ] {
        let img = dir.path().join("exported.img");
        let _ = std::fs::remove_file(&img);
        sh(&format!(
            "truncate -s 32M '{0}' && {mkfs} '{0}' >/dev/null",
            img.display()
        ));
        let socket = dir.path().join("nbd.sock");
        let _ = std::fs::remove_file(&socket);
        let server = Nbdkit::serve(&img, &socket).expect("nbdkit starts");
        let uri = format!("nbd+unix:///?socket={}", socket.display());
        let options = if bin == FUSEFATFS { "rw+" } else { "rw" };
        let m = mount(bin, &uri, &mnt, options);
        std::fs::write(mnt.join("over-nbd.txt"), "through the network\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(mnt.join("over-nbd.txt")).unwrap(),
            "through the network\n"
        );
        m.unmount();
        drop(server);
        sh(&format!("{check} '{}' >/dev/null", img.display()));
        let inside = if bin == FUSEFATFS {
            sh(&format!(
                "MTOOLS_SKIP_CHECK=1 mtype -i '{}' ::/over-nbd.txt",
                img.display()
            ))
        } else {
            sh(&format!(
                "debugfs -R 'cat /over-nbd.txt' '{}' 2>/dev/null",
                img.display()
            ))
        };
        assert_eq!(inside, "through the network\n");
    }
    // A server that is not there: a clear error, no hang.
    std::fs::create_dir_all(&mnt).unwrap();
    let out = testkit::run_daemon(
        FUSEFATFS,
        &["ro"],
        Path::new("nbd+unix:///?socket=/nonexistent/nbd.sock"),
        &mnt,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nbd+unix:///?socket=/nonexistent/nbd.sock"),
        "{err}"
    );
}
