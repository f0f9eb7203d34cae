//! `kiln installer inject` on Debian's real installer initrd, checked with zcat + cpio.

mod imagebuild_support;

use std::io::Write;
use std::process::{Command, Stdio};

use imagebuild_support::*;

/// `cpio -t` of a decompressed stream (first archive only: cpio stops at TRAILER!!!).
fn cpio_list(stream: &[u8]) -> Vec<String> {
    let mut child = Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cpio");
    let mut stdin = child.stdin.take().unwrap();
    let data = stream.to_vec();
    let writer = std::thread::spawn(move || {
        // cpio exits at the first trailer; a broken pipe after that is expected.
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "cpio -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn zcat(path: &std::path::Path) -> Vec<u8> {
    run_ok(Command::new("zcat").arg(path)).stdout
}

/// Lists every archive in a decompressed initramfs stream, the way the kernel walks it:
/// archives follow each other, separated by NUL padding. `first_len` is where the
/// original's decompressed stream ends.
fn list_all(stream: &[u8], first_len: usize) -> (Vec<String>, Vec<String>) {
    let first = cpio_list(&stream[..first_len]);
    let rest = &stream[first_len..];
    let start = rest.iter().position(|&b| b != 0).expect("nothing appended");
    (first, cpio_list(&rest[start..]))
}

#[test]
fn preseed_lands_in_real_debian_initrd_and_original_is_a_prefix() {
    require_tool("cpio", "cpio");
    let initrd = debian_installer_dir().join("initrd.gz");
    let dir = tempdir();
    let preseed = dir.path().join("my-answers.cfg");
    std::fs::write(&preseed, "d-i debian-installer/locale string en_US.UTF-8\n").unwrap();
    let out = dir.path().join("initrd-preseed.gz");
    run_ok(
        kiln()
            .args(["installer", "inject", "--initrd"])
            .arg(&initrd)
            .arg("--file")
            .arg(&preseed)
            .args(["--as", "/preseed.cfg", "--output"])
            .arg(&out),
    );

    let original = std::fs::read(&initrd).unwrap();
    let injected = std::fs::read(&out).unwrap();
    assert!(injected.len() > original.len());
    assert!(
        injected.starts_with(&original),
        "original bytes are not a prefix"
    );

    let orig_stream = zcat(&initrd);
    let orig_members = cpio_list(&orig_stream);
    assert!(
        orig_members.len() > 100,
        "suspiciously few members: {}",
        orig_members.len()
    );
    let all = zcat(&out);
    assert!(all.starts_with(&orig_stream));
    let (first, appended) = list_all(&all, orig_stream.len());
    assert_eq!(first, orig_members, "original members changed");
    assert_eq!(appended, vec!["preseed.cfg".to_string()]);

    // The member's content is the file's.
    let extract = dir.path().join("x");
    std::fs::create_dir(&extract).unwrap();
    let tail = &all[orig_stream.len()..];
    let tail = &tail[tail.iter().position(|&b| b != 0).unwrap()..];
    std::fs::write(dir.path().join("tail.cpio"), tail).unwrap();
    run_ok(
        Command::new("sh")
            .current_dir(&extract)
            .args(["-c", "cpio -i --quiet < ../tail.cpio"]),
    );
    assert_eq!(
        std::fs::read(extract.join("preseed.cfg")).unwrap(),
        std::fs::read(&preseed).unwrap()
    );
}

#[test]
fn name_defaults_to_file_name_and_nested_paths_get_directories() {
    let initrd = debian_installer_dir().join("initrd.gz");
    let dir = tempdir();
    let ks = dir.path().join("ks.cfg");
    std::fs::write(&ks, "text\n").unwrap();
    let out = dir.path().join("a.gz");
    run_ok(
        kiln()
            .args(["installer", "inject", "--initrd"])
            .arg(&initrd)
            .arg("--file")
            .arg(&ks)
            .arg("--output")
            .arg(&out),
    );
    let orig_len = zcat(&initrd).len();
    let (_, appended) = list_all(&zcat(&out), orig_len);
    assert_eq!(appended, vec!["ks.cfg".to_string()]);

    let out2 = dir.path().join("b.gz");
    run_ok(
        kiln()
            .args(["installer", "inject", "--initrd"])
            .arg(&initrd)
            .arg("--file")
            .arg(&ks)
            .args(["--as", "etc/kiln/ks.cfg", "--output"])
            .arg(&out2),
    );
    let (_, appended) = list_all(&zcat(&out2), orig_len);
    assert_eq!(appended, vec!["etc", "etc/kiln", "etc/kiln/ks.cfg"]);
}

#[test]
fn bad_input_fails_cleanly_without_output() {
    let dir = tempdir();
    let file = dir.path().join("f.cfg");
    std::fs::write(&file, "x").unwrap();
    let out = dir.path().join("out.gz");
    let err = run_fail(
        kiln()
            .args(["installer", "inject", "--initrd"])
            .arg(dir.path().join("missing.gz"))
            .arg("--file")
            .arg(&file)
            .arg("--output")
            .arg(&out),
    );
    assert!(err.contains("missing.gz"), "{err}");
    assert!(!out.exists());

    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, b"\x1f\x8b").unwrap();
    let err = run_fail(
        kiln()
            .args(["installer", "inject", "--initrd"])
            .arg(&initrd)
            .arg("--file")
            .arg(&file)
            .args(["--as", "../evil", "--output"])
            .arg(&out),
    );
    assert!(err.contains("../evil"), "{err}");
    assert!(!out.exists());
    // No temporary file is left behind either.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}
