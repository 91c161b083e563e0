//! Adaptive busy polling of `/dev/fuse` (the `busy_poll` mount option).
//!
//! Every FUSE request is a round trip: the caller sleeps until the daemon replies, the daemon
//! sleeps in `read(/dev/fuse)` until the next request. On a lightly loaded machine (a VM in
//! particular) most of a round trip is waking a sleeping CPU, not the work. While requests
//! keep coming, this module turns the serving thread's wait into polling: `/dev/fuse` is made
//! non-blocking, so fuser's loop retries its read (it retries `EAGAIN`) instead of sleeping;
//! once no request has come for [`IDLE_AFTER`], a watchdog thread makes it blocking again.
//! An idle mount costs nothing; a busy one costs one core while busy.

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Polling stops when no request has come for this long.
pub const IDLE_AFTER: Duration = Duration::from_millis(2);

/// The polling state of one mount, shared by the adapter (which reports requests) and the
/// watchdog thread (which ends polling when they stop).
#[derive(Debug)]
pub struct BusyPoll {
    /// A duplicate of the session's `/dev/fuse` descriptor: the non-blocking flag belongs to
    /// the open file, so setting it here changes the serving thread's reads.
    device: OnceLock<OwnedFd>,
    watchdog: OnceLock<Thread>,
    polling: AtomicBool,
    /// Nanoseconds since `start` at the last request.
    last_request: AtomicU64,
    start: Instant,
}

impl Default for BusyPoll {
    fn default() -> BusyPoll {
        BusyPoll::new()
    }
}

impl BusyPoll {
    /// Polling off until [`BusyPoll::attach`] gives it the device.
    pub fn new() -> BusyPoll {
        BusyPoll {
            device: OnceLock::new(),
            watchdog: OnceLock::new(),
            polling: AtomicBool::new(false),
            last_request: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Hands over the session's `/dev/fuse` (a duplicate) and starts the watchdog thread.
    pub fn attach(self: &std::sync::Arc<Self>, device: OwnedFd) -> std::io::Result<()> {
        let _ = self.device.set(device);
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name("busy-poll".into())
            .spawn(move || me.watch())?;
        let _ = self.watchdog.set(handle.thread().clone());
        Ok(())
    }

    /// Called on every request: starts polling if it was off.
    pub fn on_request(&self) {
        self.last_request.store(self.now(), Ordering::Relaxed);
        if self.polling.load(Ordering::Relaxed) || self.polling.swap(true, Ordering::AcqRel) {
            return;
        }
        let (Some(device), Some(watchdog)) = (self.device.get(), self.watchdog.get()) else {
            self.polling.store(false, Ordering::Release);
            return;
        };
        if set_nonblocking(device, true).is_err() {
            self.polling.store(false, Ordering::Release);
            return;
        }
        watchdog.unpark();
    }

    /// The watchdog: sleeps while polling is off; while it is on, checks every
    /// [`IDLE_AFTER`] whether requests stopped, and then makes the device blocking again.
    fn watch(&self) {
        let idle = u64::try_from(IDLE_AFTER.as_nanos()).unwrap_or(u64::MAX);
        let Some(device) = self.device.get() else {
            return;
        };
        loop {
            if !self.polling.load(Ordering::Acquire) {
                std::thread::park();
                continue;
            }
            std::thread::sleep(IDLE_AFTER);
            let last = self.last_request.load(Ordering::Relaxed);
            if self.now().saturating_sub(last) >= idle {
                // Blocking first, then off: a request between the two finds polling still
                // on and leaves the device blocking, which is safe (it only stops polling).
                // The reverse order could leave the device non-blocking with nobody to reset
                // it, and the serving thread spinning on an idle mount.
                if set_nonblocking(device, false).is_ok() {
                    self.polling.store(false, Ordering::Release);
                }
            }
        }
    }

    /// Whether the device is in polling mode now (for tests).
    pub fn is_polling(&self) -> bool {
        self.polling.load(Ordering::Acquire)
    }
}

fn set_nonblocking(device: &OwnedFd, on: bool) -> rustix::io::Result<()> {
    let flags = fcntl_getfl(device)?;
    let wanted = if on {
        flags | OFlags::NONBLOCK
    } else {
        flags - OFlags::NONBLOCK
    };
    if wanted != flags {
        fcntl_setfl(device, wanted)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn polling_starts_on_a_request_and_stops_when_they_stop() {
        let (reader, _writer) = rustix::pipe::pipe().unwrap();
        let probe = reader.try_clone().unwrap();
        let poll = Arc::new(BusyPoll::new());
        // Before attach: nothing to poll.
        poll.on_request();
        assert!(!poll.is_polling());
        poll.attach(reader).unwrap();
        poll.on_request();
        assert!(poll.is_polling());
        assert!(fcntl_getfl(&probe).unwrap().contains(OFlags::NONBLOCK));
        let deadline = Instant::now() + Duration::from_secs(5);
        while poll.is_polling() {
            assert!(Instant::now() < deadline, "polling never stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!fcntl_getfl(&probe).unwrap().contains(OFlags::NONBLOCK));
        // And starts again.
        poll.on_request();
        assert!(fcntl_getfl(&probe).unwrap().contains(OFlags::NONBLOCK));
    }
}
