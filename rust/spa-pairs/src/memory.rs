//! Large buffers: allocated so that the kernel may back them with huge pages.
//!
//! The regrouping copy, the permutation and the outputs are written in random or parallel
//! order right after allocation; with 4 KiB pages most of that time goes to page faults
//! and TLB misses. Where transparent huge pages are in `madvise` mode, ask for them.

/// Below this, huge pages would not be used anyway.
const HUGE_MIN_BYTES: usize = 4 << 20;

/// An empty Vec with room for `n` elements, advised for huge pages.
pub(crate) fn with_capacity<T>(n: usize) -> Vec<T> {
    let v = Vec::with_capacity(n);
    advise_huge(v.as_ptr(), n * std::mem::size_of::<T>());
    v
}

/// `n` zeros of a primitive number type: a calloc, so no page is touched until first use.
pub(crate) fn zeros<T: Clone + Default>(n: usize) -> Vec<T> {
    let v = vec![T::default(); n];
    advise_huge(v.as_ptr(), n * std::mem::size_of::<T>());
    v
}

#[cfg(target_os = "linux")]
fn advise_huge<T>(ptr: *const T, bytes: usize) {
    if bytes < HUGE_MIN_BYTES {
        return;
    }
    // madvise needs a page-aligned start; advise the page-aligned interior.
    let page = 4096usize;
    let start = (ptr as usize).next_multiple_of(page);
    let end = (ptr as usize + bytes) & !(page - 1);
    if end > start {
        // SAFETY: the range lies inside one live allocation; MADV_HUGEPAGE only changes
        // how the kernel backs it, never its contents. Failure is harmless (ignored).
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge<T>(_ptr: *const T, _bytes: usize) {}

/// Ask for the cache line at `p` ahead of use (a hint: never faults, may be ignored).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching reads nothing architecturally and cannot fault, whatever `p` is.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
