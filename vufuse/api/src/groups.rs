//! The supplementary groups of a request's caller, which FUSE does not send: read from
//! `/proc/PID/status`, cached briefly, for every driver that checks group rights itself.

use crate::fs::Context;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a caller's groups are taken from the cache: a process changes its groups only
/// with privilege, and then (setgroups, setuid) mostly its uid too, which is part of the key.
const GROUPS_TTL: Duration = Duration::from_secs(1);
/// Callers remembered at most; past it the cache starts afresh.
const GROUPS_CACHED: usize = 1024;

/// (pid, uid, gid) to when the groups were read, and the groups.
type GroupsCache = HashMap<(u32, u32, u32), (Instant, Arc<[u32]>)>;
static GROUPS: Mutex<Option<GroupsCache>> = Mutex::new(None);

impl Context {
    /// The caller's supplementary groups, from `/proc/PID/status`: none when the process is
    /// gone or its pid unknown (0, as from another pid namespace), so fewer rights, never
    /// more. Cached for a second per (pid, uid, gid): a busy caller costs one read a second,
    /// not one per request.
    pub fn supplementary_groups(&self) -> Arc<[u32]> {
        if self.pid == 0 {
            return Arc::from(Vec::new());
        }
        let key = (self.pid, self.uid, self.gid);
        let now = Instant::now();
        let mut cache = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
        let cache = cache.get_or_insert_with(HashMap::new);
        if let Some((read_at, groups)) = cache.get(&key) {
            if now.duration_since(*read_at) < GROUPS_TTL {
                return groups.clone();
            }
        }
        let groups: Arc<[u32]> = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .map(|status| groups_in_status(&status))
            .unwrap_or_default()
            .into();
        if cache.len() >= GROUPS_CACHED {
            cache.clear();
        }
        cache.insert(key, (now, groups.clone()));
        groups
    }
}

/// The `Groups:` line of a `/proc/PID/status` text.
fn groups_in_status(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|list| {
            list.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_come_from_the_status_text() {
        let status = "Name:\tsh\nUid:\t1\t1\t1\t1\nGroups:\t4 24 27 \nNgid:\t0\n";
        assert_eq!(groups_in_status(status), vec![4, 24, 27]);
        assert!(groups_in_status("Name:\tx\n").is_empty());
    }

    #[test]
    fn this_process_groups_match_getgroups_and_an_unknown_pid_has_none() {
        let ctx = Context::current();
        let mut want: Vec<u32> = rustix::process::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        want.sort_unstable();
        let mut got = ctx.supplementary_groups().to_vec();
        got.sort_unstable();
        assert_eq!(got, want);
        let unknown = Context { pid: 0, ..ctx };
        assert!(unknown.supplementary_groups().is_empty());
    }
}
