//! Adaptive busy polling of `/dev/fuse` (the `busy_poll` mount option).
//!
//! Every FUSE request is a round trip: the caller sleeps until the daemon replies, the daemon
//! sleeps in `read(/dev/fuse)` until the next request. On a lightly loaded machine (a VM in
//! particular) most of a round trip is waking a sleeping CPU, not the work. While requests
//! keep coming, this module turns the serving thread's wait into polling: `/dev/fuse` is made
//! non-blocking, so fuser's loop retries its read (it retries `EAGAIN`) instead of sleeping;
//! once no request has come for [`IDLE_AFTER`], a watchdog thread makes it blocking again.
//! An idle mount costs nothing; a busy one costs one core while busy.
//!
//! Polling only pays while a core is free for it. When the serving thread has to wait for a
//! CPU (other processes want the core it spins on, as its scheduler statistics in
//! `/proc/self/task/TID/schedstat` show), polling would only take their time and delay its
//! own replies: it pauses for [`PAUSE_MIN`], doubling up to [`PAUSE_MAX`] while the
//! contention lasts, and the daemon serves as if polling were off.

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Polling stops when no request has come for this long.
pub const IDLE_AFTER: Duration = Duration::from_millis(2);

/// Polling pauses when the serving thread waited for a CPU for more than 1/`CONTENDED_SHARE`
/// of a watchdog window.
const CONTENDED_SHARE: u64 = 4;

/// The first pause after contention was seen.
pub const PAUSE_MIN: Duration = Duration::from_millis(20);

/// The longest pause, reached by doubling while contention lasts.
pub const PAUSE_MAX: Duration = Duration::from_secs(1);

/// Nanoseconds a thread (by tid) has spent waiting on a run queue, or `None` when unknown.
type RunDelay = Box<dyn Fn(i32) -> Option<u64> + Send + Sync>;

/// The watchdog's time: what it reads and how it waits out a window. The real one is the
/// monotonic clock; tests drive a manual one, so that no assertion depends on how soon a
/// loaded machine runs a thread.
trait Clock: Send + Sync {
    /// Nanoseconds since an origin fixed at creation.
    fn now(&self) -> u64;
    /// Waits until `d` has passed on this clock.
    fn sleep(&self, d: Duration);
}

/// The monotonic clock.
struct RealClock(Instant);

impl Clock for RealClock {
    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// The polling state of one mount, shared by the adapter (which reports requests) and the
/// watchdog thread (which ends polling when they stop or when the CPU is contended).
pub struct BusyPoll {
    /// A duplicate of the session's `/dev/fuse` descriptor: the non-blocking flag belongs to
    /// the open file, so setting it here changes the serving thread's reads.
    device: OnceLock<OwnedFd>,
    watchdog: OnceLock<Thread>,
    polling: AtomicBool,
    /// Held while polling is switched on or off (see [`BusyPoll::switch_lock`]).
    switching: std::sync::Mutex<()>,
    /// Nanoseconds since `start` at the last request.
    last_request: AtomicU64,
    /// Nanoseconds since `start` before which polling stays paused (contention).
    resume_at: AtomicU64,
    /// The polling thread's tid (0 until polling first starts).
    server: AtomicI32,
    /// How many times contention paused polling.
    pauses: AtomicU64,
    run_delay: RunDelay,
    clock: Box<dyn Clock>,
}

impl std::fmt::Debug for BusyPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusyPoll")
            .field("polling", &self.is_polling())
            .field("pauses", &self.pauses())
            .finish_non_exhaustive()
    }
}

impl Default for BusyPoll {
    fn default() -> BusyPoll {
        BusyPoll::new()
    }
}

impl BusyPoll {
    /// Polling off until [`BusyPoll::attach`] gives it the device.
    pub fn new() -> BusyPoll {
        BusyPoll::with_probes(
            Box::new(schedstat_run_delay),
            Box::new(RealClock(Instant::now())),
        )
    }

    /// With the contention signal (`run_delay`) and the `clock` given.
    fn with_probes(run_delay: RunDelay, clock: Box<dyn Clock>) -> BusyPoll {
        BusyPoll {
            device: OnceLock::new(),
            watchdog: OnceLock::new(),
            polling: AtomicBool::new(false),
            switching: std::sync::Mutex::new(()),
            last_request: AtomicU64::new(0),
            resume_at: AtomicU64::new(0),
            server: AtomicI32::new(0),
            pauses: AtomicU64::new(0),
            run_delay,
            clock,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now()
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

    /// Called on every request, by the serving thread: starts polling if it was off (and not
    /// paused).
    pub fn on_request(&self) {
        let now = self.now();
        self.last_request.store(now, Ordering::Relaxed);
        if self.polling.load(Ordering::Acquire) || now < self.resume_at.load(Ordering::Relaxed) {
            return;
        }
        let (Some(device), Some(watchdog)) = (self.device.get(), self.watchdog.get()) else {
            return;
        };
        {
            let _switching = self.switch_lock();
            if self.polling.load(Ordering::Acquire) {
                return;
            }
            // The thread that will poll (the first request, INIT, is served by another),
            // known before the watchdog's first window.
            self.server.store(
                rustix::thread::gettid().as_raw_nonzero().get(),
                Ordering::Relaxed,
            );
            if set_nonblocking(device, true).is_err() {
                return;
            }
            self.polling.store(true, Ordering::Release);
        }
        watchdog.unpark();
    }

    /// Polling is switched on or off (the device's O_NONBLOCK and `polling` together) only
    /// under this lock, so that `polling` is false exactly when the device blocks: without
    /// it, a serving thread preempted between its two steps could make the device
    /// non-blocking after the watchdog had switched polling off and parked, and spin on an
    /// idle mount.
    fn switch_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.switching.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The watchdog: sleeps while polling is off; while it is on, checks every
    /// [`IDLE_AFTER`] whether requests stopped or the serving thread waited for a CPU, and
    /// then makes the device blocking again.
    fn watch(&self) {
        let idle = nanos(IDLE_AFTER);
        let Some(device) = self.device.get() else {
            return;
        };
        let mut pause = PAUSE_MIN;
        loop {
            if !self.polling.load(Ordering::Acquire) {
                std::thread::park();
                continue;
            }
            let server = self.server.load(Ordering::Relaxed);
            let window_start = self.now();
            let delay_before = (self.run_delay)(server);
            self.clock.sleep(IDLE_AFTER);
            let now = self.now();
            let waited = delay_before
                .zip((self.run_delay)(server))
                .map(|(before, after)| after.saturating_sub(before));
            let contended =
                waited.is_some_and(|w| w.saturating_mul(CONTENDED_SHARE) > now - window_start);
            let _switching = self.switch_lock();
            let last = self.last_request.load(Ordering::Relaxed);
            if contended {
                self.resume_at
                    .store(now.saturating_add(nanos(pause)), Ordering::Relaxed);
                self.pauses.fetch_add(1, Ordering::Relaxed);
                pause = (pause * 2).min(PAUSE_MAX);
            } else if self.now().saturating_sub(last) < idle {
                pause = PAUSE_MIN;
                continue;
            }
            if set_nonblocking(device, false).is_ok() {
                self.polling.store(false, Ordering::Release);
            }
        }
    }

    /// Whether this system shows a thread's run-queue wait (procfs with schedstat), which
    /// polling by default relies on to step aside when the CPU is contended.
    pub fn can_see_contention() -> bool {
        schedstat_run_delay(rustix::thread::gettid().as_raw_nonzero().get()).is_some()
    }

    /// How many times contention for the CPU paused polling.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    /// Whether the device is in polling mode now (for tests).
    pub fn is_polling(&self) -> bool {
        self.polling.load(Ordering::Acquire)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The run-queue wait of thread `tid` of this process: the second field of its schedstat.
fn schedstat_run_delay(tid: i32) -> Option<u64> {
    if tid == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    parse_run_delay(&text)
}

fn parse_run_delay(schedstat: &str) -> Option<u64> {
    schedstat.split_ascii_whitespace().nth(1)?.parse().ok()
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

    /// A clock that moves only when the test says so; the watchdog's window ends when the
    /// test has advanced past it.
    #[derive(Default)]
    struct ManualClock {
        now: std::sync::Mutex<u64>,
        moved: std::sync::Condvar,
    }

    impl ManualClock {
        fn advance(&self, d: Duration) {
            *self.now.lock().unwrap() += nanos(d);
            self.moved.notify_all();
        }
    }

    impl Clock for Arc<ManualClock> {
        fn now(&self) -> u64 {
            *self.now.lock().unwrap()
        }

        fn sleep(&self, d: Duration) {
            let mut now = self.now.lock().unwrap();
            let until = now.saturating_add(nanos(d));
            while *now < until {
                now = self.moved.wait(now).unwrap();
            }
        }
    }

    /// A poller on a pipe, with a manual clock and the given contention signal.
    fn manual(run_delay: RunDelay) -> (Arc<BusyPoll>, Arc<ManualClock>, OwnedFd, OwnedFd, OwnedFd) {
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        let probe = reader.try_clone().unwrap();
        let clock = Arc::new(ManualClock::default());
        let poll = Arc::new(BusyPoll::with_probes(run_delay, Box::new(clock.clone())));
        (poll, clock, reader, writer, probe)
    }

    /// Advances `clock` a window at a time until `done`, within a (real) deadline.
    fn advance_until(clock: &ManualClock, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            clock.advance(IDLE_AFTER);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn nonblocking(fd: &OwnedFd) -> bool {
        fcntl_getfl(fd).unwrap().contains(OFlags::NONBLOCK)
    }

    #[test]
    fn polling_starts_on_a_request_and_stops_when_they_stop() {
        // Never contended, and time stands still unless advanced: the watchdog cannot end a
        // window (nor see contention) behind the test's back however loaded the CPUs are.
        let (poll, clock, reader, _writer, probe) = manual(Box::new(|_| Some(0)));
        // Before attach: nothing to poll.
        poll.on_request();
        assert!(!poll.is_polling());
        poll.attach(reader).unwrap();
        poll.on_request();
        assert!(poll.is_polling());
        assert!(nonblocking(&probe));
        // Requests stop: the first window with none ends polling.
        advance_until(&clock, "polling never stopped", || !poll.is_polling());
        assert!(!nonblocking(&probe));
        // And starts again.
        poll.on_request();
        assert!(poll.is_polling());
        assert!(nonblocking(&probe));
        assert_eq!(poll.pauses(), 0, "no contention was signalled");
    }

    #[test]
    fn contention_for_the_cpu_pauses_polling_while_requests_keep_coming() {
        // A serving thread that waits for a CPU half of the time it is watched.
        let clock_cell: Arc<OnceLock<Arc<ManualClock>>> = Arc::new(OnceLock::new());
        let seen = clock_cell.clone();
        let waiting = Box::new(move |_tid| seen.get().map(|c| Clock::now(c) / 2));
        let (poll, clock, reader, _writer, probe) = manual(waiting);
        let _ = clock_cell.set(clock.clone());
        poll.attach(reader).unwrap();
        poll.on_request();
        assert!(poll.is_polling());
        advance_until(&clock, "contention never paused polling", || {
            poll.on_request();
            poll.pauses() > 0 && !poll.is_polling()
        });
        assert!(!nonblocking(&probe));
        // Paused: requests do not restart it until the pause is over (the clock stands).
        for _ in 0..50 {
            poll.on_request();
            assert!(!poll.is_polling());
        }
        clock.advance(PAUSE_MIN);
        poll.on_request();
        assert!(poll.is_polling(), "polling resumes after the pause");
        assert!(nonblocking(&probe));
    }

    /// Requests at intervals around the idle window, from two threads, switch polling on
    /// and off many times; once they stop, polling is off and the device blocks. (A stress
    /// check: the race the switching lock closes needs a thread preempted inside a window
    /// of nanoseconds, which this cannot force; the lock makes it impossible by design.)
    #[test]
    fn polling_off_always_means_a_blocking_device() {
        let (reader, _writer) = rustix::pipe::pipe().unwrap();
        let probe = reader.try_clone().unwrap();
        let poll = Arc::new(BusyPoll::new());
        poll.attach(reader).unwrap();
        let workers: Vec<_> = (0..2u64)
            .map(|k| {
                let poll = poll.clone();
                std::thread::spawn(move || {
                    for i in 0..150u64 {
                        poll.on_request();
                        std::thread::sleep(Duration::from_micros(1500 + (i * 37 + k * 501) % 1200));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while poll.is_polling() {
            assert!(Instant::now() < deadline, "polling never stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(!poll.is_polling());
        assert!(!fcntl_getfl(&probe).unwrap().contains(OFlags::NONBLOCK));
    }

    #[test]
    fn run_delay_is_the_second_schedstat_field() {
        assert_eq!(parse_run_delay("123 456 7\n"), Some(456));
        assert_eq!(parse_run_delay("123"), None);
        assert_eq!(parse_run_delay(""), None);
        let own = rustix::thread::gettid().as_raw_nonzero().get();
        assert_eq!(schedstat_run_delay(0), None);
        // The kernel's own file parses, and the wait only grows (CONFIG_SCHED_INFO; where the
        // file is missing, polling by default must be off).
        if std::path::Path::new("/proc/self/schedstat").exists() {
            let before = schedstat_run_delay(own).expect("this thread's schedstat parses");
            std::thread::yield_now();
            let after = schedstat_run_delay(own).unwrap();
            assert!(after >= before, "{after} < {before}");
            assert!(BusyPoll::can_see_contention());
        } else {
            eprintln!("no /proc/self/schedstat here: contention cannot be seen");
            assert!(!BusyPoll::can_see_contention());
        }
    }
}
