//! The up-case table: how exFAT compares names without regard to case.
//!
//! Every volume carries its own table (root directory entry 0x82) mapping each UTF-16 unit to
//! its upper-case form, usually compressed: a `0xFFFF, n` pair stands for `n` units that map
//! to themselves. Lookups compare names after mapping every unit through it; names are
//! stored as typed (case preserved). The whole table is kept expanded: 65,536 units, 128 KiB,
//! whatever the volume size.

use crate::upcase_table;

/// Largest up-case table the specification allows (65,536 two-byte units).
pub const MAX_BYTES: u64 = 128 * 1024;

/// An expanded up-case table.
pub struct Upcase {
    map: Box<[u16]>,
}

impl Upcase {
    /// Expands a table as stored on disk (compressed or not). Units past the table map to
    /// themselves.
    pub fn from_units(units: &[u16]) -> Upcase {
        let mut map: Vec<u16> = (0..=u16::MAX).collect();
        let mut next: usize = 0;
        let mut i = 0;
        while i < units.len() && next < map.len() {
            if units[i] == 0xFFFF && i + 1 < units.len() {
                next += units[i + 1] as usize;
                i += 2;
            } else {
                map[next] = units[i];
                next += 1;
                i += 1;
            }
        }
        Upcase {
            map: map.into_boxed_slice(),
        }
    }

    /// Expands a table from its little-endian bytes.
    pub fn from_bytes(bytes: &[u8]) -> Upcase {
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|p| u16::from_le_bytes([p[0], p[1]]))
            .collect();
        Upcase::from_units(&units)
    }

    /// The table mkfs.exfat writes (and [`crate::format`] too).
    pub fn standard() -> Upcase {
        Upcase::from_units(&upcase_table::STANDARD)
    }

    /// The upper-case form of `unit`.
    pub fn upcase(&self, unit: u16) -> u16 {
        self.map[unit as usize]
    }

    /// The comparison key of a name: its units mapped through the table.
    pub fn key(&self, name: &[u16]) -> Box<[u16]> {
        name.iter().map(|&u| self.upcase(u)).collect()
    }
}

/// The standard compressed table as bytes, for the formatter.
pub fn standard_bytes() -> Vec<u8> {
    upcase_table::STANDARD
        .iter()
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

/// The table checksum kept in its directory entry (specification 7.2.2).
pub fn checksum(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0u32, |sum, &b| sum.rotate_right(1).wrapping_add(b as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_table_folds_ascii_latin_and_greek_and_has_its_known_checksum() {
        assert_eq!(checksum(&standard_bytes()), 0xE619_D30D);
        assert_eq!(standard_bytes().len(), 5836);
        let up = Upcase::standard();
        assert_eq!(up.upcase(b'a' as u16), b'A' as u16);
        assert_eq!(up.upcase(b'A' as u16), b'A' as u16);
        assert_eq!(up.upcase(0xE9), 0xC9); // é
        assert_eq!(up.upcase(0x3B1), 0x391); // α
        assert_eq!(up.upcase(0x4E2D), 0x4E2D); // 中
        assert_eq!(up.upcase(0xD83D), 0xD83D); // surrogates map to themselves
    }
}
