//! Linux boots through `kiln run`, and the stock Debian installer kernel.
//!
//! Each boot of kiln's minimal kernel costs 40-70 s on PVM hosts, so checks are
//! batched: one 2-vCPU PVH boot (marker, 2 online CPUs, boot timer, power-off
//! exit 0), one boot through the vmlinux's 64-bit entry that reboots (exit 2),
//! and one LZ4 bzImage boot that panics with panic=-1 (exit 2).
//!
//! Kernel and initramfs come from KILN_TEST_KERNEL_DIR / KILN_TEST_INITRAMFS
//! (scripts/test.sh sets them), else from scripts/build-kernel.sh and
//! scripts/build-initramfs.sh, which build them or reuse their cache.

use std::path::{Path, PathBuf};

mod common;
mod qcow2_support;
use common::{kernel_dir, run_kiln};
use qcow2_support::{qemu_create, qemu_img, tool};

use kiln_vmm::boot::{self, BootEntry, KernelFormat};
use kiln_vmm::config::EntryChoice;
use kiln_vmm::memory::create_guest_memory;
use linux_loader::loader::bootparam::boot_params;
use vm_memory::{Bytes, GuestAddress};

const DEBIAN_INSTALLER: &str =
    "/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64";

/// The base initramfs plus a second newc archive holding `/test.sh`, in a fresh
/// directory named after the boot.
fn initramfs_with_test(name: &str, script: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("vmm-boot-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    common::initramfs_with_test(&dir, script)
}

#[test]
fn pvh_boot_with_two_vcpus_reaches_init_and_powers_off() {
    // Also disks with two request queues: Linux sets up one per vCPU (/sys/block/
    // vda/mq/0 and 1) and its I/O goes through them. No pipelines (see blk_guest.rs).
    // vdb is qcow2: reads of its data clusters bypass the format through io_uring on
    // both queues (each dd pinned to one vCPU, so to one queue), and a discard frees
    // clusters they read. A pinned dd is retried: on PVM hosts a new process sometimes
    // faults on its first TLS access (see the README), which CI met once here.
    let script = r#"echo KILN-NPROC=$(nproc)
set -- /sys/block/vda/mq/*
echo KILN-MQ=$#
dd if=/dev/zero of=/tmp/z bs=4096 count=64 2>/dev/null
tr '\000' '\132' < /tmp/z > /tmp/pattern
dd if=/tmp/pattern of=/dev/vda bs=4096 conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=4096 count=64 2>/dev/null
cmp /tmp/pattern /tmp/back && echo KILN-MQ-CMP=ok
dd if=/tmp/pattern of=/dev/vdb bs=64k conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
retry() { for t in 1 2 3; do "$@" && return 0; echo "KILN-RETRY $*"; done; return 1; }
retry taskset 1 dd if=/dev/vdb of=/tmp/q0 bs=64k count=2 2>/dev/null
retry taskset 2 dd if=/dev/vdb of=/tmp/q1 bs=64k skip=2 count=2 2>/dev/null
cat /tmp/q0 /tmp/q1 > /tmp/qcow2-back
cmp /tmp/pattern /tmp/qcow2-back && echo KILN-MQ-QCOW2-CMP=ok
blkdiscard -o 131072 -l 131072 /dev/vdb && echo KILN-MQ-DISCARD=ok
"#;
    let initrd = initramfs_with_test("pvh", script);
    let scratch = initrd.with_file_name("mq.raw");
    std::fs::write(&scratch, vec![0u8; 4 << 20]).unwrap();
    let disk = format!("path={},format=raw,num-queues=2", scratch.display());
    let qcow2 = initrd.with_file_name("mq.qcow2");
    let _ = std::fs::remove_file(&qcow2);
    qemu_create(&qcow2, "", "4M");
    let qcow2_disk = format!("path={},num-queues=2", qcow2.display());
    let vmlinux = kernel_dir().join("vmlinux");
    let run = run_kiln(
        "PVH boot",
        &[
            "-v",
            "run",
            "--net",
            "none",
            "--disk",
            &disk,
            "--disk",
            &qcow2_disk,
            "--kernel",
            vmlinux.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--entry",
            "pvh",
            "--cpus",
            "2",
            "--memory",
            "256M",
            "--boot-timer",
            "--timeout",
            "600s",
        ],
    );
    let (stdout, stderr) = (run.stdout(), run.stderr());
    eprintln!("{stderr}");
    assert_eq!(run.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("KILN-INIT-OK"), "{stdout}");
    assert!(stdout.contains("KILN-NPROC=2"), "{stdout}");
    assert!(stdout.contains("KILN-MQ=2"), "{stdout}");
    assert!(stdout.contains("KILN-MQ-CMP=ok"), "{stdout}");
    let written = std::fs::read(&scratch).unwrap();
    assert!(
        written[..256 << 10].iter().all(|&b| b == 0x5a),
        "the guest's write"
    );
    assert!(stdout.contains("KILN-MQ-QCOW2-CMP=ok"), "{stdout}");
    assert!(stdout.contains("KILN-MQ-DISCARD=ok"), "{stdout}");
    // QEMU's view of the image: consistent, the first half the guest's pattern, the
    // discarded half reading zeroes and holding no data.
    let image = qcow2.to_str().unwrap();
    qemu_img(&["check", "-q", image]);
    let io = tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "read -P 0x5a 0 128k",
            "-c",
            "read -P 0 128k 128k",
            image,
        ],
    );
    assert!(!io.contains("Pattern verification failed"), "{io}");
    let map = qemu_img(&["map", "--output=json", image]);
    let map: Vec<serde_json::Value> = serde_json::from_str(&map).unwrap();
    let data_at = |offset: u64| {
        map.iter().any(|e| {
            let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            (start..start + len).contains(&offset) && e["data"] == true
        })
    };
    assert!(
        data_at(0) && data_at(65536),
        "the written half holds no data: {map:?}"
    );
    assert!(
        !data_at(131072) && !data_at(196608),
        "the discarded half holds data: {map:?}"
    );
    assert!(stdout.contains("KILN-TEST-EXIT=0"), "{stdout}");
    assert!(stderr.contains("kiln: boot-timer: "), "{stderr}");
}

#[test]
fn linux64_entry_boot_reboots_with_exit_2() {
    let initrd = initramfs_with_test("linux64", "reboot -f\n");
    let vmlinux = kernel_dir().join("vmlinux");
    let run = run_kiln(
        "64-bit entry boot",
        &[
            "run",
            "--net",
            "none",
            "--kernel",
            vmlinux.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--entry",
            "linux64",
            "--memory",
            "256M",
            "--timeout",
            "600s",
        ],
    );
    let (stdout, stderr) = (run.stdout(), run.stderr());
    eprintln!("{stderr}");
    assert!(stdout.contains("KILN-INIT-OK"), "{stdout}\n{stderr}");
    assert_eq!(run.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("guest reset"), "{stderr}");
}

#[test]
fn lz4_bzimage_boots_and_a_panic_with_panic_minus_1_exits_2() {
    let bzimage = kernel_dir().join("bzImage");
    let run = run_kiln(
        "bzImage boot",
        &[
            "run",
            "--net",
            "none",
            "--kernel",
            bzimage.to_str().unwrap(),
            "--append",
            "panic=-1 rdinit=/nonexistent init=/nonexistent",
            "--memory",
            "256M",
            "--timeout",
            "600s",
        ],
    );
    let (stdout, stderr) = (run.stdout(), run.stderr());
    eprintln!("{stderr}");
    assert!(stdout.contains("Kernel panic"), "{stdout}\n{stderr}");
    assert_eq!(run.code(), Some(2), "{stdout}\n{stderr}");
}

/// Debian's installer kernel (an XZ bzImage): the loader parses its setup header
/// and writes boot_params, e820, the command line and the initrd.
#[test]
fn debian_installer_kernel_is_loaded_and_described_to_it() {
    let kernel = Path::new(DEBIAN_INSTALLER).join("linux");
    let initrd = Path::new(DEBIAN_INSTALLER).join("initrd.gz");
    assert!(
        kernel.exists(),
        "{} is missing: install debian-installer-12-netboot-amd64",
        kernel.display()
    );
    let mem = create_guest_memory(512 << 20).unwrap();
    let loaded = boot::load_kernel(&mem, &kernel, EntryChoice::Auto).unwrap();
    assert_eq!(loaded.format, KernelFormat::BzImage);
    assert_eq!(
        loaded.entry,
        BootEntry::Linux64 {
            entry: GuestAddress(0x100200)
        }
    );
    let rd = boot::load_initrd(&mem, &initrd, &loaded).unwrap();
    let cmdline = "console=ttyS0 priority=low";
    boot::write_boot_info(&mem, &loaded, Some(rd), cmdline, GuestAddress(0xe0000)).unwrap();

    let params: boot_params = mem.read_obj(GuestAddress(0x7000)).unwrap();
    let file = std::fs::read(&kernel).unwrap();
    let hdr = params.hdr;
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!({ hdr.code32_start }, 0x100000);
    // The protected-mode kernel is in memory at 1 MiB.
    let setup = (usize::from(file[0x1f1]).max(4) + 1) * 512;
    let mut head = [0u8; 4096];
    mem.read_slice(&mut head, GuestAddress(0x100000)).unwrap();
    assert_eq!(&head[..], &file[setup..setup + 4096]);
    // Command line.
    let mut line = vec![0u8; cmdline.len() + 1];
    mem.read_slice(&mut line, GuestAddress(u64::from(hdr.cmd_line_ptr)))
        .unwrap();
    assert_eq!(&line[..cmdline.len()], cmdline.as_bytes());
    assert_eq!(line[cmdline.len()], 0);
    // Initrd: loaded high, page aligned, below initrd_addr_max, bytes intact.
    let initrd_bytes = std::fs::read(&initrd).unwrap();
    let addr = u64::from(hdr.ramdisk_image);
    assert_eq!(u64::from(hdr.ramdisk_size), initrd_bytes.len() as u64);
    assert_eq!(addr % 4096, 0);
    assert!(addr + initrd_bytes.len() as u64 <= u64::from(hdr.initrd_addr_max) + 1);
    assert!(addr + initrd_bytes.len() as u64 <= 512 << 20);
    assert!(
        addr > (512 << 20) - 2 * initrd_bytes.len() as u64,
        "not loaded high"
    );
    let mut tail = vec![0u8; 4096];
    let last = initrd_bytes.len() - 4096;
    mem.read_slice(&mut tail, GuestAddress(addr + last as u64))
        .unwrap();
    assert_eq!(&tail[..], &initrd_bytes[last..]);
    // e820: low RAM, the reserved BIOS area (ACPI tables), RAM from 1 MiB.
    let e820: Vec<(u64, u64, u32)> = params.e820_table[..usize::from(params.e820_entries)]
        .iter()
        .map(|e| (e.addr, e.size, e.r#type))
        .collect();
    assert_eq!(
        e820,
        vec![
            (0, 0x9fc00, 1),
            (0x9fc00, 0x100000 - 0x9fc00, 2),
            (0x100000, (512 << 20) - 0x100000, 1)
        ]
    );
    assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);
}

/// The same kernel runs (its XZ decompressor, in emulated ring 0 here) for a
/// bounded time without a VMM error: at the timeout its vCPU is in long mode and
/// executes the copy of the decompressor that the kernel relocated above the
/// image kiln loaded at 1 MiB (so it ran its own code from the 64-bit entry on).
#[test]
fn debian_installer_kernel_runs_without_vmm_error() {
    let kernel = Path::new(DEBIAN_INSTALLER).join("linux");
    let initrd = Path::new(DEBIAN_INSTALLER).join("initrd.gz");
    let run = run_kiln(
        "installer kernel",
        &[
            "-v",
            "run",
            "--net",
            "none",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--serial",
            "none",
            "--timeout",
            "10s",
        ],
    );
    let stderr = run.stderr();
    assert_eq!(run.code(), Some(124), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("at timeout: vCPU 0:"))
        .unwrap_or_else(|| panic!("no vCPU state in: {stderr}"));
    let field = |name: &str| -> u64 {
        let v = line.split(&format!("{name}=0x")).nth(1).unwrap();
        u64::from_str_radix(v.split_whitespace().next().unwrap(), 16).unwrap()
    };
    assert_ne!(field("EFER") & (1 << 10), 0, "long mode active: {line}");
    let image_end = 0x100000 + std::fs::metadata(&kernel).unwrap().len();
    assert!(
        field("RIP") > image_end,
        "not running the relocated decompressor: {line}"
    );
    assert!(
        field("RSP") > image_end,
        "not on the decompressor's own stack: {line}"
    );
    if Path::new("/sys/module/kvm_pvm").exists() {
        assert!(
            stderr.contains("userspace cannot run on this host"),
            "{stderr}"
        );
    }
}
