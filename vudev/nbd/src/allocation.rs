//! Which parts of an export hold data, from the server's `base:allocation` metadata
//! context: asked for at the handshake (`NBD_OPT_SET_META_CONTEXT`), queried with
//! `NBD_CMD_BLOCK_STATUS`. A copy out of an export then reads its data alone and skips
//! holes and zeroed ranges, as `nbdcopy` does.

use crate::proto::STATE_ZERO;

/// The metadata context of allocation, the one every NBD server with block status offers.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// At most this many separate data ranges are kept; an export more fragmented than that is
/// read whole (the map's memory stays bounded whatever the server answers).
pub const MAX_RANGES: usize = 1 << 20;

/// At most this many block status requests map one export: each covers up to 1 GiB, so an
/// honest server maps 64 TiB within it, and a server that answers in slivers cannot keep
/// the client asking for ever.
pub const MAX_STATUS_REQUESTS: usize = 1 << 16;

/// The `NBD_OPT_SET_META_CONTEXT` payload that asks for [`BASE_ALLOCATION`] on `export`.
pub fn set_meta_context_payload(export: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + export.len() + BASE_ALLOCATION.len());
    v.extend_from_slice(&(export.len() as u32).to_be_bytes());
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&1u32.to_be_bytes());
    v.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
    v.extend_from_slice(BASE_ALLOCATION.as_bytes());
    v
}

/// The context id an `NBD_REP_META_CONTEXT` reply gives, when it names `base:allocation`.
pub fn base_allocation_id(reply: &[u8]) -> Option<u32> {
    let id = u32::from_be_bytes(reply.get(..4)?.try_into().ok()?);
    (reply.get(4..)? == BASE_ALLOCATION.as_bytes()).then_some(id)
}

/// The extents (length, flags) of one `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for context
/// `id`; `None` when the chunk is malformed (short, ragged, a zero length) and an empty
/// list when it is another context's.
pub fn parse_block_status(chunk: &[u8], id: u32) -> Option<Vec<(u32, u32)>> {
    let (head, body) = chunk.split_at_checked(4)?;
    if body.is_empty() || body.len() % 8 != 0 {
        return None;
    }
    if u32::from_be_bytes(head.try_into().ok()?) != id {
        return Some(Vec::new());
    }
    body.chunks_exact(8)
        .map(|d| {
            let len = u32::from_be_bytes(d[..4].try_into().expect("4 bytes"));
            let flags = u32::from_be_bytes(d[4..].try_into().expect("4 bytes"));
            (len != 0).then_some((len, flags))
        })
        .collect()
}

/// The data ranges of an export, built from block status replies in offset order.
#[derive(Debug, Default)]
pub struct DataMap {
    ranges: Vec<(u64, u64)>,
    overflowed: bool,
}

impl DataMap {
    /// Adds the extents the server gave for the range starting at `start` of an export of
    /// `size` bytes; returns how many bytes they covered (0: no progress, a broken server).
    pub fn add(&mut self, start: u64, extents: &[(u32, u32)], size: u64) -> u64 {
        let mut pos = start;
        for &(len, flags) in extents {
            let end = pos.saturating_add(u64::from(len)).min(size);
            if end <= pos {
                break;
            }
            if flags & STATE_ZERO == 0 {
                self.push(pos, end - pos);
            }
            pos = end;
        }
        pos - start
    }

    fn push(&mut self, start: u64, len: u64) {
        if let Some(last) = self.ranges.last_mut() {
            if last.0 + last.1 == start {
                last.1 += len;
                return;
            }
        }
        if self.ranges.len() >= MAX_RANGES {
            self.overflowed = true;
            return;
        }
        self.ranges.push((start, len));
    }

    /// True once more ranges came than are kept: the rest of the map is not worth asking.
    pub fn is_full(&self) -> bool {
        self.overflowed
    }

    /// The data ranges (offset, length), or `None` when there were too many to keep.
    pub fn into_ranges(self) -> Option<Vec<(u64, u64)>> {
        (!self.overflowed).then_some(self.ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::STATE_HOLE;

    #[test]
    fn the_context_request_and_reply_follow_the_spec() {
        let p = set_meta_context_payload("disk");
        assert_eq!(&p[..4], &4u32.to_be_bytes());
        assert_eq!(&p[4..8], b"disk");
        assert_eq!(&p[8..12], &1u32.to_be_bytes());
        assert_eq!(&p[12..16], &15u32.to_be_bytes());
        assert_eq!(&p[16..], b"base:allocation");
        let mut reply = 7u32.to_be_bytes().to_vec();
        reply.extend_from_slice(b"base:allocation");
        assert_eq!(base_allocation_id(&reply), Some(7));
        assert_eq!(base_allocation_id(b"\0\0\0\x07qemu:dirty-bitmap:x"), None);
        assert_eq!(base_allocation_id(b"\0\0"), None);
    }

    #[test]
    fn block_status_chunks_are_checked_before_use() {
        let mut chunk = 3u32.to_be_bytes().to_vec();
        for (len, flags) in [(4096u32, 0u32), (8192, STATE_HOLE | STATE_ZERO)] {
            chunk.extend_from_slice(&len.to_be_bytes());
            chunk.extend_from_slice(&flags.to_be_bytes());
        }
        assert_eq!(
            parse_block_status(&chunk, 3),
            Some(vec![(4096, 0), (8192, 3)])
        );
        assert_eq!(parse_block_status(&chunk, 4), Some(vec![]));
        assert_eq!(parse_block_status(&chunk[..chunk.len() - 1], 3), None);
        assert_eq!(parse_block_status(&chunk[..4], 3), None);
        let mut zero = 3u32.to_be_bytes().to_vec();
        zero.extend_from_slice(&[0; 8]);
        assert_eq!(parse_block_status(&zero, 3), None);
    }

    #[test]
    fn the_map_keeps_data_merges_neighbours_and_stops_at_the_end() {
        let mut map = DataMap::default();
        let z = STATE_ZERO;
        assert_eq!(map.add(0, &[(10, 0), (10, 0), (20, z), (5, 0)], 100), 45);
        // The last extent may run past the export's end: it is cut there.
        assert_eq!(map.add(45, &[(5, STATE_HOLE | z), (1000, 0)], 100), 55);
        assert_eq!(map.add(100, &[(10, 0)], 100), 0);
        assert_eq!(map.into_ranges(), Some(vec![(0, 20), (40, 5), (50, 50)]));
        // A hole that does not promise zeros is copied.
        let mut map = DataMap::default();
        map.add(0, &[(5, STATE_HOLE), (5, z)], 10);
        assert_eq!(map.into_ranges(), Some(vec![(0, 5)]));
    }

    #[test]
    fn a_map_too_fragmented_to_keep_says_so() {
        let mut map = DataMap::default();
        let extents: Vec<(u32, u32)> = (0..2 * MAX_RANGES + 2)
            .map(|i| (1, if i % 2 == 0 { 0 } else { STATE_ZERO }))
            .collect();
        map.add(0, &extents, u64::MAX);
        assert!(map.is_full());
        assert_eq!(map.into_ranges(), None);
    }
}
