//! A 64 GiB ramdisk with 10 MiB written must use about 10 MiB. Its own test
//! binary, so no other test's allocations move this process's RSS.

use vudev::{BlockDevice, Ramdisk, CHUNK_SIZE};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn sixty_four_gib_ramdisk_with_ten_mib_written_uses_about_ten_mib() {
    let before = rss_kib();
    let disk = Ramdisk::new(64 << 30).unwrap();
    assert_eq!(disk.size(), 64 << 30);
    // 10 MiB in 160 chunk-sized writes spread across the whole disk.
    let block = vec![0xC3u8; CHUNK_SIZE];
    let stride = disk.size() / 160;
    for i in 0..160u64 {
        let offset = (i * stride) / CHUNK_SIZE as u64 * CHUNK_SIZE as u64;
        disk.write_all_at(&block, offset).unwrap();
    }
    // Reading never-written ranges allocates nothing.
    let mut buf = vec![0xFFu8; 1 << 20];
    disk.read_exact_at(&mut buf, disk.size() - (1 << 20))
        .unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let grown = rss_kib().saturating_sub(before);
    assert_eq!(disk.allocated_bytes(), 10 << 20);
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} KiB for 10 MiB of data"
    );
    assert!(
        grown >= 9 * 1024,
        "RSS grew by only {grown} KiB: was the data really stored?"
    );
    // Discard gives the chunks back.
    disk.discard(0, disk.size()).unwrap();
    assert_eq!(disk.allocated_bytes(), 0);
    disk.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}
