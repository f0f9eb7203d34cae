//! `kiln run` with the serial console, or the virtio console, on a terminal: raw mode,
//! the Ctrl-A escape commands, and the terminal restored afterwards. The terminal is a
//! pty.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

mod common;

/// A pty pair: (master, slave).
fn openpty() -> (std::fs::File, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the ints; the optional name,
    // termios and winsize pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned by nothing else.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        )
    }
}

fn termios(fd: &OwnedFd) -> libc::termios {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data, filled in by tcgetattr for a valid fd.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open pty slave; t is valid for writes.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t
}

#[test]
fn ctrl_a_x_quits_with_130_and_restores_the_terminal() {
    quit_from_the_terminal(
        "serial",
        &["--serial", "stdio"],
        "serial console on this terminal",
    );
}

#[test]
fn the_virtio_console_takes_the_terminal_when_the_serial_console_does_not() {
    quit_from_the_terminal(
        "virtio",
        &["--serial", "none", "--console", "virtio"],
        "virtio console (hvc0) on this terminal",
    );
}

/// Run a guest that idles with `args` and stdin on a pty: `banner` names the console
/// that took the terminal; Ctrl-A h helps, Ctrl-A x quits with 130, and the terminal
/// is as before.
fn quit_from_the_terminal(label: &str, args: &[&str], banner: &str) {
    let guest = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("console-tty-hang-{label}.elf"));
    std::fs::write(&guest, kiln_vmm::guests::HANG).unwrap();
    let (mut master, slave) = openpty();
    let before = termios(&slave);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", "--net", "none", "--timeout", "30s"])
        .args(args)
        .arg("--kernel")
        .arg(&guest)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut hint = String::new();
    stderr.read_line(&mut hint).unwrap();
    assert!(hint.contains("Ctrl-A x quits"), "{hint:?}");
    assert!(hint.contains(banner), "{hint:?}");
    // Raw mode is on while the VM runs: no echo, no line editing.
    let during = termios(&slave);
    assert_eq!(during.c_lflag & (libc::ICANON | libc::ECHO), 0);

    master.write_all(b"\x01h").unwrap();
    let mut help = String::new();
    while !help.contains("Ctrl-A Ctrl-A") {
        assert_ne!(stderr.read_line(&mut help).unwrap(), 0, "no help: {help}");
    }
    master.write_all(b"\x01x").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("quit from the console"), "{rest}");
    let after = termios(&slave);
    assert_eq!(after.c_lflag, before.c_lflag, "terminal left in raw mode");
    assert_eq!(after.c_iflag, before.c_iflag);
    assert_eq!(after.c_oflag, before.c_oflag);
}

/// A Linux guest whose console is hvc0 reads a line typed on the terminal: the
/// terminal's keys reach the guest's tty through the virtio console, and its answer
/// comes back on the terminal. One boot of the test kernel.
#[test]
fn a_linux_guest_reads_the_terminal_through_hvc0() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-tty-hvc0");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = "echo READY-FOR-INPUT\nread line\necho \"GOT=[$line]\"";
    let initrd = common::initramfs_with_test(&dir, script);
    let kernel = common::kernel_dir().join("vmlinux");
    let (mut master, slave) = openpty();
    let child = common::kiln()
        .args([
            "run",
            "--memory",
            "256M",
            "--serial",
            "none",
            "--console",
            "virtio",
        ])
        .args([
            "--net",
            "none",
            "--append",
            "console=hvc0",
            "--timeout",
            "300s",
        ])
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A failed test must not leave the VM running until its timeout.
    let mut child = KillOnDrop(child);
    // The pty's output, read on a thread (a read blocks until the guest writes).
    let (chunks, screen) = channel();
    let mut reader = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || chunks.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !seen.contains(what) {
            let left = deadline.saturating_duration_since(Instant::now());
            match screen.recv_timeout(left) {
                Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => panic!("no {what:?} on the terminal; it shows:\n{seen}"),
            }
        }
    };
    wait_for("READY-FOR-INPUT");
    master.write_all(b"hello kiln\r").unwrap();
    wait_for("GOT=[hello kiln]");
    wait_for("KILN-TEST-EXIT=0");
    let status = child.0.wait().unwrap();
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("virtio console (hvc0) on this terminal"),
        "{stderr}"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
