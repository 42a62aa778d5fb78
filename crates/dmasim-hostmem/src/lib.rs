//! Per-thread accounting of host resources — the heap bytes a thread holds and the
//! CPU time it used — for dmasim's run limits and its CPU-time measurements.
//!
//! A dmasim run must not exhaust the host's memory whatever its script does. Rhai's
//! own data-size limits (`max_array_size`, `max_string_size`, `max_map_size`) bound
//! each value, but enforce it by re-measuring the whole value (every element of an
//! array) after each call that may change it, which makes an array grown with `push`
//! quadratic. dmasim instead counts the bytes each thread has allocated and not freed
//! ([`CountingAllocator`], the global allocator of every program linking dmasim) and
//! compares the count with the run's budget between script operations: constant work
//! per operation, and a bound on everything the run holds (simulated memory, the
//! model's tables and the script's values together), which per-value limits never gave.
//!
//! The count is per thread because `explore` runs scripts on several threads at once,
//! each with its own budget. Memory freed on another thread than the one that
//! allocated it lowers that other thread's count: a thread's count is exact for what
//! it allocates and frees itself, which is all a script run does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates (the
    // allocator must not recurse) and never fails, even while the thread exits.
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

#[inline]
fn add(bytes: i64) {
    let _ = LIVE.try_with(|c| c.set(c.get().wrapping_add(bytes)));
}

/// The system allocator, counting the bytes each thread holds.
///
/// Declare it with `#[global_allocator]` (the `dmasim` library does) to make
/// [`thread_live_bytes`] meaningful.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to the system allocator; the only
// addition is a thread-local counter update, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for CountingAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as i64));
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is the caller's, checked by it.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Bytes this thread has allocated and not freed since it started (freed by
/// another thread counts as not freed here, and as negative there). Zero, always,
/// unless [`CountingAllocator`] is the global allocator.
#[must_use]
pub fn thread_live_bytes() -> i64 {
    LIVE.try_with(Cell::get).unwrap_or(0)
}

/// Whether the counting allocator is the program's global allocator (a budget
/// checked against [`thread_live_bytes`] is only a bound when it is).
#[must_use]
pub fn is_counting() -> bool {
    let before = thread_live_bytes();
    let probe = std::hint::black_box(Box::new([0u8; 64]));
    let counted = thread_live_bytes() != before;
    drop(probe);
    counted
}

/// This thread's CPU time in ns (`CLOCK_THREAD_CPUTIME_ID`): what dmasim's
/// measurements (`dmasim bench`, the fuzzer's time bound, the scaling figures) count,
/// so that waiting for a core on a loaded host does not. `None` where the clock is
/// missing.
#[must_use]
pub fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| {
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static HEAP: CountingAllocator = CountingAllocator;

    #[test]
    fn a_thread_counts_what_it_holds_and_not_what_other_threads_hold() {
        assert!(is_counting());
        let before = thread_live_bytes();
        let v: Vec<u8> = Vec::with_capacity(1 << 20);
        assert_eq!(thread_live_bytes() - before, 1 << 20);
        let mut w = v;
        w.reserve_exact(3 << 20); // realloc: counts the difference
        assert_eq!(thread_live_bytes() - before, 3 << 20);
        // Another thread's allocations are its own.
        let other = std::thread::spawn(|| {
            let b = thread_live_bytes();
            let x = vec![1u8; 5 << 20];
            (thread_live_bytes() - b, x.len())
        })
        .join()
        .unwrap();
        assert_eq!(other.0, 5 << 20);
        // Spawning and joining leaves a few hundred bytes of this thread's own
        // (the thread handle's packet), never the other thread's 5 MiB.
        let after_join = thread_live_bytes() - before;
        assert!(
            (3 << 20..(3 << 20) + 4096).contains(&after_join),
            "{after_join}"
        );
        drop(w);
        assert_eq!(thread_live_bytes() - before, after_join - (3 << 20));
    }

    #[test]
    fn the_thread_clock_counts_this_threads_work_not_a_sleep() {
        let t0 = thread_cpu_ns().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slept = thread_cpu_ns().unwrap() - t0;
        let mut x = 0u64;
        let t1 = thread_cpu_ns().unwrap();
        while thread_cpu_ns().unwrap() - t1 < 20_000_000 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(slept < 20_000_000, "a 50 ms sleep counted {slept} ns");
        assert!(x > 0);
    }
}
