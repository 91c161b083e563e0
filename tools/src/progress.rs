//! Progress bars for copies and builds: drawn on stderr only when it is a
//! terminal, not with `--quiet`, and only once the work has taken a second.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences progress bars and informational messages (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// True under `--quiet`.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Prints an informational line on stderr unless `--quiet`.
pub fn note(message: &str) {
    if !quiet() {
        eprintln!("vuimg: {}", crate::util::without_os_error_codes(message));
    }
}

/// A byte-count progress bar that appears after one second.
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    wanted: bool,
    shown: bool,
}

impl Progress {
    /// A bar for `total` bytes of work described by `what`.
    pub fn new(what: &str, total: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:25}] {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Progress {
            bar,
            started: Instant::now(),
            wanted: !quiet() && std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Records `bytes` more done.
    pub fn advance(&mut self, bytes: u64) {
        self.bar.inc(bytes);
        if self.wanted && !self.shown && self.started.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
    }

    /// Changes the label.
    pub fn set_message(&self, what: &str) {
        self.bar.set_message(what.to_string());
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
