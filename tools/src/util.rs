//! Shared helpers: the failure type every command returns, sizes, and
//! deterministic ids for reproducible images.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A failure to report: message for stderr, exit status 1.
#[derive(Debug)]
pub struct Failure(pub String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

/// What commands return.
pub type Outcome<T = ()> = Result<T, Failure>;

/// Builds a [`Failure`] from a format string.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => { $crate::util::Failure(format!($($arg)*)) };
}

/// `message` without the " (os error N)" that Rust's I/O errors append: the text before it
/// already names the error, as the C tools print it.
pub fn without_os_error_codes(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" (os error ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + " (os error ".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && tail[digits..].starts_with(')') {
            rest = &tail[digits + 1..];
        } else {
            out.push_str(" (os error ");
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Writes to standard output. A reader that went away (`vuimg ls IMG | head`) ends vuimg at
/// once, quietly and with status 0 (what is left to print is not wanted; an image being
/// changed is complete before anything is printed about it); any other error is a failure.
pub fn write_out(out: &mut dyn std::io::Write, args: std::fmt::Arguments) -> Outcome {
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(fail!("standard output: {e}")),
    }
}

/// `println!` through [`write_out`]: evaluates to an [`Outcome`].
#[macro_export]
macro_rules! outln {
    () => { $crate::util::write_out(&mut std::io::stdout().lock(), format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::util::write_out(
            &mut std::io::stdout().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        )
    };
}

/// `print!` through [`write_out`]: evaluates to an [`Outcome`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::util::write_out(&mut std::io::stdout().lock(), format_args!($($arg)*))
    };
}

/// Parses a byte size: a number with an optional K/M/G/T suffix; bare numbers are bytes.
pub fn parse_bytes(text: &str) -> Outcome<u64> {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| Failure(format!("size {text:?} is too large")));
    }
    vudev::parse_size(text).map_err(Failure)
}

/// A byte count for people: 1.5M, 64K.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// The instant `secs` seconds after the epoch.
pub fn epoch_time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// `SOURCE_DATE_EPOCH` from the environment, if set and valid.
pub fn source_date_epoch() -> Outcome<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| fail!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        _ => Ok(None),
    }
}

/// A deterministic stream of bytes (splitmix64) for ids of reproducible images.
pub struct IdSource(u64);

impl IdSource {
    /// A stream seeded by `seed` (the epoch).
    pub fn new(seed: u64) -> IdSource {
        IdSource(seed ^ 0x7675_696d_6720_6964)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A version-4-shaped UUID from the stream.
    pub fn uuid(&mut self) -> uuid::Uuid {
        let value = (self.next_u64() as u128) << 64 | self.next_u64() as u128;
        uuid::Builder::from_random_bytes(value.to_be_bytes()).into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::without_os_error_codes;

    #[test]
    fn os_error_codes_are_dropped_and_other_text_kept() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let message = format!("a.img: {io}; b: {io}");
        assert_eq!(
            without_os_error_codes(&message),
            "a.img: No such file or directory; b: No such file or directory"
        );
        assert_eq!(without_os_error_codes("x (os error )"), "x (os error )");
        assert_eq!(without_os_error_codes("x (os error 5"), "x (os error 5");
    }
}
