//! exFAT timestamps: local date and time in 2-second steps, a 10 ms increment (0 to 199)
//! for creation and modification, and a UTC offset in 15-minute steps whose top bit says it
//! is valid. The driver writes UTC with offset 0 marked valid; it reads any offset, and a
//! timestamp without one as UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A timestamp as stored: the packed date/time, the 10 ms increment, the UTC offset byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Bits 0-4 seconds/2, 5-10 minute, 11-15 hour, 16-20 day, 21-24 month, 25-31 year-1980.
    pub packed: u32,
    /// Hundredths of a second past `packed` (0..=199).
    pub ms10: u8,
    /// UTC offset: bit 7 valid, bits 0-6 a signed count of 15 minutes.
    pub utc: u8,
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// First and last instants exFAT can store (1980-01-01 to 2107-12-31 23:59:59.99).
fn range() -> (i64, i64) {
    let first = days_from_civil(1980, 1, 1) * 86400;
    let last = days_from_civil(2107, 12, 31) * 86400 + 86399;
    (first, last)
}

/// The instant a stored timestamp names. Out-of-range fields are clamped, never rejected.
pub fn decode(stamp: Stamp) -> SystemTime {
    let p = stamp.packed;
    let year = 1980 + (p >> 25) as i64;
    let month = ((p >> 21) & 0xF).clamp(1, 12) as i64;
    let day = ((p >> 16) & 0x1F).max(1) as i64;
    let hour = ((p >> 11) & 0x1F).min(23) as i64;
    let minute = ((p >> 5) & 0x3F).min(59) as i64;
    let second = ((p & 0x1F) * 2).min(58) as i64;
    let ms10 = stamp.ms10.min(199) as i64;
    let mut secs = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    secs += ms10 / 100;
    if stamp.utc & 0x80 != 0 {
        // Sign-extend the 7-bit count of quarter hours.
        let quarters = ((stamp.utc << 1) as i8 >> 1) as i64;
        secs -= quarters * 15 * 60;
    }
    let nanos = (ms10 % 100) as u32 * 10_000_000;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos as u64)
    }
}

/// The stored form of `time`, in UTC, clamped to the range exFAT can hold.
pub fn encode(time: SystemTime) -> Stamp {
    let (first, last) = range();
    let (secs, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs().min(i64::MAX as u64) as i64, d.subsec_nanos()),
        Err(_) => (first, 0),
    };
    let (secs, nanos) = if secs < first {
        (first, 0)
    } else if secs > last {
        (last, 990_000_000)
    } else {
        (secs, nanos)
    };
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (year, month, day) = civil_from_days(days);
    let packed = ((year - 1980) as u32) << 25
        | (month as u32) << 21
        | (day as u32) << 16
        | ((rem / 3600) as u32) << 11
        | (((rem % 3600) / 60) as u32) << 5
        | ((rem % 60) / 2) as u32;
    let ms10 = ((rem % 2) as u32 * 100 + nanos / 10_000_000) as u8;
    Stamp {
        packed,
        ms10,
        utc: 0x80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_ten_milliseconds_and_honours_utc_offsets() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_001, 230_000_000);
        let s = encode(t);
        assert_eq!(s.ms10, 123);
        assert_eq!(decode(s), t);
        // 12:00 local at UTC+2 (8 quarters) is 10:00 UTC.
        let local = encode(UNIX_EPOCH + Duration::from_secs(12 * 3600 + 86400 * 365 * 20));
        let shifted = Stamp {
            utc: 0x80 | 8,
            ..local
        };
        assert_eq!(
            decode(local).duration_since(decode(shifted)).unwrap(),
            Duration::from_secs(7200)
        );
        // UTC-1 (-4 quarters, 7-bit two's complement 0x7C).
        let west = Stamp {
            utc: 0x80 | 0x7C,
            ..local
        };
        assert_eq!(
            decode(west).duration_since(decode(local)).unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(encode(UNIX_EPOCH).packed, 1 << 21 | 1 << 16);
    }
}
