//! The process allocator: the system allocator, except that very large
//! blocks are mapped with `MAP_NORESERVE`.
//!
//! Why: the Kafka codec sizes a vector from the element count a request
//! declares (`Vec::with_capacity(n)`) before it has read the elements. A
//! 21-byte frame can declare 2^31 elements and ask for hundreds of GB; with
//! the system allocator that request fails and the process aborts, which
//! would let any client kill the server. A `MAP_NORESERVE` mapping of that
//! size succeeds without committing memory; decoding then fails on the
//! missing bytes, the vector is dropped and the mapping released, having
//! touched a page or two. Legitimately large blocks work the same way.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks this large or larger are mapped directly.
const HUGE: usize = 1 << 30;
const PAGE: usize = 4096;

pub struct FluxoAllocator;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no
    // preconditions; failure is reported as MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

unsafe impl GlobalAlloc for FluxoAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // Fresh anonymous mappings are zero-filled.
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: the block was mapped by `map` with exactly this size.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Crossing the threshold (or resizing a mapping): move the block.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller of the sizes and
            // do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_huge_declared_capacity_does_not_abort() {
        // 200 GB of capacity, of which nothing is touched.
        let v: Vec<[u8; 100]> = Vec::with_capacity(2_000_000_000);
        assert!(v.capacity() >= 2_000_000_000);
        let mut grow: Vec<u8> = Vec::with_capacity(HUGE_MINUS_ONE);
        grow.push(1);
        grow.reserve(2);
        assert_eq!(grow[0], 1);
    }
    const HUGE_MINUS_ONE: usize = super::HUGE - 1;
}
