//! The integration tests play vufuse: they define the host symbols the
//! module imports (`fuse_main_real`, `fuse_get_context`, ...) in the test
//! executable, so it must export them to the module it dlopens.

fn main() {
    println!("cargo:rustc-link-arg-tests=-rdynamic");
}
