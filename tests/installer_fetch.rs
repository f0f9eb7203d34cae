//! `kiln installer fetch debian-12`: a real fetch from the host's configured mirror, the
//! chain of checksums, re-fetching damaged cache entries, and refusing tampered indexes
//! (served from a local mirror on 127.0.0.1 built from the real files); install-tree
//! fetches checked against `.treeinfo`.

mod imagebuild_support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use imagebuild_support::*;

struct Fetch {
    cache: PathBuf,
    stdout: String,
}

fn field<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name}: in {stdout}"))
}

fn fetch(cache: &Path, extra: &[&str]) -> std::process::Output {
    kiln()
        .env("KILN_CACHE_DIR", cache)
        .args(["installer", "fetch", "debian-12"])
        .args(extra)
        .output()
        .unwrap()
}

/// One real fetch from the host's apt mirror, shared by the tests (read-only).
fn real_fetch() -> &'static Fetch {
    static F: OnceLock<Fetch> = OnceLock::new();
    F.get_or_init(|| {
        let cache = fresh_target_dir("installer-fetch-cache");
        let out = fetch(&cache, &[]);
        assert!(
            out.status.success(),
            "fetch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Fetch {
            cache,
            stdout: String::from_utf8(out.stdout).unwrap(),
        }
    })
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path)).stdout;
    String::from_utf8(out)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The package's files as apt gets them: installed, if the same version, else
/// `apt-get download`.
fn apt_files(version: &str) -> PathBuf {
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", DI_PACKAGE])
        .output()
        .unwrap();
    if installed.status.success() && String::from_utf8_lossy(&installed.stdout) == version {
        return debian_installer_dir();
    }
    let dir = fresh_target_dir(&format!("installer-fetch-{version}"));
    run_ok(
        Command::new("apt-get")
            .args(["download", &format!("{DI_PACKAGE}={version}")])
            .current_dir(&dir),
    );
    let deb = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap();
    run_ok(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("root")),
    );
    dir.join("root").join(DI_DIR)
}

#[test]
fn real_fetch_matches_what_apt_installs() {
    let f = real_fetch();
    let version = field(&f.stdout, "version");
    let kernel = PathBuf::from(field(&f.stdout, "kernel"));
    let initrd = PathBuf::from(field(&f.stdout, "initrd"));
    assert!(kernel.starts_with(&f.cache) && initrd.starts_with(&f.cache));
    let apt = apt_files(version);
    assert!(
        std::fs::read(&kernel).unwrap() == std::fs::read(apt.join("linux")).unwrap(),
        "kernel differs from apt's"
    );
    assert!(
        std::fs::read(&initrd).unwrap() == std::fs::read(apt.join("initrd.gz")).unwrap(),
        "initrd differs from apt's"
    );
    // The .deb is cached under its SHA256, which the index listed.
    let deb_sha = field(&f.stdout, "sha256");
    let blob = f.cache.join("blobs/sha256").join(deb_sha);
    assert_eq!(sha256(&blob), deb_sha);
    assert!(f
        .stdout
        .contains("cmdline: auto=true priority=critical console=ttyS0,115200"));
}

#[test]
fn damaged_cache_entries_are_detected_and_fetched_again() {
    let f = real_fetch();
    let cache = tempdir();
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", f.cache.display()))
            .arg(cache.path()),
    );
    let deb_sha = field(&f.stdout, "sha256");
    let blob = cache.path().join("blobs/sha256").join(deb_sha);
    let kernel = PathBuf::from(
        field(&f.stdout, "kernel")
            .replace(f.cache.to_str().unwrap(), cache.path().to_str().unwrap()),
    );
    let good_kernel = std::fs::read(&kernel).unwrap();

    // Flip one byte of the cached .deb and of the extracted kernel.
    for path in [&blob, &kernel] {
        let mut data = std::fs::read(path).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        std::fs::write(path, data).unwrap();
    }
    let out = fetch(cache.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("is damaged; fetching it again"), "{stderr}");
    assert_eq!(sha256(&blob), deb_sha);
    assert!(std::fs::read(&kernel).unwrap() == good_kernel);

    // Only the extracted kernel damaged: re-extracted from the (intact) cached .deb.
    let mut data = good_kernel.clone();
    data[100] ^= 1;
    std::fs::write(&kernel, data).unwrap();
    let out = fetch(cache.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("damaged; extracting it again"),
        "{stderr}"
    );
    assert!(std::fs::read(&kernel).unwrap() == good_kernel);
}

/// Serves files under `root` over HTTP on 127.0.0.1 (GET only, one thread per request).
fn serve(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let root = root.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let file = root.join(path.trim_start_matches('/'));
                let ok = !path.contains("..") && file.is_file();
                let _ = if ok {
                    let body = std::fs::read(&file).unwrap();
                    write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .and_then(|_| stream.write_all(&body))
                } else {
                    write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                };
            });
        }
    });
    format!("http://{addr}/debian")
}

/// A local mirror with the real InRelease, Packages.xz and .deb.
fn local_mirror(f: &Fetch) -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let root = dir.path().join("debian");
    let dists = root.join("dists/bookworm");
    std::fs::create_dir_all(dists.join("main/binary-amd64")).unwrap();
    let inrelease = std::fs::read_to_string(f.cache.join("dists/bookworm/InRelease")).unwrap();
    std::fs::write(dists.join("InRelease"), &inrelease).unwrap();
    let packages_sha = inrelease
        .lines()
        .skip_while(|l| !l.starts_with("SHA256:"))
        .find(|l| l.ends_with(" main/binary-amd64/Packages.xz"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let blobs = f.cache.join("blobs/sha256");
    std::fs::copy(
        blobs.join(&packages_sha),
        dists.join("main/binary-amd64/Packages.xz"),
    )
    .unwrap();
    let memo = std::fs::read_to_string(
        f.cache
            .join("packages")
            .join(&packages_sha)
            .join(DI_PACKAGE),
    )
    .unwrap();
    let pool = root.join(memo.lines().nth(1).unwrap());
    std::fs::create_dir_all(pool.parent().unwrap()).unwrap();
    std::fs::hard_link(blobs.join(field(&f.stdout, "sha256")), &pool).unwrap();
    (dir, root)
}

#[test]
fn tampered_indexes_are_refused() {
    let f = real_fetch();
    let (_dir, root) = local_mirror(f);
    let url = serve(root.parent().unwrap().to_path_buf());

    // Control: the untouched local mirror works, so failures below are the tampering.
    let cache = tempdir();
    let out = fetch(cache.path(), &["--mirror", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        field(&String::from_utf8(out.stdout).unwrap(), "sha256"),
        field(&f.stdout, "sha256")
    );

    // A Packages.xz that differs from what the signed InRelease lists.
    let packages = root.join("dists/bookworm/main/binary-amd64/Packages.xz");
    let good = std::fs::read(&packages).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 100] ^= 0x55;
    std::fs::write(&packages, &bad).unwrap();
    let cache = tempdir();
    let out = fetch(cache.path(), &["--mirror", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tampered Packages.xz accepted");
    assert!(
        stderr.contains("Packages.xz: SHA256") && stderr.contains("refusing it"),
        "{stderr}"
    );
    assert!(!cache.path().join("installers").exists());
    std::fs::write(&packages, &good).unwrap();

    // An InRelease edited to list other hashes no longer verifies.
    let inrelease_path = root.join("dists/bookworm/InRelease");
    let inrelease = std::fs::read_to_string(&inrelease_path).unwrap();
    let line = inrelease
        .lines()
        .find(|l| l.ends_with(" main/binary-amd64/Packages.xz"))
        .unwrap();
    let first = line.trim_start().chars().next().unwrap();
    let forged = line.replacen(first, if first == '0' { "1" } else { "0" }, 1);
    std::fs::write(&inrelease_path, inrelease.replace(line, &forged)).unwrap();
    let out = fetch(cache.path(), &["--mirror", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "forged InRelease accepted");
    assert!(stderr.contains("no valid signature"), "{stderr}");
}

#[test]
fn no_mirror_anywhere_says_how_to_set_one() {
    let apt = tempdir();
    let cache = tempdir();
    let out = kiln()
        .env("KILN_CACHE_DIR", cache.path())
        .args(["installer", "fetch", "debian-12", "--apt-dir"])
        .arg(apt.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--mirror") && stderr.contains("bookworm"),
        "{stderr}"
    );
}

#[test]
fn fedora_tree_fetch_checks_treeinfo_sums() {
    let di = debian_installer_dir();
    let dir = tempdir();
    let tree = dir.path().join("fedora");
    std::fs::create_dir_all(tree.join("images/pxeboot")).unwrap();
    std::fs::copy(di.join("linux"), tree.join("images/pxeboot/vmlinuz")).unwrap();
    std::fs::copy(di.join("initrd.gz"), tree.join("images/pxeboot/initrd.img")).unwrap();
    let treeinfo = format!(
        "[header]\ntype = productmd.treeinfo\nversion = 1.2\n\n[checksums]\nimages/pxeboot/initrd.img = sha256:{}\nimages/pxeboot/vmlinuz = sha256:{}\n\n[images-x86_64]\ninitrd = images/pxeboot/initrd.img\nkernel = images/pxeboot/vmlinuz\n",
        sha256(&tree.join("images/pxeboot/initrd.img")),
        sha256(&tree.join("images/pxeboot/vmlinuz")),
    );
    std::fs::write(tree.join(".treeinfo"), treeinfo).unwrap();
    let base = serve(dir.path().to_path_buf());
    let url = base.replace("/debian", "/fedora");

    let cache = tempdir();
    let out = kiln()
        .env("KILN_CACHE_DIR", cache.path())
        .args(["installer", "fetch", "fedora-40", "--mirror", &url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(field(&stdout, "kernel")).unwrap()
            == std::fs::read(di.join("linux")).unwrap()
    );
    assert!(
        std::fs::read(field(&stdout, "initrd")).unwrap()
            == std::fs::read(di.join("initrd.gz")).unwrap()
    );
    assert!(
        stdout.contains("cmdline: inst.ks=file:/ks.cfg inst.text console=ttyS0"),
        "{stdout}"
    );

    // A tree file that does not match .treeinfo is refused.
    std::fs::write(tree.join("images/pxeboot/initrd.img"), b"not the initrd").unwrap();
    let cache = tempdir();
    let out = kiln()
        .env("KILN_CACHE_DIR", cache.path())
        .args(["installer", "fetch", "fedora-40", "--mirror", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("initrd.img: SHA256")
            && stderr.contains("refusing"),
        "{stderr}"
    );
}
