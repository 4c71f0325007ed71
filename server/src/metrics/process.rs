//! The process's own resource use, read from /proc at scrape time.

/// Resident memory in bytes: `/proc/self/statm`'s second field (pages) times the page
/// size. None where /proc is not there or cannot be parsed.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    resident_from_statm(&statm, page_size()?)
}

fn resident_from_statm(statm: &str, page_size: u64) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page_size)
}

fn page_size() -> Option<u64> {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_resident_pages_times_page_size() {
        assert_eq!(
            resident_from_statm("1000 250 30 4 0 90 0\n", 4096),
            Some(1_024_000)
        );
        assert_eq!(resident_from_statm("1000\n", 4096), None);
        assert_eq!(resident_from_statm("1000 x", 4096), None);
    }

    #[test]
    fn this_process_has_resident_memory() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
