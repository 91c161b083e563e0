//! Why an image could not be opened or created.

use std::path::PathBuf;
use vudev::lock::LockError;
use vudev::Errno;

/// An image that could not be opened or created, naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file itself could not be opened, read or written.
    #[error("{path}: {errno}")]
    Io {
        /// The image file.
        path: PathBuf,
        /// What the system said.
        errno: Errno,
    },
    /// The file does not hold a valid image of the format: a bad header or table.
    #[error("{path}: not a valid {format} image: {reason}")]
    Corrupt {
        /// The image file.
        path: PathBuf,
        /// The format it claims (or was forced to) be.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A valid image using a feature this crate does not implement.
    #[error("{path}: {format} image uses an unsupported feature: {feature}")]
    Unsupported {
        /// The image file.
        path: PathBuf,
        /// Its format.
        format: &'static str,
        /// The feature.
        feature: String,
    },
    /// The backing file of an overlay could not be opened.
    #[error("{path}: backing file {backing}: {source}")]
    Backing {
        /// The overlay.
        path: PathBuf,
        /// The backing file, as resolved.
        backing: PathBuf,
        /// Why it failed.
        source: Box<FormatError>,
    },
    /// The backing file changed since the overlay was made (UML COW: newer mtime or a
    /// different size); opening anyway needs `force`.
    #[error("{path}: backing file {backing} changed since the overlay was made: {detail} (use force to open anyway)")]
    BackingChanged {
        /// The overlay.
        path: PathBuf,
        /// The backing file.
        backing: PathBuf,
        /// What differs.
        detail: String,
    },
    /// Backing files refer to each other, or the chain is too deep.
    #[error("{path}: backing chain loops or is deeper than {max} images")]
    ChainLoop {
        /// The image where the loop was noticed.
        path: PathBuf,
        /// The depth limit.
        max: usize,
    },
    /// Another open holds a conflicting lock on the file.
    #[error("{path}: image is locked ({lock:?})")]
    Locked {
        /// The image file.
        path: PathBuf,
        /// The lock failure.
        lock: LockError,
    },
    /// Writing was requested on an image that can only be read.
    #[error("{path}: cannot be opened read-write: {reason}")]
    ReadOnly {
        /// The image file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl FormatError {
    /// The errno a front end reports for this error.
    pub fn errno(&self) -> Errno {
        match self {
            FormatError::Io { errno, .. } => *errno,
            FormatError::Corrupt { .. } => Errno::EUCLEAN,
            FormatError::Unsupported { .. } => Errno::EOPNOTSUPP,
            FormatError::Backing { source, .. } => source.errno(),
            FormatError::BackingChanged { .. } => Errno::from_raw(libc::ESTALE),
            FormatError::ChainLoop { .. } => Errno::ELOOP,
            FormatError::Locked { lock, .. } => match lock {
                LockError::Busy { .. } => Errno::EBUSY,
                LockError::Failed(e) => *e,
            },
            FormatError::ReadOnly { .. } => Errno::EROFS,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, errno: Errno) -> FormatError {
        FormatError::Io {
            path: path.into(),
            errno,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        format: &'static str,
        reason: impl Into<String>,
    ) -> FormatError {
        FormatError::Corrupt {
            path: path.into(),
            format,
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(
        path: impl Into<PathBuf>,
        format: &'static str,
        feature: impl Into<String>,
    ) -> FormatError {
        FormatError::Unsupported {
            path: path.into(),
            format,
            feature: feature.into(),
        }
    }
}
