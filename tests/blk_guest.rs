//! virtio-blk, virtio-console and virtio-rng seen from a Linux guest (kiln's minimal
//! kernel), checked afterwards from the host with QEMU's tools.
//!
//! Each boot costs 45-100 s on PVM hosts, so the checks are batched into two boots:
//! - `disks_console_and_rng_in_one_boot`: four disks (a qcow2 from `kiln img create`,
//!   a read-only raw disk, a qcow2 overlay on a qemu-img-made backing file, a raw
//!   disk with 4 KiB logical blocks), a
//!   virtio-console to a file with a set size (which hvc0's tty takes) and the default
//!   virtio-rng, both round their rings with EVENT_IDX;
//! - `ext4_qcow2_as_root_filesystem`: no initramfs, the root filesystem is an ext4
//!   image converted to qcow2.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{digest_hex, guest_value, initramfs_with_test, kernel_dir, kiln, run_kiln};
use kiln_devices::test_support::{cached_pages, evict};

const MIB: usize = 1 << 20;

fn work_dir(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a host tool and returns its stdout; fails the test when it fails.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Bytes that are neither constant nor guessable, so misplaced sectors show.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

fn assert_qemu_img_check_clean(image: &Path) {
    let out = tool("qemu-img", &["check", path_str(image)]);
    assert!(out.contains("No errors were found"), "{out}");
}

/// Guest side of the three-disk boot. vda: qcow2, written; vdb: raw read-only
/// pattern; vdc: qcow2 overlay whose backing file holds 0x3c in its first MiB, with
/// detect-zeroes=unmap (zeroes written over base data and over nothing). vdb is
/// cache=none (O_DIRECT) with 4 KiB physical blocks (512e), vdc cache=directsync
/// (O_DIRECT, and its cache starts off). vdd: raw, 4 KiB logical blocks (4Kn).
/// No pipelines: on PVM hosts two processes started side by side sometimes
/// misbehave (see the README); tools pass data through files instead.
const DISKS_SCRIPT: &str = r#"
echo "VDA-SERIAL=$(cat /sys/block/vda/serial)"
echo "VDB-RO=$(cat /sys/block/vdb/ro)"
echo "VDA-SECTORS=$(cat /sys/block/vda/size)"
echo "VDA-FEATURES=$(cat /sys/block/vda/device/features)"
dd if=/dev/zero of=/tmp/zero bs=65536 count=16 2>/dev/null
tr '\000' '\132' < /tmp/zero > /tmp/pat
dd if=/tmp/pat of=/dev/vda bs=65536 seek=16 conv=fsync 2>/dev/null
dd if=/dev/vdb of=/tmp/vdb bs=65536 count=16 2>/dev/null
dd if=/tmp/vdb of=/dev/vda bs=65536 seek=128 conv=fsync 2>/dev/null
blockdev --flushbufs /dev/vda
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=65536 skip=16 count=16 2>/dev/null
cmp /tmp/pat /tmp/back && echo VDA-CMP=ok || echo VDA-CMP=fail
dd if=/dev/vda of=/tmp/back bs=65536 skip=128 count=16 2>/dev/null
cmp /tmp/vdb /tmp/back && echo VDA-CMP2=ok || echo VDA-CMP2=fail
echo "VDA-CACHE=$(cat /sys/block/vda/cache_type)"
echo "write through" > /sys/block/vda/cache_type
echo "VDA-CACHE2=$(cat /sys/block/vda/cache_type) $(cat /sys/block/vda/queue/write_cache)"
dd if=/tmp/pat of=/dev/vda bs=65536 seek=256 count=1 oflag=direct 2>/dev/null && echo VDA-WT-WRITE=ok
echo "VDB-MD5=$(md5sum /tmp/vdb)"
if dd if=/tmp/pat of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null; then echo VDB-WRITE=accepted; else echo VDB-WRITE=refused; fi
echo "VDC-CACHE=$(cat /sys/block/vdc/cache_type)"
dd if=/dev/vdc of=/tmp/vdc bs=65536 count=16 2>/dev/null
echo "VDC-MD5=$(md5sum /tmp/vdc)"
dd if=/tmp/pat of=/dev/vdc bs=65536 seek=32 count=1 conv=fsync 2>/dev/null && echo VDC-WRITE=ok
dd if=/tmp/zero of=/dev/vdc bs=65536 seek=8 count=8 conv=fsync 2>/dev/null && echo VDC-ZERO-OVER-BASE=ok
dd if=/tmp/zero of=/dev/vdc bs=65536 seek=64 count=16 conv=fsync 2>/dev/null && echo VDC-ZERO=ok
echo "VDB-BLOCKS=$(cat /sys/block/vdb/queue/logical_block_size) $(cat /sys/block/vdb/queue/physical_block_size)"
q=/sys/block/vdd/queue
echo "VDD-BLOCKS=$(cat $q/logical_block_size) $(cat $q/physical_block_size) $(cat $q/discard_granularity) $(cat /sys/block/vdd/size)"
dd if=/tmp/pat of=/dev/vdd bs=4096 seek=1 count=1 oflag=direct 2>/dev/null && echo VDD-WRITE=ok
dd if=/tmp/pat of=/dev/vdd bs=512 seek=24 count=1 conv=notrunc,fsync 2>/dev/null && echo VDD-SMALL=ok
for p in /sys/class/virtio-ports/vport*p1; do echo "CHANNEL=$(basename $p) $(cat $p/name)"; done
port=/dev/$(basename /sys/class/virtio-ports/vport*p1)
exec 5<> $port
echo KILN-CHANNEL-HELLO >&5
read -r line <&5
echo "CHANNEL-GOT=$line"
dd if=/tmp/vdb bs=4096 >&5 2>/dev/null
dd if=/tmp/vdb bs=4096 >&5 2>/dev/null
read -r line <&5
exec 5>&-
echo "CHANNEL-BULK=$line"
again='exec 6<> /dev/$(basename /sys/class/virtio-ports/vport*p2); echo KILN-AGAIN-HELLO >&6; read -r l <&6; echo $l'
echo "AGAIN-GOT=$(timeout 120 sh -c "$again")"
echo KILN-HVC-HELLO > /dev/hvc0
exec 3> /dev/hvc0
i=0
while [ $i -lt 300 ]; do echo "KILN-HVC-LINE-$i" >&3; i=$((i+1)); done
exec 3>&-
exec 4< /dev/hvc0
i=0
while [ $i -lt 10 ]; do HVC_SIZE=$(stty size <&4); [ "$HVC_SIZE" = "45 123" ] && break; sleep 1; i=$((i+1)); done
exec 4<&-
echo "HVC-SIZE=$HVC_SIZE"
for d in /sys/bus/virtio/devices/*; do echo "VIRTIO-$(cat $d/device)-FEATURES=$(cat $d/features)"; done
echo "RNG=$(cat /sys/class/misc/hw_random/rng_current)"
RNG_T0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/hwrng of=/tmp/rng bs=4096 count=16 iflag=fullblock 2>/dev/null
echo "RNG-SECONDS=$RNG_T0 $(cut -d' ' -f1 /proc/uptime)"
echo "RNG-BYTES=$(wc -c < /tmp/rng)"
"#;

#[test]
fn disks_console_and_rng_in_one_boot() {
    let dir = work_dir("blk-guest-disks");
    let kernel = kernel_dir().join("vmlinux");
    let initrd = initramfs_with_test(&dir, DISKS_SCRIPT);

    // vda: an empty 64 MiB qcow2 made by kiln itself.
    let vda = dir.join("vda.qcow2");
    let created = kiln()
        .args(["img", "create", path_str(&vda), "64M", "--format", "qcow2"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    // vdb: a raw disk holding a known pattern, attached read-only.
    let vdb = dir.join("vdb.raw");
    let vdb_data = pattern(4 * MIB, 0x6b69_6c6e);
    std::fs::write(&vdb, &vdb_data).unwrap();
    // vdc: a qcow2 overlay on a qemu-img base with 0x3c in its first MiB.
    let base = dir.join("base.qcow2");
    let vdc = dir.join("vdc.qcow2");
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path_str(&base), "16M"],
    );
    tool("qemu-io", &["-c", "write -P 0x3c 0 1M", path_str(&base)]);
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            path_str(&base),
            path_str(&vdc),
        ],
    );
    let console_log = dir.join("hvc0.log");

    let disk_vda = format!("path={},format=qcow2,serial=kiln-vda-42", vda.display());
    let disk_vdb = format!(
        "path={},format=raw,readonly=on,cache=none,physical_block_size=4096",
        vdb.display()
    );
    // vdd: 1 MiB of zeroes seen as a 4Kn disk.
    let vdd = dir.join("vdd.raw");
    std::fs::write(&vdd, vec![0u8; MIB]).unwrap();
    let disk_vdd = format!("path={},logical_block_size=4096", vdd.display());
    let disk_vdc = format!(
        "path={},detect-zeroes=unmap,cache=directsync",
        vdc.display()
    );
    evict(&vdb);
    let console = format!("virtio,file={},size=123x45", console_log.display());
    // A virtio-serial port: the guest says hello on it, the host answers.
    let channel_socket = dir.join("channel.sock");
    let channel = format!("name=org.kiln.test.0,socket={}", channel_socket.display());
    let channel_host = std::thread::spawn(move || answer_on_channel(&channel_socket));
    // A port that connects to the host, which hangs up at once: kiln connects again
    // (reconnect-ms), and the guest talks over the second connection.
    let again_socket = dir.join("again.sock");
    let again_listener = std::os::unix::net::UnixListener::bind(&again_socket).unwrap();
    let again = format!(
        "name=org.kiln.test.1,socket={},server=off,reconnect-ms=100",
        again_socket.display()
    );
    let kiln_done = Arc::new(AtomicBool::new(false));
    let again_host = {
        let kiln_done = kiln_done.clone();
        std::thread::spawn(move || hang_up_then_answer(&again_listener, &kiln_done))
    };
    let run = run_kiln(
        "blk-guest four disks",
        &[
            "run",
            "--net",
            "none",
            "--kernel",
            path_str(&kernel),
            "--initrd",
            path_str(&initrd),
            "--cpus",
            "1",
            "--memory",
            "256M",
            "--timeout",
            "600s",
            "--disk",
            &disk_vda,
            "--disk",
            &disk_vdb,
            "--disk",
            &disk_vdc,
            "--disk",
            &disk_vdd,
            "--console",
            &console,
            "--channel",
            &channel,
            "--channel",
            &again,
            "--rng",
            "max-bytes=8K,period=1s",
        ],
    );
    let stdout = run.stdout();
    let context = format!("stdout:\n{stdout}\nstderr:\n{}", run.stderr());
    let (heard, bulk) = channel_host.join().unwrap();
    kiln_done.store(true, Ordering::SeqCst);
    let (connections, heard_again) = again_host.join().unwrap();
    assert_eq!(run.code(), Some(0), "{context}");
    assert_eq!(
        guest_value(&stdout, "KILN-TEST-EXIT"),
        Some("0"),
        "{context}"
    );

    let get =
        |key: &str| guest_value(&stdout, key).unwrap_or_else(|| panic!("no {key}= in {context}"));
    assert_eq!(get("VDA-SERIAL"), "kiln-vda-42");
    assert_eq!(get("VDA-SECTORS"), (64 * MIB / 512).to_string());
    // Negotiated features, one character per bit: the driver took VIRTIO_RING_F_EVENT_IDX,
    // VIRTIO_RING_F_INDIRECT_DESC (so the 64 KiB transfers below went through indirect
    // tables), VIRTIO_BLK_F_TOPOLOGY (physical block size) and VIRTIO_BLK_F_CONFIG_WCE,
    // so it can switch the cache mode (cache_type)...
    assert_eq!(get("VDA-FEATURES").chars().nth(29), Some('1'), "{context}");
    assert_eq!(get("VDA-FEATURES").chars().nth(10), Some('1'), "{context}");
    assert_eq!(get("VDA-FEATURES").chars().nth(28), Some('1'), "{context}");
    assert_eq!(get("VDA-FEATURES").chars().nth(11), Some('1'), "{context}");
    // ... which starts writeback, and reads back writethrough (from the device's
    // config space) once set; the block layer then sends no more flushes.
    assert_eq!(get("VDA-CACHE"), "write back", "{context}");
    assert_eq!(
        get("VDA-CACHE2"),
        "write through write through",
        "{context}"
    );
    assert_eq!(get("VDA-WT-WRITE"), "ok", "{context}");
    assert_eq!(
        get("VDB-RO"),
        "1",
        "read-only disk not read-only in the guest"
    );
    assert_eq!(get("VDA-CMP"), "ok", "{context}");
    assert_eq!(get("VDA-CMP2"), "ok", "{context}");
    assert!(
        get("VDB-MD5").starts_with(&digest_hex("md5sum", &vdb_data[..MIB])),
        "{context}"
    );
    assert_eq!(get("VDB-WRITE"), "refused", "{context}");
    // Block sizes: vdb 512e; vdd 4Kn, its size still counted in 512-byte sectors. A
    // 4 KiB direct write reaches vdd; a 512-byte write goes as its whole 4 KiB block
    // (the device fails anything less, so the fsync would fail).
    assert_eq!(get("VDB-BLOCKS"), "512 4096", "{context}");
    assert_eq!(get("VDD-BLOCKS"), "4096 4096 4096 2048", "{context}");
    assert_eq!(get("VDD-WRITE"), "ok", "{context}");
    assert_eq!(get("VDD-SMALL"), "ok", "{context}");
    let mut vdd_want = vec![0u8; MIB];
    vdd_want[4096..8192].fill(0x5a);
    vdd_want[12288..12800].fill(0x5a);
    assert!(std::fs::read(&vdd).unwrap() == vdd_want, "{context}");
    // cache=none: the guest's reads of vdb went around the host page cache.
    assert_eq!(cached_pages(&vdb, 0, 4 * MIB as u64), 0);
    assert!(
        get("VDC-MD5").starts_with(&digest_hex("md5sum", &[0x3c; MIB])),
        "{context}"
    );
    assert_eq!(get("VDC-WRITE"), "ok", "{context}");
    assert_eq!(get("VDC-CACHE"), "write through", "{context}");
    assert_eq!(get("VDC-ZERO-OVER-BASE"), "ok", "{context}");
    assert_eq!(get("VDC-ZERO"), "ok", "{context}");
    // Console (device 3) and rng (4) took EVENT_IDX (and INDIRECT_DESC) too; the 300
    // hvc0 writes and the 64 KiB from /dev/hwrng (at most 64 bytes a request, capped at
    // 8 KiB a second) go round their rings, so avail_event and used_event must follow
    // or the guest stalls.
    for device in ["0x0003", "0x0004"] {
        let features = get(&format!("VIRTIO-{device}-FEATURES"));
        assert_eq!(features.chars().nth(29), Some('1'), "{device}: {context}");
        assert_eq!(features.chars().nth(28), Some('1'), "{device}: {context}");
    }
    // The console's size reached hvc0's tty: F_SIZE taken (bit 0), rows then columns.
    let console_features = get("VIRTIO-0x0003-FEATURES");
    assert_eq!(console_features.chars().next(), Some('1'), "{context}");
    assert_eq!(get("HVC-SIZE"), "45 123", "{context}");
    assert_eq!(get("RNG"), "virtio_rng.0", "{context}");
    assert_eq!(get("RNG-BYTES"), "65536", "{context}");
    let rng_seconds: Vec<f64> = get("RNG-SECONDS")
        .split(' ')
        .map(|t| t.parse().unwrap())
        .collect();
    let rng_took = rng_seconds[1] - rng_seconds[0];
    eprintln!("64 KiB from /dev/hwrng took {rng_took:.2} s");
    // --rng max-bytes=8K,period=1s: 64 KiB needs eight budgets, so at least seven
    // period boundaries, the first of which may come at once (uncapped, the read took
    // 3.2 s here on a busy host).
    assert!(
        rng_took >= 6.0,
        "the rng cap did not hold: 64 KiB in {rng_took:.2} s"
    );

    // The host reads back what the guest wrote, through QEMU's qcow2 code.
    let qemu_io = tool(
        "qemu-io",
        &["-c", "read -P 0x5a 1M 1M", "-f", "qcow2", path_str(&vda)],
    );
    assert!(
        !qemu_io.contains("Pattern verification failed"),
        "{qemu_io}"
    );
    assert_qemu_img_check_clean(&vda);
    let vda_raw = dir.join("vda.raw");
    tool(
        "qemu-img",
        &["convert", "-O", "raw", path_str(&vda), path_str(&vda_raw)],
    );
    let vda_bytes = std::fs::read(&vda_raw).unwrap();
    assert_eq!(vda_bytes.len(), 64 * MIB);
    assert!(vda_bytes[..MIB].iter().all(|&b| b == 0), "before the write");
    assert!(vda_bytes[MIB..2 * MIB].iter().all(|&b| b == 0x5a));
    assert!(vda_bytes[2 * MIB..8 * MIB].iter().all(|&b| b == 0));
    // The writethrough write, at 16 MiB.
    assert!(vda_bytes[16 * MIB..16 * MIB + 65536]
        .iter()
        .all(|&b| b == 0x5a));
    assert!(
        vda_bytes[8 * MIB..9 * MIB] == vdb_data[..MIB],
        "vdb copy on vda"
    );
    // The read-only disk is untouched, the overlay took the write, its base did not.
    assert!(std::fs::read(&vdb).unwrap() == vdb_data);
    let overlay = tool(
        "qemu-io",
        &[
            "-c",
            "read -P 0x5a 2M 64k",
            "-c",
            "read -P 0x3c 0 512k",
            "-c",
            "read -P 0 512k 512k",
            "-c",
            "read -P 0 4M 1M",
            path_str(&vdc),
        ],
    );
    assert!(
        !overlay.contains("Pattern verification failed"),
        "{overlay}"
    );
    // detect-zeroes=unmap: the guest's zeroes took no data clusters. Over the base's
    // data they are zero clusters of the overlay; over nothing, nothing is allocated.
    let map: serde_json::Value =
        serde_json::from_str(&tool("qemu-img", &["map", "--output=json", path_str(&vdc)])).unwrap();
    for e in map.as_array().unwrap() {
        let (start, length) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        let zeroed = [(512 * 1024, MIB as u64), (4 * MIB as u64, 5 * MIB as u64)];
        if zeroed.iter().any(|&(a, b)| start < b && a < start + length) {
            assert_eq!(e["data"], false, "zeroes stored as data: {map}");
            assert_eq!(e["zero"], true, "{map}");
        }
    }
    let over_base = map
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["start"] == 512 * 1024);
    assert_eq!(over_base.map(|e| &e["depth"]), Some(&0.into()), "{map}");
    let base_read = tool("qemu-io", &["-c", "read -P 0 2M 64k", path_str(&base)]);
    assert!(
        !base_read.contains("Pattern verification failed"),
        "{base_read}"
    );
    assert_qemu_img_check_clean(&vdc);
    assert_qemu_img_check_clean(&base);
    // hvc0 output went to the console file, not to stdout.
    let hvc = std::fs::read_to_string(&console_log).unwrap();
    assert!(hvc.contains("KILN-HVC-HELLO"), "hvc0 log: {hvc:?}");
    let lines: Vec<String> = (0..300).map(|i| format!("KILN-HVC-LINE-{i}")).collect();
    let got: Vec<&str> = hvc
        .lines()
        .map(str::trim_end) // the tty may add \r
        .filter(|l| l.starts_with("KILN-HVC-LINE-"))
        .collect();
    assert_eq!(got, lines, "hvc0 log: {hvc:?}");
    assert!(!stdout.contains("KILN-HVC-HELLO"));
    // The channel: named in sysfs, and data both ways.
    assert!(get("CHANNEL").ends_with("p1 org.kiln.test.0"), "{context}");
    assert_eq!(heard, "KILN-CHANNEL-HELLO\n", "{context}");
    assert_eq!(get("CHANNEL-GOT"), "from-host", "{context}");
    // 2 MiB from the guest in 4 KiB writes to a host that starts reading late: more
    // than the socket and the port's ring hold, so the guest's writer waited for it.
    assert_eq!(get("CHANNEL-BULK"), "bulk-ok", "{context}");
    assert_eq!(bulk.len(), 2 * MIB, "{context}");
    assert!(
        bulk[..MIB] == vdb_data[..MIB] && bulk[MIB..] == vdb_data[..MIB],
        "the channel's bulk output is not /dev/vdb's first MiB twice"
    );
    assert_eq!(get("AGAIN-GOT"), "again-ok", "{context}");
    assert_eq!(
        (connections, heard_again.as_str()),
        (2, "KILN-AGAIN-HELLO\n"),
        "{context}"
    );
}

/// The host end of the reconnecting port: drop kiln's first connection at once, then
/// answer the guest's hello on the next. Gives up once kiln ended without one more.
/// Returns the connections kiln made and what the guest said.
fn hang_up_then_answer(
    listener: &std::os::unix::net::UnixListener,
    kiln_done: &AtomicBool,
) -> (usize, String) {
    use std::io::{BufRead, BufReader, Write};
    listener.set_nonblocking(true).unwrap();
    let mut connections = 0;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) if kiln_done.load(Ordering::SeqCst) => return (connections, String::new()),
            Err(_) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
        };
        connections += 1;
        if connections == 1 {
            continue; // dropped: kiln sees the hang-up
        }
        stream.set_nonblocking(false).unwrap();
        let mut heard = String::new();
        let _ = BufReader::new(&stream).read_line(&mut heard);
        let _ = (&stream).write_all(b"again-ok\n");
        return (connections, heard);
    }
}

/// The host end of the test channel: connect to kiln's socket (as soon as kiln made
/// it), wait for the guest's hello and answer it; then, after a pause in which the
/// guest's output fills the socket, read 2 MiB and acknowledge them. Returns the
/// hello and the 2 MiB (or what came of them).
fn answer_on_channel(socket: &Path) -> (String, Vec<u8>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(stream) => break stream,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => return (format!("cannot connect: {e}"), Vec::new()),
        }
    };
    let mut heard = String::new();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    // EOF (kiln ended) before the hello leaves it out of `heard`.
    if reader.read_line(&mut heard).unwrap_or(0) == 0
        || (&stream).write_all(b"from-host\n").is_err()
    {
        return (heard, Vec::new());
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut bulk = Vec::new();
    let _ = reader.take(2 * MIB as u64).read_to_end(&mut bulk);
    if bulk.len() == 2 * MIB {
        let _ = (&stream).write_all(b"bulk-ok\n");
    }
    (heard, bulk)
}

/// PID 1 on the ext4 root: proves the root is the virtio disk, writes a file,
/// remounts read-only so the filesystem is clean, powers off.
const EXT4_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "ROOT-MOUNT=$(/bin/busybox grep ' / ' /proc/mounts)"
echo "HELLO=$(/bin/busybox cat /hello)"
echo written-by-guest > /from-guest
/bin/busybox sync
/bin/busybox mount -o remount,ro /
echo EXT4-DONE
/bin/busybox poweroff -f
"#;

#[test]
fn ext4_qcow2_as_root_filesystem() {
    let dir = work_dir("blk-guest-ext4");
    let kernel = kernel_dir().join("vmlinux");
    let root = dir.join("root");
    for sub in ["bin", "dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox (Debian package busybox-static) must be installed");
    std::fs::write(root.join("init"), EXT4_INIT).unwrap();
    std::fs::set_permissions(
        root.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(root.join("hello"), "ext4-root-ok\n").unwrap();
    let raw = dir.join("root.raw");
    tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "root_owner=0:0",
            "-d",
            path_str(&root),
            path_str(&raw),
            "32M",
        ],
    );
    let qcow2 = dir.join("root.qcow2");
    let converted = kiln()
        .args([
            "img",
            "convert",
            "-O",
            "qcow2",
            path_str(&raw),
            path_str(&qcow2),
        ])
        .output()
        .unwrap();
    assert!(converted.status.success(), "{converted:?}");
    std::fs::remove_file(&raw).unwrap();

    let disk = format!("path={}", qcow2.display());
    let run = run_kiln(
        "blk-guest ext4 root",
        &[
            "run",
            "--net",
            "none",
            "--kernel",
            path_str(&kernel),
            "--append",
            "root=/dev/vda rootfstype=ext4 rootwait rw init=/init",
            "--cpus",
            "1",
            "--memory",
            "256M",
            "--timeout",
            "600s",
            "--disk",
            &disk,
        ],
    );
    let stdout = run.stdout();
    let context = format!("stdout:\n{stdout}\nstderr:\n{}", run.stderr());
    assert_eq!(run.code(), Some(0), "{context}");
    // One process per command substitution, no pipeline: on PVM hosts two new
    // processes starting side by side sometimes lose their TLS (see the README).
    assert!(
        guest_value(&stdout, "ROOT-MOUNT").is_some_and(|m| m.starts_with("/dev/root / ext4 ")),
        "{context}"
    );
    assert_eq!(
        guest_value(&stdout, "HELLO"),
        Some("ext4-root-ok"),
        "{context}"
    );
    assert!(stdout.contains("EXT4-DONE"), "{context}");

    assert_qemu_img_check_clean(&qcow2);
    let back = dir.join("back.raw");
    tool(
        "qemu-img",
        &["convert", "-O", "raw", path_str(&qcow2), path_str(&back)],
    );
    let fsck = Command::new("e2fsck")
        .args(["-fn", path_str(&back)])
        .output()
        .unwrap();
    assert!(fsck.status.success(), "e2fsck: {fsck:?}");
    let file = tool("debugfs", &["-R", "cat /from-guest", path_str(&back)]);
    assert_eq!(file.trim(), "written-by-guest");
}
