//! Memory: the size of one limiter, and the heap bytes one key adds to a `KeyPool`, counted
//! by a global allocator that tallies live bytes (so it includes the `Arc`s, the entry and the
//! key's string, not just `size_of`).

use ratekeeper::{KeyPool, TokenBucketLimiter};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        atomic::{AtomicIsize, Ordering::Relaxed},
        Arc,
    },
};

/// The system allocator, keeping count of live bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts sizes on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const KEYS: usize = 1_000;

fn main() {
    println!(
        "memory: size_of::<TokenBucketLimiter>() = {} bytes (governor direct limiter: {} bytes)",
        std::mem::size_of::<TokenBucketLimiter>(),
        std::mem::size_of::<governor::DefaultDirectRateLimiter>(),
    );
    let pool: KeyPool<String, TokenBucketLimiter> = KeyPool::new();
    let before = LIVE.load(Relaxed);
    for i in 0..KEYS {
        // Keys like "key-0042": 8 bytes of string, a typical API-key label is longer.
        pool.add(
            format!("key-{i:04}"),
            Arc::new(TokenBucketLimiter::new(500, 200_000)),
        );
    }
    let per_key = (LIVE.load(Relaxed) - before) as f64 / KEYS as f64;
    assert_eq!(pool.len(), KEYS);
    println!("memory: KeyPool<String, TokenBucketLimiter> holds {per_key:.0} heap bytes per key ({KEYS} keys, 8-byte key names)");
}
