//! A per-test deadline, so that a test that hangs (a lock wait that never ends, a
//! channel nobody sends on) fails the run in bounded time, naming itself, instead
//! of stalling `cargo test` until CI gives up without saying where.
//!
//! Every `backend_tests!` test holds a [`Guard`] while it runs. One background
//! thread per test binary checks the running tests once a second; when one has
//! run longer than the limit it prints the test's name and what is still running,
//! then exits the process with status 101 (what a failed test binary returns).
//! The limit is `DIESEL_L2_TEST_TIMEOUT_SECS` (default 300 s: the slowest test
//! takes under 30 s on 2 cores).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Environment variable overriding the per-test limit, in seconds.
pub const TIMEOUT_ENV: &str = "DIESEL_L2_TEST_TIMEOUT_SECS";
const DEFAULT_LIMIT: Duration = Duration::from_secs(300);

struct Watchdog {
    running: Mutex<HashMap<u64, (String, Instant)>>,
    next: AtomicU64,
    limit: Duration,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let limit = match std::env::var(TIMEOUT_ENV) {
            Ok(s) => match s.trim().parse::<u64>() {
                Ok(secs) if secs > 0 => Duration::from_secs(secs),
                _ => panic!("{TIMEOUT_ENV}={s:?}: expected a positive number of seconds"),
            },
            Err(_) => DEFAULT_LIMIT,
        };
        let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            running: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            limit,
        }));
        std::thread::Builder::new()
            .name("test-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                dog.check();
            })
            .expect("spawn the test watchdog thread");
        dog
    })
}

impl Watchdog {
    fn check(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some((name, started)) = running
            .values()
            .find(|(_, started)| started.elapsed() > self.limit)
        else {
            return;
        };
        let mut others: Vec<String> = running
            .values()
            .map(|(n, s)| format!("{n} ({:.0?})", s.elapsed()))
            .collect();
        others.sort();
        // Straight to stderr: libtest captures `eprintln!` from threads a test spawned,
        // and this thread was spawned by one; the captured text would die with us.
        let _ = writeln!(
            std::io::stderr(),
            "\nTEST TIMEOUT: {name} has run for {:.0?}, over the {:?} limit \
             ({TIMEOUT_ENV}); exiting so the run fails here instead of hanging.\n\
             still running: {}",
            started.elapsed(),
            self.limit,
            others.join(", ")
        );
        std::process::exit(101);
    }
}

/// Registered while a test runs; dropping it (also on panic) deregisters.
pub struct Guard(u64);

thread_local! {
    /// The guard of the test running on this thread (libtest runs each test on its own
    /// thread), for [`lift`].
    static CURRENT: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Starts the deadline for the test `name`.
pub fn guard(name: &str) -> Guard {
    let dog = watchdog();
    let id = dog.next.fetch_add(1, Ordering::Relaxed);
    dog.running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, (name.to_owned(), Instant::now()));
    CURRENT.with(|c| c.set(Some(id)));
    Guard(id)
}

/// Removes the deadline of the test running on this thread: for the long soak, whose
/// length the caller chooses (it bounds itself by operations or seconds).
pub fn lift() {
    if let Some(id) = CURRENT.with(|c| c.take()) {
        forget(id);
    }
}

/// Stops watching the test registered as `id`.
fn forget(id: u64) {
    watchdog()
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
}

impl Drop for Guard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(None));
        forget(self.0);
    }
}
