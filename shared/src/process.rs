//! Process-wide settings every SPLAI binary applies as it starts.

/// Turns transparent huge pages off for this process (Linux; elsewhere nothing).
///
/// mimalloc asks for huge pages on its 1 GiB arena and later hands unused 64 KiB pieces of it
/// back to the kernel; each time it touches a piece again the kernel may allocate and zero a
/// whole fresh 2 MiB page. Under load that zeroing was 7 % of the server's samples (and about
/// 4 % of `splai bench` throughput), for memory the process mostly did not use.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        // Only a cost: the process runs the same with huge pages.
        tracing::debug!(error = %e, "could not turn transparent huge pages off");
    }
}
