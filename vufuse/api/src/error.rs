//! Why a mount failed: one type for the mount layer and every driver, so each front end
//! reports it the same way (a message naming the source, an errno, an exit status) and a
//! caller can tell a busy image from a corrupt one.

use std::fmt;
use std::path::PathBuf;
use vudev::lock::LockMode;
use vudev::Errno;

/// Why a source could not be mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountError {
    /// The source cannot be opened (missing, no permission, not a file or a device).
    Source {
        /// The source as given.
        source: PathBuf,
        /// What opening it answered.
        errno: Errno,
    },
    /// The partition asked for (`part=N`) or looked for (the only one holding the
    /// filesystem) is not there, or the table cannot be read.
    Partition {
        /// The source as given.
        source: PathBuf,
        /// What is wrong, for the user.
        message: String,
    },
    /// The image format (qcow2, VDI, VMDK, UML COW) is corrupt, unsupported, or its backing
    /// chain cannot be opened.
    Image {
        /// The source as given.
        source: PathBuf,
        /// The errno a front end reports.
        errno: Errno,
        /// What is wrong, for the user (names the file).
        message: String,
    },
    /// Another mount, tool or VM holds the image in a conflicting mode.
    Locked {
        /// The source as given.
        source: PathBuf,
        /// How the other holder has it.
        held: LockMode,
    },
    /// The driver refused the volume: corrupt, unsupported, needs recovery.
    Volume {
        /// The errno a front end reports.
        errno: Errno,
        /// What is wrong, for the user (names the source once the mount layer saw it).
        message: String,
    },
}

impl MountError {
    /// A driver's refusal of a volume.
    pub fn volume(errno: Errno, message: impl Into<String>) -> MountError {
        MountError::Volume {
            errno,
            message: message.into(),
        }
    }

    /// The errno a front end reports (a VUOS module returns it to the caller of mount(2)).
    pub fn errno(&self) -> Errno {
        match self {
            MountError::Source { errno, .. }
            | MountError::Volume { errno, .. }
            | MountError::Image { errno, .. } => *errno,
            MountError::Partition { .. } => Errno::ENXIO,
            MountError::Locked { .. } => Errno::EBUSY,
        }
    }

    /// Names `source` in a driver's message (the other kinds name it already).
    pub fn at(self, source: &std::path::Path) -> MountError {
        match self {
            MountError::Volume { errno, message } => MountError::Volume {
                errno,
                message: format!("{}: {message}", source.display()),
            },
            other => other,
        }
    }
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::Source { source, errno } => write!(f, "{}: {errno}", source.display()),
            MountError::Partition { source, message } => {
                write!(f, "{}: {message}", source.display())
            }
            MountError::Locked { source, held } => write!(
                f,
                "{}: in use: another mount or program has it open {held} \
                 (a second writer would corrupt it; -o nolock overrides)",
                source.display()
            ),
            MountError::Volume { message, .. } => f.write_str(message),
            MountError::Image { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for MountError {}

/// Front ends whose callbacks report failures as text take a `MountError` with `?`.
impl From<MountError> for String {
    fn from(e: MountError) -> String {
        e.to_string()
    }
}
