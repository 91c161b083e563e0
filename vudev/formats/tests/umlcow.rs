//! UML COW against uml_mkcow and uml_moo as oracles.

mod common;

use common::*;
use testkit::s;
use vudev::BlockDevice;
use vudev_formats::{
    create_uml_cow, open_image, open_image_with, Format, FormatError, OpenOptions,
};

const MIB: usize = 1 << 20;

#[test]
fn writes_through_uml_mkcow_overlays_merge_with_uml_moo() {
    if !have(&["uml_mkcow", "uml_moo"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let mut want = random_raw(&base, 6 * MIB + 1536, 1);
    let cow = dir.path().join("cow");
    testkit::run_ok("uml_mkcow", &[s(&cow), s(&base)]);
    let hash = file_hash(&base);
    {
        let dev = open_image(&cow, false, None).unwrap();
        assert_eq!(dev.size(), want.len() as u64);
        assert_same(&read_all(&*dev), &want, "fresh overlay");
        random_writes(&*dev, &mut want, 120, 2);
        assert_same(&read_all(&*dev), &want, "ours after writes");
        dev.flush().unwrap();
    }
    assert_eq!(file_hash(&base), hash, "the backing file changed");
    let merged = dir.path().join("merged");
    testkit::run_ok("uml_moo", &[s(&cow), s(&merged)]);
    assert_same(&std::fs::read(&merged).unwrap(), &want, "uml_moo's merge");
    // Reopened, our view is the same.
    let dev = open_image(&cow, true, Some(Format::UmlCow)).unwrap();
    assert_same(&read_all(&*dev), &want, "reopened");
}

#[test]
fn create_uml_cow_output_is_accepted_by_uml_moo() {
    if !have(&["uml_moo"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let mut want = random_raw(&base, 3 * MIB, 3);
    let cow = dir.path().join("cow");
    create_uml_cow(&cow, &base).unwrap();
    {
        let dev = open_image_with(&cow, &OpenOptions::default()).unwrap();
        let i = dev.image_info();
        assert_eq!(i.format, Format::UmlCow);
        assert_eq!(i.backing.as_ref().unwrap().format, Format::Raw);
        let dev = dev.into_block_device();
        random_writes(&*dev, &mut want, 50, 4);
    }
    let merged = dir.path().join("merged");
    testkit::run_ok("uml_moo", &[s(&cow), s(&merged)]);
    assert_same(
        &std::fs::read(&merged).unwrap(),
        &want,
        "uml_moo merge of create_uml_cow",
    );
}

#[test]
fn a_newer_backing_file_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::write(&base, vec![5u8; MIB]).unwrap();
    testkit::sh(&format!("touch -d '2020-01-01' {}", s(&base)));
    let cow = dir.path().join("cow");
    create_uml_cow(&cow, &base).unwrap();
    assert!(open_image(&cow, true, None).is_ok());
    testkit::sh(&format!("touch {}", s(&base)));
    let err = match open_image(&cow, false, None) {
        Err(e) => e,
        Ok(_) => panic!("a changed backing file was accepted"),
    };
    assert!(matches!(err, FormatError::BackingChanged { .. }), "{err}");
    assert!(err.to_string().contains("newer"), "{err}");
    let forced = OpenOptions {
        force: true,
        ..OpenOptions::default()
    };
    let dev = open_image_with(&cow, &forced).unwrap();
    let mut b = [0u8; 4];
    dev.read_exact_at(&mut b, 100).unwrap();
    assert_eq!(b, [5; 4]);
}
