//! How the vufs daemon serves: by default one thread that polls for requests while they keep
//! coming (`busy_poll`), with `-o no_busy_poll` two sleeping threads; either way the view
//! works, and an idle mount uses no CPU.

mod common;
use common::*;
use std::time::Duration;
use testkit::{s, MountGuard};

#[test]
fn one_polling_thread_by_default_and_none_idle() {
    need_fuse!();
    for (option, polls) in [("cow", true), ("cow,no_busy_poll", false)] {
        let sc = Scratch::example();
        let mut daemon = std::process::Command::new(BIN)
            .args(["-f", "-o", option])
            .arg(&sc.upper)
            .arg(&sc.lower)
            .spawn()
            .unwrap();
        testkit::wait_until_mounted(&sc.lower, Duration::from_secs(10));
        let guard = MountGuard::new(&sc.lower);
        let made = sh(&format!(
            "cd '{}' && mkdir new && for i in $(seq 1 100); do echo $i > new/f$i; done && \
             cat new/f7 new/f100 && ls new | wc -l",
            s(&sc.lower)
        ));
        assert_eq!(made, "7\n100\n100\n", "{option}");
        testkit::assert_serving(daemon.id(), polls, option);
        guard.unmount();
        assert!(daemon.wait().unwrap().success(), "{option}");
        // The copies went up into SOURCE, as with any serving.
        assert_eq!(std::fs::read_to_string(sc.up("new/f7")).unwrap(), "7\n");
    }
}
