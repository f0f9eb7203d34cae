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
