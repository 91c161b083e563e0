//! Builds the C shim over libext2fs (vufuse/src/ext/shim.c) and links the
//! library (Debian: libext2fs-dev).

fn main() {
    println!("cargo:rerun-if-changed=src/ext/shim.c");
    cc::Build::new()
        .file("src/ext/shim.c")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        .compile("vxshim");
    println!("cargo:rustc-link-lib=ext2fs");
    println!("cargo:rustc-link-lib=com_err");
}
