//! SHA-512 crypt hashes agree with `openssl passwd -6 -salt`.

use std::io::Write;
use std::process::{Command, Stdio};

use kiln_imagebuild::password::{is_sha512_crypt, sha512_crypt, sha512_crypt_with_salt};

fn openssl(password: &str, salt: &str) -> String {
    // Through stdin so no password shows in the process list. (openssl prints <NULL>
    // for an empty password, so none is tested against it.)
    let mut child = Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is needed (Debian package openssl)");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn same_salt_same_hash_as_openssl() {
    for (pw, salt) in [
        ("s3cret", "abcdefgh"),
        ("x", "x"),
        ("a much longer pass phrase with spaces", "0123456789abcdef"),
        ("ünïcode", "./AZaz09"),
    ] {
        assert_eq!(
            sha512_crypt_with_salt(pw, salt).unwrap(),
            openssl(pw, salt),
            "{pw:?} {salt:?}"
        );
    }
}

#[test]
fn random_salt_hash_verifies_with_openssl() {
    let hash = sha512_crypt("hunter2").unwrap();
    assert!(is_sha512_crypt(&hash));
    let salt = hash.split('$').nth(2).unwrap();
    assert_eq!(openssl("hunter2", salt), hash);
}
