//! Partition type names shared by MBR codes and GPT GUIDs, so users can say
//! `linux`, `fat32`, `efi` or `swap` whatever the table is.

use uuid::{uuid, Uuid};

/// The type of one partition, in the vocabulary of its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartType {
    /// MBR system id byte.
    Mbr(u8),
    /// GPT partition type GUID.
    Gpt(Uuid),
}

struct Known {
    names: &'static [&'static str],
    mbr: Option<u8>,
    gpt: Option<Uuid>,
    /// sgdisk's 4-digit code, for GPT convenience.
    sgdisk: Option<u16>,
}

const KNOWN: &[Known] = &[
    Known {
        names: &["linux", "linux-filesystem"],
        mbr: Some(0x83),
        gpt: Some(uuid!("0FC63DAF-8483-4772-8E79-3D69D8477DE4")),
        sgdisk: Some(0x8300),
    },
    Known {
        names: &["swap", "linux-swap"],
        mbr: Some(0x82),
        gpt: Some(uuid!("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F")),
        sgdisk: Some(0x8200),
    },
    Known {
        names: &["efi", "esp", "uefi"],
        mbr: Some(0xEF),
        gpt: Some(uuid!("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")),
        sgdisk: Some(0xEF00),
    },
    Known {
        names: &["fat32", "vfat", "w95-fat32-lba"],
        mbr: Some(0x0C),
        gpt: Some(uuid!("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")),
        sgdisk: Some(0x0700),
    },
    Known {
        names: &["fat16", "w95-fat16-lba"],
        mbr: Some(0x0E),
        gpt: None,
        sgdisk: None,
    },
    Known {
        names: &["fat12"],
        mbr: Some(0x01),
        gpt: None,
        sgdisk: None,
    },
    Known {
        names: &["ntfs", "exfat", "msdata", "basic-data"],
        mbr: Some(0x07),
        gpt: Some(uuid!("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")),
        sgdisk: Some(0x0700),
    },
    Known {
        names: &["lvm"],
        mbr: Some(0x8E),
        gpt: Some(uuid!("E6D6D379-F507-44C2-A23C-238F2A3DF928")),
        sgdisk: Some(0x8E00),
    },
    Known {
        names: &["raid"],
        mbr: Some(0xFD),
        gpt: Some(uuid!("A19D880F-05FC-4D3B-A006-743F0F84911E")),
        sgdisk: Some(0xFD00),
    },
    Known {
        names: &["extended"],
        mbr: Some(0x05),
        gpt: None,
        sgdisk: None,
    },
    Known {
        names: &["extended-lba"],
        mbr: Some(0x0F),
        gpt: None,
        sgdisk: None,
    },
    Known {
        names: &["bios-boot"],
        mbr: None,
        gpt: Some(uuid!("21686148-6449-6E6F-744E-656564454649")),
        sgdisk: Some(0xEF02),
    },
    Known {
        names: &["linux-home", "home"],
        mbr: None,
        gpt: Some(uuid!("933AC7E1-2EB4-4F13-B844-0E14E2AEF915")),
        sgdisk: Some(0x8302),
    },
    Known {
        names: &["xbootldr"],
        mbr: None,
        gpt: Some(uuid!("BC13C2FF-59E6-4262-A352-B275FD6F7172")),
        sgdisk: Some(0xEA00),
    },
    Known {
        names: &["root-x86-64"],
        mbr: None,
        gpt: Some(uuid!("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")),
        sgdisk: Some(0x8304),
    },
    Known {
        names: &["root-arm64"],
        mbr: None,
        gpt: Some(uuid!("B921B045-1DF0-41C3-AF44-4C6F280D3FAE")),
        sgdisk: Some(0x8305),
    },
];

/// MBR system ids that mark an extended (container) partition.
pub fn is_extended_code(code: u8) -> bool {
    matches!(code, 0x05 | 0x0F | 0x85)
}

/// MBR system id of a GPT protective entry.
pub const PROTECTIVE_MBR_CODE: u8 = 0xEE;

impl PartType {
    /// Parses a type for an MBR (`gpt == false`) or GPT table: a name such as
    /// `linux`, `fat32`, `efi`, `swap`; an MBR hex code (`83`, `0x0c`); a GPT
    /// GUID; or sgdisk's 4-digit code (`8300`, `ef00`).
    pub fn parse(text: &str, gpt: bool) -> Result<PartType, String> {
        let lower = text.trim().to_ascii_lowercase();
        if let Some(known) = KNOWN.iter().find(|k| k.names.contains(&lower.as_str())) {
            return match (gpt, known.mbr, known.gpt) {
                (false, Some(code), _) => Ok(PartType::Mbr(code)),
                (true, _, Some(guid)) => Ok(PartType::Gpt(guid)),
                _ => Err(format!(
                    "type {text:?} has no {} equivalent",
                    if gpt { "GPT" } else { "MBR" }
                )),
            };
        }
        let hex = lower.strip_prefix("0x").unwrap_or(&lower);
        if gpt {
            if let Ok(guid) = Uuid::parse_str(&lower) {
                return Ok(PartType::Gpt(guid));
            }
            if hex.len() == 4 {
                if let Ok(code) = u16::from_str_radix(hex, 16) {
                    if let Some(guid) = KNOWN
                        .iter()
                        .find(|k| k.sgdisk == Some(code))
                        .and_then(|k| k.gpt)
                    {
                        return Ok(PartType::Gpt(guid));
                    }
                }
            }
        } else if (1..=2).contains(&hex.len()) {
            if let Ok(code) = u8::from_str_radix(hex, 16) {
                if code != 0 {
                    return Ok(PartType::Mbr(code));
                }
            }
        }
        Err(format!(
            "unknown {} partition type {text:?} (try linux, fat32, efi, swap, {})",
            if gpt { "GPT" } else { "MBR" },
            if gpt {
                "a GUID or an sgdisk code like 8300"
            } else {
                "or a hex code like 83"
            }
        ))
    }

    /// The first well-known name of this type, if any.
    pub fn name(&self) -> Option<&'static str> {
        KNOWN
            .iter()
            .find(|k| match self {
                PartType::Mbr(code) => k.mbr == Some(*code),
                PartType::Gpt(guid) => k.gpt == Some(*guid),
            })
            .map(|k| k.names[0])
    }

    /// The type as sfdisk prints it: a bare lowercase hex code for MBR, an
    /// uppercase GUID for GPT.
    pub fn sfdisk_string(&self) -> String {
        match self {
            PartType::Mbr(code) => format!("{code:x}"),
            PartType::Gpt(guid) => guid.hyphenated().to_string().to_ascii_uppercase(),
        }
    }

    /// True for an MBR extended container.
    pub fn is_extended(&self) -> bool {
        matches!(self, PartType::Mbr(code) if is_extended_code(*code))
    }

    /// True for types that usually hold a FAT filesystem.
    pub fn is_fat(&self) -> bool {
        match self {
            PartType::Mbr(code) => matches!(code, 0x01 | 0x04 | 0x06 | 0x0B | 0x0C | 0x0E | 0xEF),
            PartType::Gpt(guid) => {
                *guid == uuid!("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")
                    || *guid == uuid!("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
            }
        }
    }
}

impl std::fmt::Display for PartType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.sfdisk_string()),
            None => f.write_str(&self.sfdisk_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_codes_and_guids() {
        assert_eq!(PartType::parse("linux", false), Ok(PartType::Mbr(0x83)));
        assert_eq!(PartType::parse("FAT32", false), Ok(PartType::Mbr(0x0C)));
        assert_eq!(PartType::parse("0x0c", false), Ok(PartType::Mbr(0x0C)));
        assert_eq!(PartType::parse("c", false), Ok(PartType::Mbr(0x0C)));
        assert!(PartType::parse("0", false).is_err());
        assert!(PartType::parse("bios-boot", false).is_err());
        let efi = PartType::parse("efi", true).unwrap();
        assert_eq!(efi.sfdisk_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(PartType::parse("ef00", true), Ok(efi));
        assert_eq!(
            PartType::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93b", true),
            Ok(efi)
        );
        assert_eq!(efi.name(), Some("efi"));
        assert!(PartType::parse("nonsense", true).is_err());
        assert!(PartType::Mbr(0x0F).is_extended());
        assert_eq!(PartType::Mbr(0x83).sfdisk_string(), "83");
    }
}
