//! The allocator of the static and Python builds: mimalloc, called the way it is fast.
//!
//! The `mimalloc` crate passes every Rust allocation to `mi_malloc_aligned`. In mimalloc
//! v3 that takes the plain path only for power-of-two block sizes; every other size (a
//! 48-byte `Arc`, a 1.5 KB boxed future) is over-allocated and aligned by hand, which cost
//! the warm Python echo about 2,000 instructions per request (bench/PROFILING.md). A
//! plain `mi_malloc` block is already aligned enough when the alignment is at most 16
//! and divides the size: blocks are multiples of 8 (of 16 above 16 bytes) and a page's
//! first block is 16-aligned. Other layouts keep the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// `MI_MAX_ALIGN_SIZE`: what a plain mimalloc block of a size it divides is aligned to.
const NATURAL: usize = 16;

pub struct Mimalloc;

/// Returns the calling thread's free pages to the system. For a thread that allocated
/// once and then rests: the spare worker after its turn (main.rs) held 0.2 MB of
/// request-sized pages otherwise (bench/PROFILING.md).
pub fn release_thread_pages() {
    // SAFETY: no arguments to get wrong; it only looks at this thread's own heap and
    // the pages abandoned by threads that ended.
    unsafe { mi::mi_collect(true) }
}

fn natural(size: usize, align: usize) -> bool {
    align <= NATURAL && size % align == 0
}

// SAFETY: every block comes from mimalloc and goes back to it; each call passes on the
// layout's size, and its alignment whenever a plain block might not meet it.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if natural(layout.size(), layout.align()) {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if natural(layout.size(), layout.align()) {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if natural(new_size, layout.align()) {
            mi::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to 4 KiB and past it, at every alignment up to a page: the block
    /// is aligned, writable to its end, and keeps its bytes through a realloc.
    #[test]
    fn blocks_meet_their_alignment() {
        let sizes = (1..=4096).chain([6000, 65_536, 300_000, 5 << 20]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: non-zero size; each block is freed with its layout.
                unsafe {
                    for zeroed in [false, true] {
                        let p = if zeroed {
                            Mimalloc.alloc_zeroed(layout)
                        } else {
                            Mimalloc.alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            assert!((0..size).all(|i| *p.add(i) == 0));
                        }
                        p.write_bytes(0xa5, size);
                        let grown = size * 3 / 2 + 1;
                        let q = Mimalloc.realloc(p, layout, grown);
                        assert_eq!(
                            q as usize % align,
                            0,
                            "realloc {size}->{grown} align {align}"
                        );
                        assert!((0..size).all(|i| *q.add(i) == 0xa5));
                        Mimalloc.dealloc(q, Layout::from_size_align(grown, align).unwrap());
                    }
                }
            }
        }
    }
}
