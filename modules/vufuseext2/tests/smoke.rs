use fusehost::{module_path, Module};
#[test]
fn smoke() {
    let m = Module::load(&module_path("vufuseext2")).unwrap();
    assert!(m.has_symbol("fuse_reentrant_tag"));
    let r = m.mount(&["vufuseext2", "-o", "rw", "/nonexistent", "/mnt"]);
    assert!(r.is_err());
}
