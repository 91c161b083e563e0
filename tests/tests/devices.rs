//! Devices against the real world: loop block devices with 4 KiB sectors,
//! many threads on one image, ext4-view reading through a partition window.

use integration::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vudev::part::{self, NewPartition, PartitionTable, Scheme};
use vudev::{BlockDevice, DeviceCursor, Ext4Reader, FileDevice, PartitionedDisk};

const MIB: u64 = 1 << 20;

/// A loop device attached to an image; detached on drop.
struct Loop(PathBuf);

impl Loop {
    /// Attaches `image` with the given logical sector size, or explains why not.
    fn attach(image: &Path, sector_size: u32) -> Result<Loop, String> {
        let out = run(
            "losetup",
            &[
                "-f",
                "--show",
                "-b",
                &sector_size.to_string(),
                image.to_str().unwrap(),
            ],
        );
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Loop(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim(),
        )))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = run("losetup", &["-d", self.0.to_str().unwrap()]);
    }
}

#[test]
fn gpt_with_4k_sectors_on_an_image_and_a_real_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "4k.img", 64 * MIB);
    let file = FileDevice::open(&img, false).unwrap();
    let mut t = PartitionTable::new_gpt(file.size(), 4096, uuid::Uuid::new_v4()).unwrap();
    assert_eq!(t.usable.0, 6, "128 entries fill 4 sectors of 4 KiB");
    t.add(NewPartition {
        sectors: Some(4 * 256),
        name: "one".into(),
        ..NewPartition::new(ptype("efi", true))
    })
    .unwrap();
    t.add(NewPartition {
        name: "two".into(),
        ..NewPartition::new(ptype("linux", true))
    })
    .unwrap();
    assert_eq!(
        t.get(1).unwrap().start,
        256,
        "1 MiB alignment in 4 KiB sectors"
    );
    part::write(&file, &t).unwrap();
    // The image itself (512-byte native sectors): the probe finds the 4 KiB layout.
    let found = part::probe(&file).unwrap().unwrap();
    assert_eq!(found.sector_size, 4096);
    assert_eq!(found.partitions, t.partitions);

    let dev = match Loop::attach(&img, 4096) {
        Ok(dev) => dev,
        Err(why) => {
            testkit::skip(&format!(
                "the loop-device half: cannot attach a loop device here: {why}"
            ));
            return;
        }
    };
    let block = FileDevice::open(&dev.0, true).unwrap();
    assert!(block.is_block_device());
    assert_eq!(block.sector_size(), 4096);
    assert_eq!(block.size(), 64 * MIB);
    let via_block = part::probe(&block).unwrap().unwrap();
    assert_eq!(via_block.partitions, t.partitions);
    assert_sgdisk_verify_clean(&dev.0);
    assert_same_as_sfdisk(&via_block, &dev.0);
}

#[test]
fn mbr_from_sfdisk_on_a_4k_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "4k-mbr.img", 64 * MIB);
    let dev = match Loop::attach(&img, 4096) {
        Ok(dev) => dev,
        Err(why) => {
            testkit::skip(&format!("cannot attach a loop device here: {why}"));
            return;
        }
    };
    let node = dev.0.to_str().unwrap();
    sh(&format!("printf 'label: dos\\n,8M,c\\n,,5\\n,8M,83\\n,,83\\n' | sfdisk -q --no-reread --no-tell-kernel {node}"));
    let block = FileDevice::open(&dev.0, true).unwrap();
    let t = part::probe(&block).unwrap().unwrap();
    assert_eq!(t.scheme, Scheme::Mbr);
    assert_eq!(t.sector_size, 4096);
    assert_same_as_sfdisk(&t, &dev.0);
}

#[test]
fn many_threads_share_one_file_device() {
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_image(dir.path(), "threads.img", 32 * MIB);
    let dev = Arc::new(FileDevice::open(&img, false).unwrap());
    const THREADS: u64 = 8;
    const BLOCK: usize = 64 * 1024;
    let blocks = dev.size() / BLOCK as u64;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let dev = dev.clone();
            scope.spawn(move || {
                // Interleaved blocks: thread t owns every THREADS-th block.
                for b in (t..blocks).step_by(THREADS as usize) {
                    let fill = vec![(b % 251) as u8 + 1; BLOCK];
                    dev.write_all_at(&fill, b * BLOCK as u64).unwrap();
                    let mut back = vec![0u8; BLOCK];
                    dev.read_exact_at(&mut back, b * BLOCK as u64).unwrap();
                    assert_eq!(back, fill);
                }
            });
        }
    });
    dev.flush().unwrap();
    let bytes = std::fs::read(&img).unwrap();
    for (b, chunk) in bytes.chunks(BLOCK).enumerate() {
        assert!(
            chunk.iter().all(|&x| x == (b as u64 % 251) as u8 + 1),
            "block {b} corrupted"
        );
    }
}

#[test]
fn ext4_view_reads_a_filesystem_through_a_partition_window() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "vurs\n").unwrap();
    let big: Vec<u8> = (0..3 * MIB as usize)
        .map(|i| (i * 31 % 256) as u8)
        .collect();
    std::fs::write(tree.join("big.bin"), &big).unwrap();

    let img = sparse_image(dir.path(), "disk.img", 64 * MIB);
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&img, false).unwrap());
    let mut t = PartitionTable::new_mbr(dev.size(), 512, 9).unwrap();
    t.add(NewPartition {
        sectors: Some(8 * 2048),
        ..NewPartition::new(ptype("fat32", false))
    })
    .unwrap();
    t.add(NewPartition::new(ptype("linux", false))).unwrap();
    part::write(dev.as_ref(), &t).unwrap();
    let window = PartitionedDisk::new(dev).partition(2).unwrap();

    let fs_file = sparse_image(dir.path(), "root.ext4", window.size());
    run_ok(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            tree.to_str().unwrap(),
            fs_file.to_str().unwrap(),
        ],
    );
    std::io::copy(
        &mut std::fs::File::open(&fs_file).unwrap(),
        &mut DeviceCursor::new(window.clone()),
    )
    .unwrap();

    let fs = ext4_view::Ext4::load(Box::new(Ext4Reader(window))).unwrap();
    assert_eq!(fs.read_to_string("/etc/hostname").unwrap(), "vurs\n");
    assert_eq!(fs.read("/big.bin").unwrap(), big);
}
