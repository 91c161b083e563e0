//! A disk and its partitions as devices, following table re-reads.

use crate::device::BlockDevice;
use crate::errno::{Errno, Result};
use crate::part::{self, PartitionTable, TableError};
use crate::window::Window;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// A whole disk plus one [`Window`] per partition of its table.
///
/// Number 0 is the whole disk; partitions keep their Linux numbers. After
/// [`reread`](Self::reread), a partition whose extent is unchanged keeps its
/// window (open handles go on working); a moved, resized or deleted one is
/// revoked, so handles still open on it fail with `EIO`.
pub struct PartitionedDisk {
    disk: Arc<dyn BlockDevice>,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    table: Option<PartitionTable>,
    windows: BTreeMap<u32, Window>,
    error: Option<TableError>,
}

impl PartitionedDisk {
    /// Probes `disk`. A disk whose table cannot be read is still served as a
    /// whole (so the table can be repaired through it); see [`table_error`](Self::table_error).
    pub fn new(disk: Arc<dyn BlockDevice>) -> PartitionedDisk {
        let pd = PartitionedDisk {
            disk,
            state: RwLock::new(State::default()),
        };
        let _ = pd.reread();
        pd
    }

    /// The whole disk.
    pub fn disk(&self) -> &Arc<dyn BlockDevice> {
        &self.disk
    }

    /// Reads the table again and replaces the windows that changed.
    pub fn reread(&self) -> std::result::Result<(), TableError> {
        let probed = part::probe(self.disk.as_ref());
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let mut windows = BTreeMap::new();
        let (table, error) = match probed {
            Ok(table) => (table, None),
            Err(e) => (None, Some(e)),
        };
        if let Some(table) = &table {
            for p in &table.partitions {
                let (start, len) = table.byte_range(p);
                let kept = state
                    .windows
                    .get(&p.number)
                    .filter(|w| w.start() == start && w.size() == len && w.is_valid());
                let window = match kept {
                    Some(w) => w.clone(),
                    None => match Window::new(self.disk.clone(), start, len) {
                        Ok(w) => w,
                        Err(_) => continue, // validated by the probe; unreachable in practice
                    },
                };
                windows.insert(p.number, window);
            }
        }
        for (number, old) in &state.windows {
            let survives = windows
                .get(number)
                .is_some_and(|w| w.start() == old.start() && w.size() == old.size());
            if !survives {
                old.revocation().revoke();
            }
        }
        state.table = table;
        state.windows = windows;
        state.error = error.clone();
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The device numbered `number`: 0 for the whole disk, else a partition.
    pub fn device(&self, number: u32) -> Result<Arc<dyn BlockDevice>> {
        if number == 0 {
            return Ok(self.disk.clone());
        }
        Ok(Arc::new(self.partition(number)?))
    }

    /// The window of partition `number`, or `ENXIO`.
    pub fn partition(&self, number: u32) -> Result<Window> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.windows.get(&number).cloned().ok_or(Errno::ENXIO)
    }

    /// Numbers of the partitions present now.
    pub fn numbers(&self) -> Vec<u32> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.windows.keys().copied().collect()
    }

    /// The table as last read (None for a disk without one).
    pub fn table(&self) -> Option<PartitionTable> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .table
            .clone()
    }

    /// Why the last read of the table failed, if it did.
    pub fn table_error(&self) -> Option<TableError> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .error
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::part::{NewPartition, PartType};
    use crate::Ramdisk;

    #[test]
    fn reread_keeps_unchanged_windows_and_revokes_moved_ones() {
        let disk: Arc<dyn BlockDevice> = Arc::new(Ramdisk::new(64 << 20).unwrap());
        let mut t = PartitionTable::new_gpt(disk.size(), 512, uuid::Uuid::new_v4()).unwrap();
        let linux = PartType::parse("linux", true).unwrap();
        t.add(NewPartition {
            sectors: Some(2048),
            ..NewPartition::new(linux)
        })
        .unwrap();
        t.add(NewPartition {
            sectors: Some(2048),
            ..NewPartition::new(linux)
        })
        .unwrap();
        part::write(disk.as_ref(), &t).unwrap();

        let pd = PartitionedDisk::new(disk.clone());
        assert_eq!(pd.numbers(), vec![1, 2]);
        let one = pd.partition(1).unwrap();
        let two = pd.partition(2).unwrap();
        assert_eq!(pd.partition(3).unwrap_err(), Errno::ENXIO);

        t.resize(2, 4096).unwrap();
        part::write(disk.as_ref(), &t).unwrap();
        pd.reread().unwrap();
        let mut buf = [0u8; 512];
        assert!(
            one.read_at(&mut buf, 0).is_ok(),
            "unchanged partition keeps working"
        );
        assert_eq!(
            two.read_at(&mut buf, 0),
            Err(Errno::EIO),
            "resized partition is revoked"
        );
        assert_eq!(pd.partition(2).unwrap().size(), 4096 * 512);

        // A table destroyed under us: everything revoked, the disk still served.
        disk.write_all_at(&[0u8; 512], 0).unwrap();
        disk.write_all_at(&[0u8; 512], 512).unwrap();
        disk.write_all_at(&[0u8; 512], disk.size() - 512).unwrap();
        pd.reread().unwrap();
        assert!(pd.numbers().is_empty());
        assert_eq!(one.read_at(&mut buf, 0), Err(Errno::EIO));
        assert!(pd.device(0).is_ok());
    }
}
