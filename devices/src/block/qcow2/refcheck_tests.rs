//! The refcount scan in windows: any window size gives the scan a single pass gives.

use std::path::Path;
use std::process::Command;

use super::{scan_in_windows, RefcountScan};
use crate::block::qcow2::header::Qcow2Header;
use crate::block::qcow2::refcheck::RefcountError;

fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (run scripts/setup-host.sh): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A qemu-img image with 512-byte clusters (so a few hundred KiB make many clusters):
/// data, a compressed cluster, an internal snapshot that shares clusters with the
/// active image, writes after it that copy some, and a persistent bitmap.
fn shared_image(dir: &Path) -> Vec<u8> {
    let image = dir.join("shared.qcow2");
    let path = image.to_str().unwrap();
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            path,
            "1M",
        ],
    );
    tool(
        "qemu-io",
        &[
            "-c",
            "write -P 1 0 96k",
            "-c",
            "write -c -P 2 128k 8k",
            path,
        ],
    );
    tool("qemu-img", &["snapshot", "-c", "before", path]);
    tool("qemu-img", &["bitmap", "--add", path, "dirty"]);
    tool(
        "qemu-io",
        &["-c", "write -P 3 4k 16k", "-c", "write -P 4 512k 8k", path],
    );
    std::fs::read(&image).unwrap()
}

fn scans(image: &[u8]) -> Vec<(u64, Result<RefcountScan, RefcountError>)> {
    let Ok(h) = Qcow2Header::parse(image) else {
        return Vec::new();
    };
    let len = image.len() as u64;
    [1, 2, 7, 64, 1000, u64::MAX]
        .into_iter()
        .map(|window| (window, scan_in_windows(image, &h, len, window)))
        .collect()
}

fn assert_windows_agree(image: &[u8], case: &str) -> Option<RefcountScan> {
    let scans = scans(image);
    let (_, whole) = scans.last()?;
    for (window, scan) in &scans {
        assert_eq!(scan, whole, "{case}: a window of {window} clusters");
    }
    whole.as_ref().ok().cloned()
}

#[test]
fn every_window_size_gives_the_single_pass_scan() {
    let dir = tempfile::tempdir().unwrap();
    let image = shared_image(dir.path());
    let scan = assert_windows_agree(&image, "qemu-img's image").expect("the image counts");
    // The image is clean, and the windows split something worth counting.
    assert!(
        scan.corruptions.is_empty() && scan.leaks.is_empty(),
        "{scan:?}"
    );
    assert!(scan.copied_flag_errors.is_empty(), "{scan:?}");
    assert!(scan.image_end_offset > 3 * 64 * 512, "{scan:?}");

    // Damaged copies: corruptions, leaks and COPIED errors land in different windows
    // and must be found the same. Even cases set 4 refcounts (16-bit entries of the
    // first refcount block) to 0-3; odd cases set 4 bytes of the first 40 KiB
    // (header, refcount structures, L1 and L2 tables among data) to anything.
    let h = Qcow2Header::parse(&image).unwrap();
    let be64 = |at: usize| u64::from_be_bytes(image[at..at + 8].try_into().unwrap());
    let block = be64(h.refcount_table_offset as usize) as usize;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut counted, mut damaged) = (0, 0);
    for case in 0..300 {
        let mut copy = image.clone();
        for _ in 0..4 {
            let r = next();
            if case % 2 == 0 {
                let cluster = (r % 260) as usize;
                copy[block + 2 * cluster..block + 2 * cluster + 2]
                    .copy_from_slice(&((r >> 32) as u16 % 4).to_be_bytes());
            } else {
                copy[(r % (40 << 10)) as usize] = (r >> 32) as u8;
            }
        }
        if let Some(scan) = assert_windows_agree(&copy, &format!("damaged copy {case}")) {
            counted += 1;
            let found = scan.corruptions.len() + scan.leaks.len() + scan.copied_flag_errors.len();
            damaged += usize::from(found > 0);
        }
    }
    assert!(
        counted > 150 && damaged > 100,
        "{counted} counted, {damaged} with findings"
    );

    // A refcount block that cannot be read fails every scan, whichever window holds
    // the clusters it counts, even none: here the third block (clusters 512-767 of a
    // file of 261), in a cluster the file ends inside.
    let mut short_block = image.clone();
    short_block.resize(image.len().next_multiple_of(512), 0);
    let at = short_block.len() as u64;
    let entry = h.refcount_table_offset as usize + 16;
    short_block[entry..entry + 8].copy_from_slice(&at.to_be_bytes());
    short_block.extend_from_slice(&[0; 100]);
    let scans = scans(&short_block);
    assert!(
        scans
            .iter()
            .all(|(_, scan)| matches!(scan, Err(RefcountError::Read { .. }))),
        "{scans:?}"
    );
}

#[test]
fn a_rebuild_of_more_clusters_than_it_holds_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let image = shared_image(dir.path());
    let h = Qcow2Header::parse(&image).unwrap();
    // A file of 64 Mi + 1 clusters of 512 bytes: refused before anything is read.
    let len = (super::MAX_REBUILT_CLUSTERS + 1) * 512;
    let err = super::count_data_references(&image[..], &h, len).unwrap_err();
    assert_eq!(
        err.to_string(),
        "67108865 clusters are more than kiln rebuilds refcount structures for (67108864)"
    );
}
