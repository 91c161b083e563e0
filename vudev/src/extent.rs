//! Which ranges of a device hold data: the answer of [`BlockDevice::extents`], and the
//! bounded whole-device map built from it ([`data_ranges`]) that copies (`vuimg convert`)
//! and the NBD server's block status use, so that holes are neither read nor written.

use crate::device::BlockDevice;
use crate::errno::Result;

/// One run of a device's map: `len` bytes that either may hold data or read as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (nonzero).
    pub len: u64,
    /// True when every byte of the run reads as zero (a hole, a zero cluster): a copy
    /// need not read it.
    pub zero: bool,
}

/// At most this many data ranges are kept by [`data_ranges`]; past it, the rest of the
/// device is one data range (read whole), so the map's memory stays bounded.
pub const MAX_RANGES: usize = 1 << 20;

/// At most this many [`BlockDevice::extents`] calls map one device; a device answering
/// in slivers has the rest of it called data rather than being asked for ever.
pub const MAX_QUERIES: usize = 1 << 16;

/// Extents asked of a device per call by [`data_ranges`].
const PER_QUERY: usize = 1 << 16;

/// Collects the answer of one [`BlockDevice::extents`] call: neighbours of the same kind
/// merge, and at most `max` extents are kept.
#[derive(Debug)]
pub struct ExtentList {
    out: Vec<Extent>,
    max: usize,
}

impl ExtentList {
    /// An empty list that keeps at most `max` extents (at least one).
    pub fn new(max: usize) -> ExtentList {
        ExtentList {
            out: Vec::new(),
            max: max.max(1),
        }
    }

    /// Adds `len` bytes of the kind `zero`; false (nothing added) when that would need an
    /// extent more than `max`: the caller stops there.
    pub fn push(&mut self, len: u64, zero: bool) -> bool {
        if len == 0 {
            return true;
        }
        let full = self.out.len() >= self.max;
        match self.out.last_mut() {
            Some(last) if last.zero == zero => last.len += len,
            _ if full => return false,
            _ => self.out.push(Extent { len, zero }),
        }
        true
    }

    /// Adds what `dev` says of `[offset, offset + len)` (an overlay's backing file, a
    /// partition's parent); bytes past `dev`'s end read as zeros. Returns how many bytes
    /// were added (less than `len` once the list is full).
    pub fn push_from<D: BlockDevice + ?Sized>(
        &mut self,
        dev: &D,
        offset: u64,
        len: u64,
    ) -> Result<u64> {
        let inside = len.min(dev.size().saturating_sub(offset));
        let mut done = 0;
        while done < inside {
            let room = self.max - self.out.len() + 1;
            let got = dev.extents(offset + done, inside - done, room)?;
            let before = done;
            for e in got {
                let n = e.len.min(inside - done);
                if !self.push(n, e.zero) {
                    return Ok(done);
                }
                done += n;
            }
            if done == before {
                // A device that answers nothing: call the rest data.
                if !self.push(inside - done, false) {
                    return Ok(done);
                }
                done = inside;
            }
        }
        if !self.push(len - inside, true) {
            return Ok(inside);
        }
        Ok(len)
    }

    /// True once no extent of another kind than the last fits.
    pub fn is_full(&self) -> bool {
        self.out.len() >= self.max
    }

    /// The extents, in order.
    pub fn into_vec(self) -> Vec<Extent> {
        self.out
    }
}

/// The answer every device may give: all of `[offset, offset + len)` inside `size` is data.
pub fn all_data(size: u64, offset: u64, len: u64) -> Vec<Extent> {
    let len = len.min(size.saturating_sub(offset));
    if len == 0 {
        Vec::new()
    } else {
        vec![Extent { len, zero: false }]
    }
}

/// The ranges (offset, length) of `dev` that may hold data, in order and merged: what a
/// copy of the whole device must read. Bounded: past [`MAX_RANGES`] ranges or
/// [`MAX_QUERIES`] calls, the rest of the device is one data range.
pub fn data_ranges(dev: &dyn BlockDevice) -> Result<Vec<(u64, u64)>> {
    let size = dev.size();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let push = |ranges: &mut Vec<(u64, u64)>, start: u64, len: u64| match ranges.last_mut() {
        Some((s, l)) if *s + *l == start => *l += len,
        _ => ranges.push((start, len)),
    };
    let mut pos = 0;
    let mut queries = 0;
    while pos < size {
        if queries >= MAX_QUERIES || ranges.len() >= MAX_RANGES {
            push(&mut ranges, pos, size - pos);
            break;
        }
        queries += 1;
        let got = dev.extents(pos, size - pos, PER_QUERY)?;
        let before = pos;
        for e in got {
            let n = e.len.min(size - pos);
            if !e.zero {
                push(&mut ranges, pos, n);
            }
            pos += n;
        }
        if pos == before {
            push(&mut ranges, pos, size - pos);
            break;
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ramdisk;

    #[test]
    fn the_list_merges_neighbours_and_stops_when_full() {
        let mut l = ExtentList::new(2);
        assert!(l.push(10, false));
        assert!(l.push(5, false));
        assert!(l.push(0, true));
        assert!(l.push(7, true));
        assert!(l.is_full());
        // Same kind as the last still merges; another kind does not fit.
        assert!(l.push(1, true));
        assert!(!l.push(1, false));
        assert_eq!(
            l.into_vec(),
            vec![
                Extent {
                    len: 15,
                    zero: false
                },
                Extent { len: 8, zero: true }
            ]
        );
    }

    #[test]
    fn a_device_past_its_end_reads_as_zeros_below_an_overlay() {
        let small = Ramdisk::new(1 << 20).unwrap();
        small.write_all_at(&[1u8; 10], 4096).unwrap();
        let mut l = ExtentList::new(10);
        assert_eq!(l.push_from(&small, 0, 2 << 20).unwrap(), 2 << 20);
        let v = l.into_vec();
        assert_eq!(v.iter().map(|e| e.len).sum::<u64>(), 2 << 20);
        assert!(!v[0].zero, "the ramdisk's first chunk holds data");
        assert!(v.last().unwrap().zero);
    }

    /// A device answering one byte at a time.
    struct Slivers(u64);

    impl BlockDevice for Slivers {
        fn size(&self) -> u64 {
            self.0
        }
        fn read_only(&self) -> bool {
            true
        }
        fn read_at(&self, _: &mut [u8], _: u64) -> Result<usize> {
            Ok(0)
        }
        fn write_at(&self, _: &[u8], _: u64) -> Result<usize> {
            Err(crate::Errno::EROFS)
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
        fn extents(&self, offset: u64, _: u64, _: usize) -> Result<Vec<Extent>> {
            Ok(vec![Extent {
                len: 1,
                zero: offset % 2 == 1,
            }])
        }
    }

    #[test]
    fn a_map_of_slivers_is_cut_short_and_the_rest_is_data() {
        let dev = Slivers(u64::MAX);
        let ranges = data_ranges(&dev).unwrap();
        assert!(ranges.len() <= MAX_QUERIES + 1);
        let last = *ranges.last().unwrap();
        assert_eq!(last.0 + last.1, u64::MAX, "the rest is one data range");
    }

    #[test]
    fn the_default_answer_is_all_data() {
        assert_eq!(
            all_data(100, 40, 100),
            vec![Extent {
                len: 60,
                zero: false
            }]
        );
        assert!(all_data(100, 100, 1).is_empty());
    }
}
