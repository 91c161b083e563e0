//! On-disk directory entries: 8.3 entries, long-name (LFN) entries, name
//! rules, short-name generation and FAT timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Size of one directory slot.
pub const SLOT: usize = 32;
/// Attribute bits.
pub const ATTR_READ_ONLY: u8 = 0x01;
/// Hidden file.
pub const ATTR_HIDDEN: u8 = 0x02;
/// System file.
pub const ATTR_SYSTEM: u8 = 0x04;
/// Volume label entry.
pub const ATTR_VOLUME_ID: u8 = 0x08;
/// Directory.
pub const ATTR_DIRECTORY: u8 = 0x10;
/// Archive bit (set on every change).
pub const ATTR_ARCHIVE: u8 = 0x20;
/// The attribute value that marks an LFN slot.
pub const ATTR_LFN: u8 = 0x0F;
/// First byte of a deleted slot.
pub const DELETED: u8 = 0xE5;
/// NT reserved byte: the base name is lowercase.
const CASE_LOWER_BASE: u8 = 0x08;
/// NT reserved byte: the extension is lowercase.
const CASE_LOWER_EXT: u8 = 0x10;
/// Longest long name in UTF-16 units.
pub const MAX_NAME_UNITS: usize = 255;

/// A decoded 8.3 entry (the slot that carries the metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShortEntry {
    /// Name and extension, space padded, as stored.
    pub name: [u8; 11],
    /// Attribute bits.
    pub attr: u8,
    /// NT case flags.
    pub case: u8,
    /// Creation time.
    pub created: SystemTime,
    /// Last access (date only on disk).
    pub accessed: SystemTime,
    /// Last modification.
    pub modified: SystemTime,
    /// First cluster (0 for an empty file).
    pub cluster: u32,
    /// Size in bytes (0 for directories).
    pub size: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl ShortEntry {
    /// Decodes a slot known not to be free, deleted or LFN.
    pub fn decode(slot: &[u8]) -> ShortEntry {
        let mut name = [0u8; 11];
        name.copy_from_slice(&slot[..11]);
        if name[0] == 0x05 {
            name[0] = 0xE5; // the KANJI escape for a leading 0xE5
        }
        let cluster = ((le16(slot, 20) as u32) << 16) | le16(slot, 26) as u32;
        ShortEntry {
            name,
            attr: slot[11],
            case: slot[12],
            created: from_fat_time(le16(slot, 16), le16(slot, 14), slot[13]),
            accessed: from_fat_time(le16(slot, 18), 0, 0),
            modified: from_fat_time(le16(slot, 24), le16(slot, 22), 0),
            cluster,
            size: u32::from_le_bytes(slot[28..32].try_into().expect("4 bytes")),
        }
    }

    /// Encodes into a 32-byte slot.
    pub fn encode(&self) -> [u8; SLOT] {
        let mut s = [0u8; SLOT];
        s[..11].copy_from_slice(&self.name);
        if s[0] == 0xE5 {
            s[0] = 0x05;
        }
        s[11] = self.attr;
        s[12] = self.case & (CASE_LOWER_BASE | CASE_LOWER_EXT);
        let (cdate, ctime, ctenth) = to_fat_time(self.created);
        s[13] = ctenth;
        s[14..16].copy_from_slice(&ctime.to_le_bytes());
        s[16..18].copy_from_slice(&cdate.to_le_bytes());
        s[18..20].copy_from_slice(&to_fat_time(self.accessed).0.to_le_bytes());
        s[20..22].copy_from_slice(&((self.cluster >> 16) as u16).to_le_bytes());
        let (mdate, mtime, _) = to_fat_time(self.modified);
        s[22..24].copy_from_slice(&mtime.to_le_bytes());
        s[24..26].copy_from_slice(&mdate.to_le_bytes());
        s[26..28].copy_from_slice(&(self.cluster as u16).to_le_bytes());
        s[28..32].copy_from_slice(&self.size.to_le_bytes());
        s
    }

    /// The name to show when there is no long name: `base.ext`, lowercased
    /// where the NT case flags say so.
    pub fn display_name(&self) -> String {
        let decode = |bytes: &[u8], lower: bool| -> String {
            let text: String = bytes
                .iter()
                .map(|&b| {
                    if b.is_ascii() {
                        b as char
                    } else {
                        char::from(b)
                    }
                })
                .collect();
            let text = text.trim_end_matches(' ').to_string();
            if lower {
                text.to_ascii_lowercase()
            } else {
                text
            }
        };
        let base = decode(&self.name[..8], self.case & CASE_LOWER_BASE != 0);
        let ext = decode(&self.name[8..], self.case & CASE_LOWER_EXT != 0);
        if ext.is_empty() {
            base
        } else {
            format!("{base}.{ext}")
        }
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIRECTORY != 0
    }
}

/// Checksum of an 8.3 name, stored in each of its LFN slots.
pub fn lfn_checksum(name: &[u8; 11]) -> u8 {
    name.iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// The 13 UTF-16 units an LFN slot carries, and its ordinal and checksum.
pub struct LfnPart {
    /// Sequence number (1-based), with 0x40 on the last (first stored) part.
    pub ordinal: u8,
    /// Checksum of the short name.
    pub checksum: u8,
    /// Name units (0x0000-terminated, 0xFFFF-padded).
    pub units: [u16; 13],
}

const LFN_OFFSETS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

impl LfnPart {
    /// Decodes an LFN slot.
    pub fn decode(slot: &[u8]) -> LfnPart {
        let mut units = [0u16; 13];
        for (u, &at) in units.iter_mut().zip(LFN_OFFSETS.iter()) {
            *u = le16(slot, at);
        }
        LfnPart {
            ordinal: slot[0],
            checksum: slot[13],
            units,
        }
    }
}

/// Encodes a long name as LFN slots, in on-disk order (last part first).
pub fn encode_lfn(name: &[u16], checksum: u8) -> Vec<[u8; SLOT]> {
    let parts = name.len().div_ceil(13);
    let mut slots = Vec::with_capacity(parts);
    for part in (0..parts).rev() {
        let mut s = [0u8; SLOT];
        s[0] = (part as u8 + 1) | if part == parts - 1 { 0x40 } else { 0 };
        s[11] = ATTR_LFN;
        s[13] = checksum;
        for (i, &at) in LFN_OFFSETS.iter().enumerate() {
            let index = part * 13 + i;
            let unit = match index.cmp(&name.len()) {
                std::cmp::Ordering::Less => name[index],
                std::cmp::Ordering::Equal => 0x0000,
                std::cmp::Ordering::Greater => 0xFFFF,
            };
            s[at..at + 2].copy_from_slice(&unit.to_le_bytes());
        }
        slots.push(s);
    }
    slots
}

/// Characters a long name may not contain.
fn forbidden_in_long(c: char) -> bool {
    (c as u32) < 0x20 || matches!(c, '"' | '*' | '/' | ':' | '<' | '>' | '?' | '\\' | '|')
}

/// Characters allowed in a short name (besides A-Z and 0-9).
fn allowed_in_short(c: u8) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || c >= 0x80 || b"$%'-_@~`!(){}^#&".contains(&c)
}

/// Checks a new name; `EINVAL` for forbidden characters, `ENAMETOOLONG` past 255 units.
pub fn check_long_name(name: &str) -> Result<Vec<u16>, vudev::Errno> {
    if name.is_empty() || name == "." || name == ".." || name.chars().any(forbidden_in_long) {
        return Err(vudev::Errno::EINVAL);
    }
    // Windows and Linux vfat drop trailing dots and spaces; refuse them instead
    // of silently storing a different name.
    if name.ends_with(['.', ' ']) {
        return Err(vudev::Errno::EINVAL);
    }
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > MAX_NAME_UNITS {
        return Err(vudev::Errno::ENAMETOOLONG);
    }
    Ok(units)
}

/// The case-insensitive key names are compared by.
pub fn name_key(name: &str) -> String {
    name.to_uppercase()
}

/// If `name` fits 8.3 exactly (with at most a per-part lowercase flag), its
/// short form and case flags; then no long name is stored.
pub fn exact_short_name(name: &str) -> Option<([u8; 11], u8)> {
    if !name.is_ascii() || name.starts_with('.') {
        return None;
    }
    let (base, ext) = match name.rfind('.') {
        Some(dot) => (&name[..dot], &name[dot + 1..]),
        None => (name, ""),
    };
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || ext.contains('.') {
        return None;
    }
    let part_case = |part: &str| -> Option<bool> {
        let has_lower = part.bytes().any(|b| b.is_ascii_lowercase());
        let has_upper = part.bytes().any(|b| b.is_ascii_uppercase());
        match (has_lower, has_upper) {
            (true, true) => None,
            (lower, _) => Some(lower),
        }
    };
    let lower_base = part_case(base)?;
    let lower_ext = part_case(ext)?;
    let mut short = [b' '; 11];
    for (i, b) in base.bytes().enumerate() {
        let up = b.to_ascii_uppercase();
        if !allowed_in_short(up) {
            return None;
        }
        short[i] = up;
    }
    for (i, b) in ext.bytes().enumerate() {
        let up = b.to_ascii_uppercase();
        if !allowed_in_short(up) {
            return None;
        }
        short[8 + i] = up;
    }
    let case =
        if lower_base { CASE_LOWER_BASE } else { 0 } | if lower_ext { CASE_LOWER_EXT } else { 0 };
    Some((short, case))
}

/// Generates a unique short name for a long `name`, Windows-style: the basis
/// with `~1`..`~4`, then two basis characters, four hex digits of a hash of
/// the long name and `~1`..`~9`. `taken` says whether a short name exists.
pub fn generate_short_name(name: &str, taken: impl Fn(&[u8; 11]) -> bool) -> Option<[u8; 11]> {
    let clean = |s: &str| -> Vec<u8> {
        s.chars()
            .filter(|&c| c != ' ' && c != '.')
            .map(|c| {
                let up = c.to_ascii_uppercase();
                if up.is_ascii() && allowed_in_short(up as u8) {
                    up as u8
                } else {
                    b'_'
                }
            })
            .collect()
    };
    let trimmed = name.trim_start_matches('.');
    let (base, ext) = match trimmed.rfind('.') {
        Some(dot) => (&trimmed[..dot], &trimmed[dot + 1..]),
        None => (trimmed, ""),
    };
    let mut base = clean(base);
    if base.is_empty() {
        base = b"_".to_vec();
    }
    let ext = clean(ext);
    let mut short = [b' '; 11];
    for (i, &b) in ext.iter().take(3).enumerate() {
        short[8 + i] = b;
    }
    let with_tail = |prefix: &[u8], tail: &str| -> [u8; 11] {
        let mut s = short;
        let keep = prefix.len().min(8 - tail.len());
        s[..keep].copy_from_slice(&prefix[..keep]);
        s[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        for b in s[keep + tail.len()..8].iter_mut() {
            *b = b' ';
        }
        s
    };
    for n in 1..=4 {
        let candidate = with_tail(&base, &format!("~{n}"));
        if !taken(&candidate) {
            return Some(candidate);
        }
    }
    let hash = name
        .encode_utf16()
        .fold(0u32, |h, u| h.wrapping_mul(31).wrapping_add(u as u32));
    let mixed = (hash ^ (hash >> 16)) as u16;
    let prefix: Vec<u8> = base
        .iter()
        .take(2)
        .copied()
        .chain(format!("{mixed:04X}").bytes())
        .collect();
    for n in 1..=9 {
        let candidate = with_tail(&prefix, &format!("~{n}"));
        if !taken(&candidate) {
            return Some(candidate);
        }
    }
    // Extremely crowded directory: walk the hash space.
    for salt in 1..=0xFFFFu32 {
        let value = (mixed as u32).wrapping_add(salt) as u16;
        let prefix: Vec<u8> = base
            .iter()
            .take(2)
            .copied()
            .chain(format!("{value:04X}").bytes())
            .collect();
        let candidate = with_tail(&prefix, "~1");
        if !taken(&candidate) {
            return Some(candidate);
        }
    }
    None
}

// ---- timestamps: FAT keeps local time; like the C fusefatfs (TZ=UTC0) we read it as UTC ----

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Converts FAT date, time and 10 ms units to a `SystemTime` (UTC).
pub fn from_fat_time(date: u16, time: u16, tenths: u8) -> SystemTime {
    if date == 0 {
        return UNIX_EPOCH + Duration::from_secs(days_from_civil(1980, 1, 1) as u64 * 86400);
    }
    let year = 1980 + (date >> 9) as i64;
    let month = ((date >> 5) & 0xF).clamp(1, 12) as u32;
    let day = (date & 0x1F).clamp(1, 31) as u32;
    let secs = ((time >> 11) as u64).min(23) * 3600
        + ((time >> 5) & 0x3F).min(59) as u64 * 60
        + (time & 0x1F).min(29) as u64 * 2;
    let days = days_from_civil(year, month, day) as u64;
    UNIX_EPOCH
        + Duration::from_secs(days * 86400 + secs)
        + Duration::from_millis(tenths.min(199) as u64 * 10)
}

/// Converts a `SystemTime` to FAT date, time and 10 ms units (clamped to 1980..=2107).
pub fn to_fat_time(t: SystemTime) -> (u16, u16, u8) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let min = days_from_civil(1980, 1, 1) as u64 * 86400;
    let max = days_from_civil(2107, 12, 31) as u64 * 86400 + 86399;
    let secs = since.as_secs().clamp(min, max);
    let (y, m, d) = civil_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16;
    let time =
        (((rem / 3600) as u16) << 11) | ((((rem / 60) % 60) as u16) << 5) | ((rem % 60) / 2) as u16;
    let tenths = ((rem % 2) * 100 + (since.subsec_millis() / 10) as u64) as u8;
    (date, time, tenths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_at_two_second_resolution() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_001) + Duration::from_millis(530);
        let (d, tm, tenths) = to_fat_time(t);
        assert_eq!(
            from_fat_time(d, tm, tenths),
            UNIX_EPOCH + Duration::from_millis(1_700_000_001_530)
        );
        assert_eq!(
            from_fat_time(d, tm, 0),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        let old = to_fat_time(UNIX_EPOCH);
        assert_eq!(old.0, (1 << 5) | 1, "clamped to 1980-01-01");
    }

    #[test]
    fn short_names_and_case_flags() {
        assert_eq!(exact_short_name("README.TXT"), Some((*b"README  TXT", 0)));
        assert_eq!(
            exact_short_name("readme.txt"),
            Some((*b"README  TXT", CASE_LOWER_BASE | CASE_LOWER_EXT))
        );
        assert_eq!(exact_short_name("Readme.txt"), None);
        assert_eq!(exact_short_name("a.b.c"), None);
        assert_eq!(exact_short_name("toolongname"), None);
        assert_eq!(exact_short_name("x+y"), None);
        let e = ShortEntry {
            name: *b"README  TXT",
            attr: 0,
            case: CASE_LOWER_EXT,
            created: UNIX_EPOCH,
            accessed: UNIX_EPOCH,
            modified: UNIX_EPOCH,
            cluster: 0,
            size: 0,
        };
        assert_eq!(e.display_name(), "README.txt");
    }

    #[test]
    fn generated_short_names_are_unique_and_valid() {
        let mut taken = std::collections::HashSet::new();
        for i in 0..5000 {
            let name = format!("file_{i:05}.dat");
            let short = generate_short_name(&name, |s| taken.contains(s)).unwrap();
            assert!(
                short.iter().all(|&b| b == b' ' || allowed_in_short(b)),
                "{:?}",
                String::from_utf8_lossy(&short)
            );
            assert!(
                taken.insert(short),
                "duplicate {:?}",
                String::from_utf8_lossy(&short)
            );
        }
        assert_eq!(
            &generate_short_name("My Document.docx", |_| false).unwrap(),
            b"MYDOCU~1DOC"
        );
        assert_eq!(
            &generate_short_name(".bashrc", |_| false).unwrap(),
            b"BASHRC~1   "
        );
    }

    #[test]
    fn lfn_encoding_round_trips() {
        let name: Vec<u16> = "A rather long file name.txt".encode_utf16().collect();
        let slots = encode_lfn(&name, 0x42);
        assert_eq!(slots.len(), 3);
        assert_eq!(slots[0][0], 0x43);
        let mut units = Vec::new();
        for s in slots.iter().rev() {
            let p = LfnPart::decode(s);
            assert_eq!(p.checksum, 0x42);
            units.extend(
                p.units
                    .iter()
                    .copied()
                    .take_while(|&u| u != 0 && u != 0xFFFF),
            );
        }
        assert_eq!(units, name);
        assert!(check_long_name("a/b").is_err());
        assert!(check_long_name("trailing.").is_err());
        assert_eq!(
            check_long_name(&"x".repeat(256)),
            Err(vudev::Errno::ENAMETOOLONG)
        );
    }
}
