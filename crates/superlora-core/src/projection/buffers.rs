//! Work buffers for the projection kernels.
//!
//! Two costs dominate a large fastfood on a virtual machine, and neither is arithmetic: the first
//! touch of every 4 KiB page of a fresh allocation (a page fault each, ~1.5 µs measured here), and
//! TLB misses of the random permutation over tens of MiB. So scratch vectors are pooled and
//! reused (already mapped), and large buffers are advised to use 2 MiB transparent huge pages.

use std::sync::Mutex;

use super::Real;

/// Pooled buffers kept per element type; a few are enough (forward needs one, the transpose two).
const POOL_MAX: usize = 4;
/// Below this many bytes huge pages are not worth asking for.
const HUGE_MIN_BYTES: usize = 4 << 20;

/// A pool of reusable vectors of one element type.
pub struct Pool<T>(Mutex<Vec<Vec<T>>>);

impl<T> Pool<T> {
    /// An empty pool.
    pub const fn new() -> Self {
        Pool(Mutex::new(Vec::new()))
    }
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A vector of exactly `len` initialised (arbitrary) values, reused from the pool if one fits.
pub fn take<T: Real>(len: usize) -> Vec<T> {
    if let Ok(mut pool) = T::pool().0.lock()
        && let Some(i) = pool.iter().position(|v| v.len() == len)
    {
        return pool.swap_remove(i);
    }
    fresh(len)
}

/// Returns a vector to the pool for reuse.
pub fn give<T: Real>(v: Vec<T>) {
    if let Ok(mut pool) = T::pool().0.lock() {
        if pool.len() >= POOL_MAX {
            pool.remove(0);
        }
        pool.push(v);
    }
}

/// A new zeroed vector whose pages are not touched yet (calloc), advised to use huge pages.
pub fn fresh<T: Real>(len: usize) -> Vec<T> {
    let v = vec![T::zero(); len];
    advise_huge(&v);
    v
}

/// Advises huge pages for the whole capacity of an (empty or partly filled) vector.
pub fn advise_huge_spare<T>(v: &mut Vec<T>) {
    advise_range(v.as_ptr() as usize, v.capacity() * std::mem::size_of::<T>());
}

fn advise_huge<T>(v: &[T]) {
    advise_range(v.as_ptr() as usize, std::mem::size_of_val(v));
}

#[cfg(target_os = "linux")]
fn advise_range(start: usize, bytes: usize) {
    const HUGE: usize = 2 << 20;
    if bytes < HUGE_MIN_BYTES {
        return;
    }
    let aligned = start.next_multiple_of(HUGE);
    let end = start + bytes;
    if aligned >= end {
        return;
    }
    let len = (end - aligned) / HUGE * HUGE;
    // SAFETY: madvise only advises the kernel about how to back a range of our own allocation
    // (rounded inwards to whole huge pages); it never changes the contents or the mapping's
    // validity. A failure (e.g. THP disabled) is harmless and ignored.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_range(_: usize, _: usize) {}
