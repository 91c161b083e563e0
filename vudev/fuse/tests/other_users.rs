//! Devices shown to other users (`allow_other`) keep the image's rights: as user nobody, the
//! partitions of a root-only image can be neither read nor written.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use testkit::{assert_denied, open_scratch, other_user_unavailable, sh, skip, MountGuard};

const VUDEVPARTX: &str = env!("CARGO_BIN_EXE_vudevpartx");

fn mount(bin: &str, image: &Path, dir: &Path, options: &str) -> MountGuard {
    std::fs::create_dir_all(dir).unwrap();
    testkit::mount_daemon(bin, &[options], image, dir)
}

#[test]
fn vudevpartx_shows_devices_with_the_images_owner_and_mode() {
    if let Some(reason) = other_user_unavailable() {
        return skip(&reason);
    }
    let dir = open_scratch();
    let img = dir.path().join("d.img");
    sh(&format!(
        "truncate -s 8M '{0}' && echo 'start=2048, size=4096, type=83' | sfdisk -q '{0}' && \
         chmod 600 '{0}'",
        img.display()
    ));
    let mnt = dir.path().join("m");
    let m = mount(VUDEVPARTX, &img, &mnt, "allow_other");
    for name in ["disk", "disk1"] {
        let md = std::fs::metadata(mnt.join(name)).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600, "{name}");
        assert_denied(&format!("head -c 1 '{}/{name}' >/dev/null", mnt.display()));
        assert_denied(&format!("printf x 1<> '{}/{name}'", mnt.display()));
    }
    m.unmount();
}
