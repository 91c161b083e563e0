//! Reproducible images: after the files are in, every timestamp the drivers
//! set from the clock (creation and change times, `.` entries, the
//! superblock's mount time) is brought down to the fixed epoch, so two builds
//! of the same SPEC and inputs are byte-identical.
//!
//! FAT: the directory tree is walked with vufuse's FAT modules and each
//! short entry's times are clamped. ext: the driver sets ctime from the
//! clock and has no option to fix it, so `debugfs -w` (e2fsprogs, which
//! keeps the inode checksums right) sets ctime/crtime of every inode the
//! build touched and the superblock times, under `E2FSPROGS_FAKE_TIME`.

use crate::fail;
use crate::util::{epoch_time, Outcome};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::SystemTime;
use vudev::BlockDevice;
use vufuse_fat::bpb::{self, FatType};
use vufuse_fat::dirent::{from_fat_time, to_fat_time, SLOT};
use vufuse_fat::table::Fat;

const ATTR_LFN: u8 = 0x0F;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;

/// Clamps every time in every directory entry of the FAT volume on `dev` to `epoch`.
pub fn clamp_fat_times(dev: Arc<dyn BlockDevice>, epoch: u64) -> Outcome {
    let limit = epoch_time(epoch);
    let mut sector = [0u8; 512];
    dev.read_exact_at(&mut sector, 0)
        .map_err(|e| fail!("FAT: {e}"))?;
    let geo = bpb::parse(&sector, dev.size()).map_err(|e| fail!("FAT: {e}"))?;
    let mut fat = Fat::open(dev.clone(), geo.clone()).map_err(|e| fail!("FAT: {e}"))?;
    // (byte ranges of the directory)
    let mut pending: Vec<Vec<(u64, u64)>> = vec![if geo.fat_type == FatType::Fat32 {
        runs_of(&mut fat, &geo, geo.root_cluster)?
    } else {
        vec![(geo.root_offset, geo.root_entries as u64 * SLOT as u64)]
    }];
    let mut seen = std::collections::HashSet::new();
    while let Some(ranges) = pending.pop() {
        'ranges: for (offset, len) in ranges {
            let mut bytes = vec![0u8; len as usize];
            dev.read_exact_at(&mut bytes, offset)
                .map_err(|e| fail!("FAT: {e}"))?;
            let mut changed = false;
            for slot in bytes.chunks_exact_mut(SLOT) {
                if slot[0] == 0 {
                    if changed {
                        dev.write_all_at(&bytes, offset)
                            .map_err(|e| fail!("FAT: {e}"))?;
                    }
                    break 'ranges;
                }
                let attr = slot[11];
                if slot[0] == 0xE5 || attr == ATTR_LFN || attr & ATTR_VOLUME != 0 {
                    continue;
                }
                changed |= clamp_slot(slot, limit);
                let dot = slot[0] == b'.';
                if attr & ATTR_DIR != 0 && !dot {
                    let cluster = u16::from_le_bytes([slot[26], slot[27]]) as u32
                        | (u16::from_le_bytes([slot[20], slot[21]]) as u32) << 16;
                    if geo.is_valid_cluster(cluster) && seen.insert(cluster) {
                        pending.push(runs_of(&mut fat, &geo, cluster)?);
                    }
                }
            }
            if changed {
                dev.write_all_at(&bytes, offset)
                    .map_err(|e| fail!("FAT: {e}"))?;
            }
        }
    }
    dev.flush().map_err(|e| fail!("FAT: {e}"))?;
    Ok(())
}

fn runs_of(fat: &mut Fat, geo: &bpb::Geometry, first: u32) -> Outcome<Vec<(u64, u64)>> {
    Ok(fat
        .chain_runs(first)
        .map_err(|e| fail!("FAT: directory chain: {e}"))?
        .into_iter()
        .map(|(start, len)| {
            (
                geo.cluster_offset(start),
                len as u64 * geo.cluster_size as u64,
            )
        })
        .collect())
}

fn clamp_slot(slot: &mut [u8], limit: SystemTime) -> bool {
    let le = |s: &[u8], at: usize| u16::from_le_bytes([s[at], s[at + 1]]);
    let before = slot.to_vec();
    let (ld, lt, _) = to_fat_time(limit);
    // Creation: date+time+tenths at 16, 14, 13.
    if from_fat_time(le(slot, 16), le(slot, 14), slot[13]) > limit {
        slot[13] = 0;
        slot[14..16].copy_from_slice(&lt.to_le_bytes());
        slot[16..18].copy_from_slice(&ld.to_le_bytes());
    }
    // Access date at 18.
    if from_fat_time(le(slot, 18), 0, 0) > limit {
        slot[18..20].copy_from_slice(&ld.to_le_bytes());
    }
    // Modification: time at 22, date at 24.
    if from_fat_time(le(slot, 24), le(slot, 22), 0) > limit {
        slot[22..24].copy_from_slice(&lt.to_le_bytes());
        slot[24..26].copy_from_slice(&ld.to_le_bytes());
    }
    before != slot
}

/// Sets change and creation times of `inodes` and the superblock times of the
/// ext filesystem at byte `offset` of `image` to `epoch`, with debugfs.
pub fn fix_ext_times(image: &Path, offset: u64, inodes: &[u32], epoch: u64) -> Outcome {
    let mut script = String::new();
    for ino in inodes {
        for field in ["ctime", "crtime"] {
            script.push_str(&format!("sif <{ino}> {field} @{epoch}\n"));
            script.push_str(&format!("sif <{ino}> {field}_extra 0\n"));
        }
    }
    for field in ["mtime", "wtime", "lastcheck"] {
        script.push_str(&format!("ssv {field} @{epoch}\n"));
    }
    let device = format!("{}?offset={offset}", image.display());
    let mut child = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg("-")
        .arg(&device)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail!("cannot run debugfs (install e2fsprogs): {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| fail!("debugfs: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| fail!("debugfs: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !out.status.success() || !problems.is_empty() {
        return Err(fail!("debugfs failed: {}", problems.join("; ")));
    }
    Ok(())
}
