//! Assembles kiln's tiny test guests (resources/guests/*.S) into PVH ELF images with
//! the host C toolchain, so no extra rustup target is needed. The images are
//! embedded by `src/guests.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/guests");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("guests");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/guests");
    println!("cargo:rerun-if-changed={}", guests.display());
    let linker_script = guests.join("guest.ld");
    for entry in std::fs::read_dir(&guests).expect("read resources/guests") {
        let path = entry.expect("dir entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
        if path.extension().and_then(|e| e.to_str()) != Some("S") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let object = out.join(format!("{stem}.o"));
        let image = out.join(format!("{stem}.elf"));
        run(Command::new("cc")
            .args(["-c", "-nostdlib", "-fno-pic", "-I"])
            .arg(&guests)
            .arg("-o")
            .arg(&object)
            .arg(&path));
        run(Command::new("ld")
            .args([
                "-static",
                "-nostdlib",
                "--build-id=none",
                "-z",
                "noexecstack",
                "-T",
            ])
            .arg(&linker_script)
            .arg("-o")
            .arg(&image)
            .arg(&object));
    }
}

fn run(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e} (install gcc and binutils)"));
    assert!(status.success(), "{command:?} failed: {status}");
}
