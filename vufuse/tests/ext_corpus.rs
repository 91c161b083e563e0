//! A short run of `tests/corpus/ext_corpus.sh` (e2fsprogs's corrupt test images mounted by
//! `fuseext2` read-only and read-write: no panic, no signal, no hang, read-only mounts leave
//! the image's bytes alone, and no image is left worse than e2fsck found it) on fourteen images of
//! different kinds. Needs an e2fsprogs checkout or bare git directory: `E2FSPROGS`, or the
//! fetch tool's mirror at /work/.mirror/tytso+e2fsprogs/repo; without one it is skipped, saying
//! so. The whole corpus: `FUSEEXT2=... tests/corpus/ext_corpus.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fuseext2");

/// Clean ones and corrupt ones: bad bitmaps, a disconnected inode, directory block checksums, a bad
/// root, orphans, a bad htree node, a bad extent node, a zeroed group, a large-block image, and
/// four whose bitmaps miss blocks or inodes in use.
const IMAGES: &[&str] = &[
    "f_16384_block",
    "f_bad_bbitmap",
    "f_bad_disconnected_inode",
    "f_badorphan",
    "f_badroot",
    "f_dir_bad_csum",
    "f_extent_bad_node",
    "f_h_badnode",
    "f_zero_group",
    "f_orphan_extents_inode",
    // Bitmaps that miss what the inodes use: refused read-write.
    "f_badtable",
    "f_bitmaps",
    "f_dup_ba",
    "f_ind_inode_collision",
];

fn e2fsprogs() -> Option<PathBuf> {
    let dir = std::env::var_os("E2FSPROGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/.mirror/tytso+e2fsprogs/repo"));
    (dir.join("tests").is_dir() || dir.join("HEAD").is_file()).then_some(dir)
}

#[test]
fn fourteen_corrupt_e2fsprogs_images_neither_crash_hang_nor_get_worse() {
    let Some(source) = e2fsprogs() else {
        testkit::skip(
            "no e2fsprogs tests: set E2FSPROGS to a checkout or git directory of \
             github.com/tytso/e2fsprogs",
        );
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/ext_corpus.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["-t", "60"])
        .args(IMAGES)
        .env("E2FSPROGS", &source)
        .env("FUSEEXT2", BIN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("images: {}", IMAGES.len())),
        "{stdout}{stderr}"
    );
}
