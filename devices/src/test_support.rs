//! Helpers for tests of this crate and of the crates above it (feature `test-support`).

/// Make io_uring_setup fail with ENOSYS on this thread (and threads it starts), as a
/// seccomp profile without io_uring does.
pub fn deny_io_uring_on_this_thread() {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let nr = libc::SYS_io_uring_setup as u32;
    let filter = [
        // Load the system call number (offset 0 of struct seccomp_data).
        libc::sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: nr,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl calls; the filter program outlives the call, which copies it.
    // Without SECCOMP_FILTER_FLAG_TSYNC the filter binds only this thread.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

/// How many of the pages of `[offset, offset + len)` of the file at `path` are in the
/// host page cache (mincore(2) of a shared mapping, which reads nothing itself).
pub fn cached_pages(path: &std::path::Path, offset: u64, len: u64) -> usize {
    use std::os::unix::io::AsRawFd;
    const PAGE: u64 = 4096;
    let file = std::fs::File::open(path).unwrap();
    let start = offset / PAGE * PAGE;
    let map_len = (offset + len - start) as usize;
    // SAFETY: a fresh read-only shared mapping of an open file; nothing reads through
    // it, and it is unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            start as libc::off_t,
        )
    };
    assert_ne!(
        addr,
        libc::MAP_FAILED,
        "{}",
        std::io::Error::last_os_error()
    );
    let mut vec = vec![0u8; map_len.div_ceil(PAGE as usize)];
    // SAFETY: `addr` is a page-aligned mapping of `map_len` bytes, and `vec` has one
    // byte per page of it.
    let rc = unsafe { libc::mincore(addr, map_len, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(addr, map_len) };
    assert_eq!(rc, 0, "{err}");
    vec.iter().filter(|v| *v & 1 != 0).count()
}

/// Drop the file at `path` from the host page cache (written back first).
pub fn evict(path: &std::path::Path) {
    crate::block::dio::drop_from_page_cache(path)
        .unwrap_or_else(|e| panic!("cannot evict {}: {e}", path.display()));
}
