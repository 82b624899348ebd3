//! Allocator settings for training on the CPU.
//!
//! glibc serves blocks above 128 KB (its threshold adapts up to 32 MB) with `mmap` and gives
//! them back with `munmap` when freed, and trims the top of its heap the same way. A training
//! step allocates the same full-size activations and gradients (tens of MB at batch 256) every
//! step, so every step page-faults all of them back in, zero-filled by the kernel: about a
//! tenth of a small-cnn step on 2 cores. Keeping freed memory for reuse removes that; the
//! process's resident size then stays at its peak, which training reaches every step anyway.

/// Largest `mmap` threshold glibc accepts (`HEAP_MAX_SIZE / 2` on 64-bit): blocks up to this
/// come from the heap, where freed memory is reused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory at the top of the heap that glibc keeps instead of returning it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = libc::c_int::MAX;

/// Asks the C allocator to keep freed memory for reuse (glibc only; elsewhere it does
/// nothing). Returns whether the settings took. Call once, early: the training binaries do.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; both values are in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_settings() {
        assert!(super::keep_freed_memory());
    }
}
