//! Fuzzes the vufs layer format parser (vstat side files, as the C vufs writes them): any
//! bytes parse to something, and what parsing gave serialises and parses back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vufs::layer::VStat;

fuzz_target!(|data: &[u8]| {
    let v = VStat::parse(data);
    let again = VStat::parse(v.render().as_bytes());
    assert_eq!(v, again);
});
