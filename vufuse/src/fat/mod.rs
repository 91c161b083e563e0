//! FAT12/16/32 driver (being written; see issue 3).
