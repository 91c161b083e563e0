//! Builds the C shim over libext2fs (vufuse/src/shim.c) and links the
//! libraries (Debian: libext2fs-dev, which also ships libe2p).

fn main() {
    println!("cargo:rerun-if-changed=src/shim.c");
    cc::Build::new()
        .file("src/shim.c")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        .compile("vxshim");
    println!("cargo:rustc-link-lib=ext2fs");
    println!("cargo:rustc-link-lib=com_err");
    // Feature names for error messages (also in libext2fs-dev).
    println!("cargo:rustc-link-lib=e2p");
}
