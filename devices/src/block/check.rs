//! `kiln img check`: a qcow2 image's refcounts against the references to its clusters,
//! reported as `qemu-img check` reports them, and optionally repaired (see
//! `qcow2::repair`).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::lock::{Access, ImageLock};
use super::qcow2::header::{incompat, HeaderError, Qcow2Header};
use super::qcow2::read_header;
use super::qcow2::refcheck::{scan_refcounts, RefcountError, RefcountScan};
use super::qcow2::repair::{clear_incompatible, rebuild_refcounts, repair, RepairMode, Repaired};
use super::{probe_format, DiskError, ImageFormat};

/// What checking an image found.
#[derive(Debug)]
pub enum CheckOutcome {
    /// The format has no metadata to check (raw).
    Unsupported(ImageFormat),
    Qcow2(Qcow2Check),
}

/// A checked qcow2 image.
#[derive(Debug)]
pub struct Qcow2Check {
    pub filename: PathBuf,
    pub cluster_size: u64,
    /// Guest clusters (virtual size over cluster size, rounded up).
    pub total_clusters: u64,
    /// What a repair changed, if one was asked for and needed.
    pub repaired: Option<Repaired>,
    /// After the repair, if any.
    pub findings: Findings,
}

/// The count, or the metadata that could not be followed to finish it.
#[derive(Debug)]
pub enum Findings {
    Counted(RefcountScan),
    /// An L1, L2 or refcount table points outside the file or is misaligned: the
    /// image is corrupt (`qemu-img check` counts these as corruptions too).
    BadMetadata(HeaderError),
}

/// How to check.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Check even while another process writes the image (qemu-img's `-U`): its
    /// metadata may change under the count. Not with `repair`.
    pub force_share: bool,
    pub repair: Option<RepairMode>,
}

/// Check `path`, and repair it if asked. Errors are what stops the check itself: the
/// file cannot be opened, read or written, another process uses it, it is not a
/// qcow2 image kiln understands, it is too large to count, or it cannot be repaired.
pub fn check_image(path: &Path, options: CheckOptions) -> Result<CheckOutcome, DiskError> {
    let access = match options.repair {
        Some(_) => Some(Access::ReadWrite),
        None if options.force_share => None,
        None => Some(Access::Read),
    };
    let _lock = access
        .map(|access| ImageLock::acquire(path, access))
        .transpose()?;
    let format = probe_format(path)?;
    if format != ImageFormat::Qcow2 {
        return Ok(CheckOutcome::Unsupported(format));
    }
    let open_err = DiskError::io(path);
    let incomplete = |source| DiskError::CheckIncomplete {
        path: path.to_owned(),
        source,
    };
    let (header, file_len) = read_header(path)?;
    let unsupported = if header.incompatible_features & incompat::EXTENDED_L2 != 0 {
        // Its L2 entries are 16 bytes: read as 8-byte ones, every count would be wrong.
        Some("extended L2 entries (subclusters) are not supported")
    } else {
        None
    };
    if let Some(reason) = unsupported {
        return Err(DiskError::unsupported(path, reason));
    }
    let file = File::open(path).map_err(open_err)?;
    let findings = count(&file, &header, file_len).map_err(incomplete)?;
    let (repaired, findings) = match options.repair {
        Some(mode) => repair_image(path, &file, header.clone(), file_len, findings, mode)?,
        None => (None, findings),
    };
    let cluster_size = header.cluster_size();
    Ok(CheckOutcome::Qcow2(Qcow2Check {
        filename: path.to_owned(),
        cluster_size,
        total_clusters: header.size.div_ceil(cluster_size),
        repaired,
        findings,
    }))
}

/// Repair what the first count found, as `qemu-img check -r` does: in mode all,
/// missing or broken refcount structures are rebuilt from the L1/L2 tables first;
/// then wrong refcounts and COPIED flags are set; then, with no corruption left, the
/// dirty and corrupt bits are cleared. Returns what changed (None: nothing to do)
/// and the count of the image as it is now.
fn repair_image(
    path: &Path,
    file: &File,
    mut header: Qcow2Header,
    mut file_len: u64,
    mut findings: Findings,
    mode: RepairMode,
) -> Result<(Option<Repaired>, Findings), DiskError> {
    let incomplete = |source| DiskError::CheckIncomplete {
        path: path.to_owned(),
        source,
    };
    let flags = header.incompatible_features & (incompat::DIRTY | incompat::CORRUPT);
    let (rebuild, fixes) = match &findings {
        Findings::Counted(scan) => (
            mode == RepairMode::All && scan.uncovered > 0,
            has_fixes(scan, mode),
        ),
        Findings::BadMetadata(_) => (mode == RepairMode::All, false),
    };
    if !(rebuild || fixes || (flags != 0 && !corrupt(&findings))) {
        return Ok((None, findings));
    }
    let writable = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(DiskError::io(path))?;
    let mut done = Repaired::default();
    if rebuild {
        match rebuild_refcounts(&writable, &header, file_len) {
            Ok(_) => {
                done.refcounts_rebuilt = true;
                done.corruptions_fixed += match &findings {
                    // Everything the count called a corruption: the COPIED flags
                    // were only wrong against the refcounts now replaced.
                    Findings::Counted(scan) => {
                        (scan.corruptions.len() + scan.copied_flag_errors.len()) as u64
                    }
                    Findings::BadMetadata(_) => 1,
                };
                (header, file_len) = read_header(path)?;
                findings = count(file, &header, file_len).map_err(incomplete)?;
            }
            // The L1/L2 tables themselves are broken: nothing to rebuild from.
            Err(RefcountError::Layout(_)) if matches!(findings, Findings::BadMetadata(_)) => {
                return Ok((None, findings));
            }
            Err(e @ (RefcountError::Overflow { .. } | RefcountError::CannotRepair(_))) => {
                done.unfixable.push(e.to_string());
            }
            Err(e) => return Err(incomplete(e)),
        }
    }
    if let Findings::Counted(scan) = &findings {
        if has_fixes(scan, mode) {
            let more = repair(&writable, &header, file_len, scan, mode).map_err(incomplete)?;
            done.leaks_fixed += more.leaks_fixed;
            done.corruptions_fixed += more.corruptions_fixed;
            done.unfixable.extend(more.unfixable);
            findings = count(file, &header, file_len).map_err(incomplete)?;
        }
    }
    if flags != 0 && done.unfixable.is_empty() && !corrupt(&findings) {
        clear_incompatible(&writable, &header, flags).map_err(|e| {
            incomplete(RefcountError::Read {
                offset: 0,
                message: format!("cannot write the header: {e}"),
            })
        })?;
        done.dirty_cleared = flags & incompat::DIRTY != 0;
        done.corrupt_cleared = flags & incompat::CORRUPT != 0;
    }
    Ok((Some(done), findings))
}

fn count(file: &File, header: &Qcow2Header, file_len: u64) -> Result<Findings, RefcountError> {
    if let Err(e) = header.check_layout(file_len) {
        return Ok(Findings::BadMetadata(e));
    }
    match scan_refcounts(file, header, file_len) {
        Ok(scan) => Ok(Findings::Counted(scan)),
        Err(RefcountError::Layout(e)) => Ok(Findings::BadMetadata(e)),
        Err(e) => Err(e),
    }
}

/// Whether `mode` would change a refcount or a COPIED flag of the image `scan` counted.
fn has_fixes(scan: &RefcountScan, mode: RepairMode) -> bool {
    let errors = !scan.corruptions.is_empty() || !scan.copied_flag_errors.is_empty();
    !scan.leaks.is_empty() || (mode == RepairMode::All && errors)
}

/// Whether the count found anything `qemu-img check` calls a corruption.
fn corrupt(findings: &Findings) -> bool {
    match findings {
        Findings::Counted(scan) => {
            !scan.corruptions.is_empty() || !scan.copied_flag_errors.is_empty()
        }
        Findings::BadMetadata(_) => true,
    }
}
