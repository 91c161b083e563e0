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

/// A byte-count progress bar, with a file count where the work is files, that appears
/// after one second.
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    wanted: bool,
    shown: bool,
    /// Files done and in all, when counted.
    files: Option<(u64, u64)>,
}

impl Progress {
    /// A bar for `total` bytes of work described by `what`.
    pub fn new(what: &str, total: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} {prefix}[{bar:25}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Progress {
            bar,
            started: Instant::now(),
            wanted: !quiet() && std::io::stderr().is_terminal(),
            shown: false,
            files: None,
        }
    }

    /// A bar for `total` bytes in `files` files: it shows "done/files files" too.
    pub fn with_files(what: &str, total: u64, files: u64) -> Progress {
        let mut progress = Progress::new(what, total);
        progress.files = Some((0, files));
        progress.show_files();
        progress
    }

    /// Records one more file (or link, or node) made.
    pub fn file_done(&mut self) {
        if let Some((done, _)) = &mut self.files {
            *done += 1;
            self.show_files();
        }
    }

    fn show_files(&self) {
        if let Some((done, all)) = self.files {
            self.bar.set_prefix(format!("{done}/{all} files "));
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

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn files_are_counted_beside_bytes() {
        let mut p = Progress::with_files("copying", 100, 3);
        assert_eq!(p.files, Some((0, 3)));
        p.advance(40);
        p.file_done();
        p.file_done();
        assert_eq!(p.files, Some((2, 3)));
        assert_eq!(p.bar.position(), 40);
        assert_eq!(p.bar.prefix(), "2/3 files ");
        assert_eq!(Progress::new("x", 1).files, None);
    }
}
