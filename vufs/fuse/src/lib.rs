//! The command line of the `vufs` daemon, as data: the binary runs it, the man page and
//! completion generator (`tools/manpages`) renders it.

#![warn(missing_docs)]

use vufuse::daemon::{DaemonSpec, MountpointKind, SourceArg};
use vufuse_api::options::WritePolicy;

/// `vufs [-o OPTS] SOURCE MOUNTPOINT`.
pub const SPEC: DaemonSpec = DaemonSpec {
    name: "vufs",
    about: "Shows SOURCE at MOUNTPOINT: alone (bind), or united with the tree under \
            MOUNTPOINT (merge, cow, mincow), as VUOS's vufs module does.",
    source: SourceArg::Required("SOURCE"),
    mountpoint: MountpointKind::Directory,
    write_policy: WritePolicy::ReadWriteUnlessRo,
    extra_options: "  bind, move               MOUNTPOINT shows SOURCE alone (default)\n  \
merge                    union; SOURCE read-only, changes go to the lower tree\n  \
cow                      union; every change lands in SOURCE (copy-up, whiteouts in SOURCE/.-)\n  \
mincow                   union; change the lower tree where it permits, else SOURCE\n  \
except=/PATH             (repeatable) the subtree shows the lower tree untouched\n  \
nochcopy                 chmod/chown record a vstat entry instead of copying up\n  \
cache=auto               (default) attributes and names trusted for 1 s, listings re-read\n  \
cache=always             all kept until this mount changes them: faster, but only for\n                           \
layers nobody changes behind the mount (fuse-overlayfs's default)\n",
};

/// The clap command of `vufs`.
pub fn command() -> clap::Command {
    vufuse::daemon::command(&SPEC)
}
