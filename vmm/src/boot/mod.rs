//! Loading a Linux kernel (bzImage or ELF vmlinux) with linux-loader and writing
//! what its boot protocol expects: the zero page for the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst) or `hvm_start_info` for the PVH entry.

mod params;
pub mod regs;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::config::EntryChoice;
use crate::layout::HIMEM_START;
use crate::memory::GuestMemory;

pub use params::{memory_map, MemoryKind};

/// How the BSP enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// 64-bit boot protocol: long mode, RSI = zero page.
    Linux64 { entry: GuestAddress },
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh { entry: GuestAddress },
}

/// The image formats kiln boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" setup header)")]
    NotAKernel(PathBuf),
    #[error("kernel {path} is truncated: the setup header announces {expected} bytes, the file has {actual}")]
    TruncatedBzImage {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("kernel {path} cannot be loaded (truncated or damaged?)")]
    Load {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path} is a 32-bit or old bzImage (boot protocol {version:#x}); kiln needs protocol 2.06 or later with a 64-bit entry")]
    OldBzImage { path: PathBuf, version: u16 },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel")]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("kernel {0} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); boot it through its 64-bit entry")]
    NoPvhNote(PathBuf),
    #[error("kernel command line is {len} bytes; the kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("cannot write boot data to guest memory: {0}")]
    GuestMemory(String),
}

/// A kernel loaded into guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    pub entry: BootEntry,
    /// The bzImage setup header, for the zero page.
    pub setup_header: Option<setup_header>,
    /// First byte after the loaded kernel (its memory footprint for bzImage: init_size).
    pub kernel_end: u64,
}

/// Where the initrd was put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub address: GuestAddress,
    pub size: u64,
}

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Recognise the kernel format from the file's first bytes.
pub fn probe_format(path: &Path, file: &mut File) -> Result<KernelFormat, BootError> {
    let read_err = |source| BootError::Read {
        what: "kernel",
        path: path.to_owned(),
        source,
    };
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(read_err)? {
            0 => break,
            n => filled += n,
        }
    }
    if filled >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    if filled >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::NotAKernel(path.to_owned()))
}

/// Check that the kernel is a kernel kiln can boot and that the initrd can be
/// opened, before any VM work.
pub fn check_inputs(kernel: &Path, initrd: Option<&Path>) -> Result<KernelFormat, BootError> {
    let format = probe_format(kernel, &mut open("kernel", kernel)?)?;
    if let Some(initrd) = initrd {
        open("initrd", initrd)?;
    }
    Ok(format)
}

/// Load the kernel at `path` into `mem`.
pub fn load_kernel(
    mem: &GuestMemory,
    path: &Path,
    choice: EntryChoice,
) -> Result<LoadedKernel, BootError> {
    let mut file = open("kernel", path)?;
    let format = probe_format(path, &mut file)?;
    let load_err = |source| BootError::Load {
        path: path.to_owned(),
        source,
    };
    match format {
        KernelFormat::Elf => {
            let result = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            let linux64 = BootEntry::Linux64 {
                entry: result.kernel_load,
            };
            let entry = match (result.pvh_boot_cap, choice) {
                (PvhBootCapability::PvhEntryPresent(_), EntryChoice::Linux64) => linux64,
                (PvhBootCapability::PvhEntryPresent(entry), _) => BootEntry::Pvh { entry },
                (_, EntryChoice::Pvh) => return Err(BootError::NoPvhNote(path.to_owned())),
                _ => linux64,
            };
            Ok(LoadedKernel {
                format,
                entry,
                setup_header: None,
                kernel_end: result.kernel_end,
            })
        }
        KernelFormat::BzImage => {
            let file_len = file
                .metadata()
                .map_err(|source| BootError::Read {
                    what: "kernel",
                    path: path.to_owned(),
                    source,
                })?
                .len();
            let result = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            let hdr = result
                .setup_header
                .expect("bzImage loader returns its header");
            // The 64-bit entry and cmdline_size exist from protocol 2.06 on.
            if hdr.version < 0x0206 || hdr.xloadflags & 1 == 0 {
                return Err(BootError::OldBzImage {
                    path: path.to_owned(),
                    version: hdr.version,
                });
            }
            let setup_sects = if hdr.setup_sects == 0 {
                4
            } else {
                hdr.setup_sects
            };
            let expected = (u64::from(setup_sects) + 1) * 512 + u64::from(hdr.syssize) * 16;
            if file_len < expected {
                return Err(BootError::TruncatedBzImage {
                    path: path.to_owned(),
                    expected,
                    actual: file_len,
                });
            }
            let load = result.kernel_load.0;
            // Room the kernel needs while decompressing in place.
            let end = (load + u64::from(hdr.init_size)).max(result.kernel_end);
            Ok(LoadedKernel {
                format,
                entry: BootEntry::Linux64 {
                    entry: GuestAddress(load + 0x200),
                },
                setup_header: Some(hdr),
                kernel_end: end,
            })
        }
    }
}

/// Put the initrd as high as the kernel allows: below `initrd_addr_max`, below the
/// end of low RAM, page aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<LoadedInitrd, BootError> {
    let mut file = open("initrd", path)?;
    let read_err = |source| BootError::Read {
        what: "initrd",
        path: path.to_owned(),
        source,
    };
    let size = file.metadata().map_err(read_err)?.len();
    // Protocol default for kernels that do not say (boot.rst: initrd_addr_max).
    let addr_max = match kernel.setup_header {
        Some(hdr) if hdr.version >= 0x0203 => u64::from(hdr.initrd_addr_max),
        Some(_) => 0x37ff_ffff,
        None => 0x7fff_ffff,
    };
    let low_end = mem
        .iter()
        .map(|r| r.start_addr().0 + r.len())
        .next()
        .unwrap_or(0);
    let limit = (addr_max + 1).min(low_end);
    let too_big = || BootError::InitrdTooBig {
        path: path.to_owned(),
        size,
        limit,
    };
    let address = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if address < kernel.kernel_end {
        return Err(too_big());
    }
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    mem.read_exact_volatile_from(GuestAddress(address), &mut file, size as usize)
        .map_err(|e| BootError::Read {
            what: "initrd",
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(LoadedInitrd {
        address: GuestAddress(address),
        size,
    })
}

/// Write the command line, and the zero page or PVH start info, for `kernel`.
pub fn write_boot_info(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    cmdline: &str,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    let max = match kernel.setup_header {
        Some(hdr) => hdr.cmdline_size as usize,
        None => crate::layout::CMDLINE_MAX_SIZE - 1,
    }
    .min(crate::layout::CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    params::write_cmdline(mem, cmdline)?;
    match kernel.entry {
        BootEntry::Linux64 { .. } => params::write_zero_page(mem, kernel, initrd, cmdline, rsdp),
        BootEntry::Pvh { .. } => params::write_pvh_start_info(mem, initrd, rsdp),
    }
}

#[cfg(test)]
mod tests;
