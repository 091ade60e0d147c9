//! The hit path allocates nothing: `db.find` on a cached row hands out a clone of the
//! cached `Arc` (a reference-count increment, not an allocation); so do `find_cached` and
//! a `find_async` hit (feature `tokio`).
//!
//! Counted with a global allocator that counts per thread, so connection pools and other
//! test threads cannot disturb the count. Every allocation made by the measuring thread
//! is attributed by its stack: moka runs its maintenance inline on the reading thread
//! (at most once per 64 recorded reads), and that maintenance flushes crossbeam-epoch's
//! garbage bag, which allocates one queue node per run. That allocation belongs to moka,
//! happens the same way under a plain `moka::sync::Cache`, and is bounded here; anything
//! else on the hit path fails the test.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::sync::Arc;

use common::models::{PostByUserId, User};

struct PerThreadCount;

thread_local! {
    // `const` initialised: accessing them never allocates, so the allocator may use them.
    /// Set while a measured section runs on this thread.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    /// Set while this thread captures a stack, whose own allocations are not counted.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    /// Allocations inside moka's maintenance (`run_pending_tasks`).
    static MAINTENANCE: Cell<u64> = const { Cell::new(0) };
    /// Every other allocation.
    static OTHER: Cell<u64> = const { Cell::new(0) };
    /// The stack of the first "other" allocation, for the failure message.
    static FIRST_OTHER: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn on_alloc() {
    let measuring = MEASURING.try_with(Cell::get).unwrap_or(false);
    if !measuring || IN_HOOK.with(Cell::get) {
        return;
    }
    IN_HOOK.with(|h| h.set(true));
    let stack = Backtrace::force_capture().to_string();
    if stack.contains("run_pending_tasks") {
        MAINTENANCE.with(|c| c.set(c.get() + 1));
    } else {
        OTHER.with(|c| c.set(c.get() + 1));
        FIRST_OTHER.with(|f| {
            f.borrow_mut().get_or_insert(stack);
        });
    }
    IN_HOOK.with(|h| h.set(false));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the hook only reads
// and writes this thread's counters (its own allocations are excluded by `IN_HOOK`).
unsafe impl GlobalAlloc for PerThreadCount {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        on_alloc();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        on_alloc();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        on_alloc();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
    }
}

#[global_allocator]
static ALLOCATOR: PerThreadCount = PerThreadCount;

/// Allocations made by this thread while running `f`: (outside moka's maintenance,
/// inside it, the stack of the first outside one).
fn allocations_in(f: impl FnOnce()) -> (u64, u64, Option<String>) {
    OTHER.with(|c| c.set(0));
    MAINTENANCE.with(|c| c.set(0));
    FIRST_OTHER.with(|f| f.borrow_mut().take());
    MEASURING.with(|m| m.set(true));
    f();
    MEASURING.with(|m| m.set(false));
    (
        OTHER.with(Cell::get),
        MAINTENANCE.with(Cell::get),
        FIRST_OTHER.with(|f| f.borrow_mut().take()),
    )
}

const ROWS: i64 = 1_000;
const ROUNDS: i64 = 50;

backend_tests! {
    fn cache_hits_allocate_nothing(t) {
        let values: Vec<String> = (1..=ROWS)
            .map(|i| format!("({i}, 1, 'u{i}@example.com', 'user {i}')"))
            .collect();
        t.exec(&format!(
            "INSERT INTO users (id, version, email, name) VALUES {}",
            values.join(", ")
        ));
        let db = common::cached_db(t);
        // Warm-up: fill every row, then enough hits for moka's per-thread state (epoch
        // registration, read buffers) to exist.
        for _ in 0..20 {
            for id in 1..=ROWS {
                black_box(db.find::<User>(id).unwrap().unwrap());
            }
        }
        black_box(db.find::<User>(ROWS + 1).unwrap()); // an absent row, negatively cached
        let _ = db.stats(); // runs moka's pending maintenance
        let first = db.find::<User>(1).unwrap().unwrap();

        let hits = (ROWS * ROUNDS) as u64;
        let (other, maintenance, stack) = allocations_in(|| {
            for _ in 0..ROUNDS {
                for id in 1..=ROWS {
                    let row = db.find::<User>(id).unwrap().unwrap();
                    black_box(&row);
                }
            }
        });
        eprintln!(
            "{hits} hits: {other} allocations on the hit path, {maintenance} in moka's maintenance"
        );
        assert_eq!(other, 0, "{hits} cache hits allocated {other} times; first at:\n{}", stack.unwrap_or_default());
        assert!(
            maintenance <= hits / 64 + 1,
            "moka maintenance allocated {maintenance} times in {hits} hits: more than once per run"
        );

        let (other, _, stack) = allocations_in(|| {
            for _ in 0..1_000 {
                black_box(db.find::<User>(ROWS + 1).unwrap());
            }
        });
        assert_eq!(other, 0, "1,000 negative hits allocated {other} times; first at:\n{}", stack.unwrap_or_default());

        // The hit is the cached Arc itself, not a copy.
        let again = db.find::<User>(1).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again));

        // find_many over hits allocates its result vector and nothing per key.
        let ids: Vec<i64> = (1..=ROWS).collect();
        let (other, _, stack) = allocations_in(|| {
            black_box(db.find_many::<User>(&ids).unwrap());
        });
        assert_eq!(other, 1, "find_many of {ROWS} hits: only the result Vec, got {other} allocations; first at:\n{}", stack.unwrap_or_default());

        // The async front's hit path is the same: `find_cached`, and `find_async` polled
        // once (its future lives on the stack; no task, no spawn_blocking).
        let (other, _, stack) = allocations_in(|| {
            for id in 1..=ROWS {
                let hit = db.find_cached::<User>(&id).unwrap();
                assert!(matches!(black_box(hit), diesel_l2::CacheLookup::Hit(_)));
            }
        });
        assert_eq!(other, 0, "find_cached hits allocated {other} times; first at:\n{}", stack.unwrap_or_default());
        #[cfg(feature = "tokio")]
        {
            use std::future::Future;
            use std::task::{Context, Poll, Waker};
            let (other, _, stack) = allocations_in(|| {
                let mut cx = Context::from_waker(Waker::noop());
                for id in 1..=ROWS {
                    let read = std::pin::pin!(db.find_async::<User>(id));
                    assert!(matches!(read.poll(&mut cx), Poll::Ready(Ok(Some(_)))));
                }
            });
            assert_eq!(other, 0, "find_async hits allocated {other} times; first at:\n{}", stack.unwrap_or_default());
        }

        // C10: a cached list's hit is one lookup and one `Arc` clone of the resolved list,
        // whatever its length (here 20 children): nothing per member.
        let posts: Vec<String> = (1..=1_000)
            .map(|i| format!("({i}, 1, {}, 'post {i}')", (i - 1) / 20 + 1))
            .collect();
        t.exec(&format!("INSERT INTO posts (id, version, user_id, title) VALUES {}", posts.join(", ")));
        for _ in 0..20 {
            for user in 1..=50 {
                black_box(db.find_all_by(PostByUserId(user)).unwrap());
            }
        }
        let _ = db.stats();
        let first = db.find_all_by(PostByUserId(1)).unwrap();
        assert_eq!(first.len(), 20);
        let (other, _, stack) = allocations_in(|| {
            for _ in 0..ROUNDS {
                for user in 1..=50 {
                    black_box(db.find_all_by(PostByUserId(user)).unwrap());
                }
            }
        });
        assert_eq!(other, 0, "list hits allocated {other} times; first at:\n{}", stack.unwrap_or_default());
        assert!(Arc::ptr_eq(&first, &db.find_all_by(PostByUserId(1)).unwrap()), "the hit is the cached list itself");
        #[cfg(feature = "tokio")]
        {
            use std::future::Future;
            use std::task::{Context, Poll, Waker};
            let (other, _, stack) = allocations_in(|| {
                let mut cx = Context::from_waker(Waker::noop());
                for user in 1..=50 {
                    let read = std::pin::pin!(db.find_all_by_async(PostByUserId(user)));
                    assert!(matches!(read.poll(&mut cx), Poll::Ready(Ok(_))));
                }
            });
            assert_eq!(other, 0, "find_all_by_async hits allocated {other} times; first at:\n{}", stack.unwrap_or_default());
        }

        let s = db.stats();
        assert_eq!(s.region("users").unwrap().loads, ROWS as u64 + 1, "no hit went to the database");
        assert_eq!(s.region("posts").unwrap().list_misses, 50, "no list hit went to the database");
    }
}
