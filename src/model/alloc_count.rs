//! Test-only allocation counter: the sampler and the detokenizer promise no per-call allocation
//! after warm-up, and this makes the promise a test instead of a comment.
//!
//! A global allocator that counts allocations made by the *current thread* while a closure runs
//! (tests run on parallel threads; a per-thread counter keeps them from seeing each other).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    // `const` initialisation: touching it never allocates (the allocator must not recurse).
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: during thread teardown the slots may be gone; then we simply don't count.
    let _ = ACTIVE.try_with(|active| {
        if active.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged;
// counting touches only thread-locals and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller upholds GlobalAlloc's contract, which System needs too.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller upholds GlobalAlloc's contract, which System needs too.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: the caller upholds GlobalAlloc's contract, which System needs too.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds GlobalAlloc's contract, which System needs too.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// How many allocations (and reallocations) this thread made while `f` ran.
pub fn count(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    ACTIVE.with(|a| a.set(true));
    f();
    ACTIVE.with(|a| a.set(false));
    COUNT.with(|c| c.get())
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_this_threads_allocations() {
        assert_eq!(super::count(|| {}), 0);
        assert_eq!(
            super::count(|| drop(std::hint::black_box(vec![1u8; 10]))),
            1
        );
        assert_eq!(
            super::count(|| drop(std::hint::black_box(String::new()))),
            0
        );
    }
}
