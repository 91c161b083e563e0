//! The readahead window of a sequential reader, shared by the drivers that announce a
//! file's next clusters to their device (`BlockDevice::prefetch`): FAT and exFAT. Which
//! device ranges the window covers is each driver's own (its cluster map); when to announce
//! and how far is decided here once.

/// How far ahead of a sequential reader the device is asked to prefetch.
pub const READAHEAD: u64 = 8 << 20;

/// The file range `[from, until)` to announce after a read of `len` bytes at `offset` of a
/// file of `size` bytes, given where the previous read ended (`expected`) and how far was
/// announced already (`prefetched`). `None` for a read that does not continue the previous
/// one (nor starts the file), or when half a window is still announced ahead.
pub fn window(
    expected: u64,
    prefetched: u64,
    offset: u64,
    len: u64,
    size: u64,
) -> Option<(u64, u64)> {
    let end = offset + len;
    if offset != expected && offset != 0 {
        return None;
    }
    let from = prefetched.max(end);
    if from >= (end + READAHEAD / 2).min(size) {
        return None;
    }
    Some((from, (end + READAHEAD).min(size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequential_reader_gets_a_window_ahead_and_a_new_one_at_half_of_it() {
        let size = 100 << 20;
        // The first read announces 8 MiB past its end.
        assert_eq!(window(0, 0, 0, 1 << 20, size), Some((1 << 20, 9 << 20)));
        // Reads within the first half of that window announce nothing.
        assert_eq!(window(1 << 20, 9 << 20, 1 << 20, 1 << 20, size), None);
        // Past half of it: the next stretch, from where the last one ended.
        assert_eq!(
            window(5 << 20, 9 << 20, 5 << 20, 1 << 20, size),
            Some((9 << 20, 14 << 20))
        );
        // Never past the end of the file, and nothing for a small file read whole.
        assert_eq!(window(0, 0, 0, 4096, 4096), None);
        assert_eq!(
            window(95 << 20, 96 << 20, 95 << 20, 1 << 20, size),
            Some((96 << 20, size))
        );
    }

    #[test]
    fn a_read_that_jumps_announces_nothing() {
        assert_eq!(window(1 << 20, 9 << 20, 50 << 20, 4096, 100 << 20), None);
    }
}
