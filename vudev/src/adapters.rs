//! Adapters from a [`BlockDevice`] to the I/O traits other crates expect,
//! written once here: `Read + Write + Seek` (fatfs, table tools) and
//! ext4-view's `Ext4Read`.

use crate::device::BlockDevice;
use crate::errno::Errno;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// A cursor over a device: `std::io::{Read, Write, Seek}` with its own position.
pub struct DeviceCursor<D: BlockDevice> {
    device: D,
    position: u64,
}

impl<D: BlockDevice> std::fmt::Debug for DeviceCursor<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCursor")
            .field("size", &self.device.size())
            .field("position", &self.position)
            .finish()
    }
}

impl<D: BlockDevice> DeviceCursor<D> {
    /// A cursor at offset 0 of `device`.
    pub fn new(device: D) -> Self {
        DeviceCursor {
            device,
            position: 0,
        }
    }

    /// The device under the cursor.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Gives the device back.
    pub fn into_inner(self) -> D {
        self.device
    }
}

impl<D: BlockDevice> Read for DeviceCursor<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.device.read_at(buf, self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl<D: BlockDevice> Write for DeviceCursor<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.device.write_at(buf, self.position)?;
        self.position += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(self.device.flush()?)
    }
}

impl<D: BlockDevice> Seek for DeviceCursor<D> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(delta) => self.device.size().checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        match target {
            Some(n) => {
                self.position = n;
                Ok(n)
            }
            None => Err(io::Error::from(Errno::EINVAL)),
        }
    }
}

/// ext4-view's reader over a device (ext4-view owns its reader, hence `'static`).
pub struct Ext4Reader<D: BlockDevice>(pub D);

impl<D: BlockDevice> ext4_view::Ext4Read for Ext4Reader<D> {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0.read_exact_at(dst, start_byte)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ramdisk;

    #[test]
    fn cursor_reads_writes_and_seeks() {
        let mut cur = DeviceCursor::new(Ramdisk::new(1024).unwrap());
        cur.seek(SeekFrom::End(-4)).unwrap();
        assert_eq!(cur.write(b"abcdef").unwrap(), 4);
        assert_eq!(
            cur.write(b"x").unwrap_err().raw_os_error(),
            Some(libc::ENOSPC)
        );
        cur.seek(SeekFrom::Current(-4)).unwrap();
        let mut s = String::new();
        cur.read_to_string(&mut s).unwrap();
        assert_eq!(s, "abcd");
        assert!(cur.seek(SeekFrom::Current(-2000)).is_err());
    }
}
