//! The listening UNIX socket of `--console virtio,socket=PATH,server=on`.
//!
//! Like QEMU's `server=on`, kiln creates the socket and a client connects when it
//! likes. A socket file left by an earlier run that nobody listens on any more is
//! replaced; a live one, or a path that is not a socket, is refused, naming the
//! path. The socket file goes when the VM's device configuration is dropped.

use std::io::{Error, ErrorKind};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A bound, listening socket and the file it created.
#[derive(Debug)]
pub struct ListeningSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ListeningSocket {
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    "exists and is not a socket; not replacing it",
                ));
            }
            Ok(_) if UnixStream::connect(path).is_ok() => {
                return Err(Error::new(
                    ErrorKind::AddrInUse,
                    "another process is listening on it",
                ));
            }
            Ok(_) => std::fs::remove_file(path)?, // stale, from an earlier run
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(ListeningSocket {
            listener: UnixListener::bind(path)?,
            path: path.to_owned(),
        })
    }

    /// A descriptor of the socket for one device (a rebuilt device after a guest
    /// reboot gets another).
    pub fn listener(&self) -> std::io::Result<UnixListener> {
        self.listener.try_clone()
    }
}

impl Drop for ListeningSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_stale_socket_refuses_a_live_one_or_a_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        // Stale: bound by an earlier run that is gone.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let sock = ListeningSocket::bind(&path).unwrap();
        let _client = UnixStream::connect(&path).unwrap();
        let err = ListeningSocket::bind(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
        drop(sock);
        assert!(!path.exists(), "socket file left behind");

        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "keep me").unwrap();
        let err = ListeningSocket::bind(&file).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
