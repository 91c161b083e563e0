//! Acting as a user other than the mounter (nobody), for the access-control tests of every
//! daemon: a scratch directory that user can enter, running a script as that user, and the
//! check that the kernel or the daemon refused it.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

/// Runs `sh -c script` as user nobody with no supplementary groups (via setpriv), whatever
/// its exit status.
pub fn as_nobody(script: &str) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run setpriv (util-linux): {e}"))
}

/// Why a test cannot act as another user here, if it cannot (not root, or no setpriv).
pub fn other_user_unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root: cannot act as another user".into());
    }
    match Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "true",
        ])
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "setpriv cannot switch to nobody: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("setpriv is missing: {e}")),
    }
}

/// A scratch directory other users can enter (tempdirs are 0700).
pub fn open_scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod 755 the scratch directory");
    dir
}

/// What nobody's `script` did: whether it succeeded, and its stderr.
pub fn nobody(script: &str) -> (bool, String) {
    let out = as_nobody(script);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts that nobody's `script` fails with EACCES or EPERM.
pub fn assert_denied(script: &str) {
    let (ok, err) = nobody(script);
    assert!(!ok, "nobody was allowed: {script}");
    assert!(
        err.contains("Permission denied") || err.contains("Operation not permitted"),
        "{script}: {err}"
    );
}
