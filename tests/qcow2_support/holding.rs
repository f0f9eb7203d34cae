//! `qemu-io` holding an image open for writing, as another user of the image would.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `qemu-io` holding `image` open read-write until killed.
pub struct QemuHolding(Child);

impl QemuHolding {
    pub fn start(image: &Path) -> Self {
        let log = image.with_extension("qemu-io.log");
        let mut child = Command::new("qemu-io")
            .args(["-c", "sleep 60000", image.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Wait until it holds the write permission's lock byte. (Probing with
        // `qemu-img info` instead would take locks that keep qemu-io from opening.)
        let deadline = Instant::now() + Duration::from_secs(10);
        while !write_lock_held(image) {
            let exited = child.try_wait().unwrap();
            let why = || std::fs::read_to_string(&log).unwrap_or_default();
            assert!(exited.is_none(), "qemu-io exited ({exited:?}): {}", why());
            assert!(
                Instant::now() < deadline,
                "qemu-io never locked the image: {}",
                why()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        QemuHolding(child)
    }
}

impl Drop for QemuHolding {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether some process holds QEMU's "write permission" lock byte (101) of `image`;
/// F_OFD_GETLK only asks, it takes no lock.
fn write_lock_held(image: &Path) -> bool {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::File::open(image).unwrap();
    // SAFETY: flock is plain old data; all-zero is valid and completed below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 101;
    fl.l_len = 1;
    // SAFETY: F_OFD_GETLK reads and fills the valid flock; the descriptor is open.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(rc, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
    fl.l_type != libc::F_UNLCK as libc::c_short
}
