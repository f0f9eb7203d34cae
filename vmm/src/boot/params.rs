//! The boot information a kernel reads: the command line, the zero page with its
//! e820 map (64-bit boot protocol), or `hvm_start_info` with its memory map (PVH).

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{BootError, LoadedInitrd, LoadedKernel};
use crate::layout::*;
use crate::memory::GuestMemory;

/// E820 / PVH memory types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    Ram = 1,
    Reserved = 2,
}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// The guest's physical memory map: (start, length, kind), sorted.
pub fn memory_map(mem: &GuestMemory) -> Vec<(u64, u64, MemoryKind)> {
    let mut map = vec![
        (0, EBDA_START, MemoryKind::Ram),
        (EBDA_START, HIMEM_START - EBDA_START, MemoryKind::Reserved),
    ];
    for region in mem.iter() {
        let start = region.start_addr().0.max(HIMEM_START);
        let end = region.start_addr().0 + region.len();
        if end > start {
            map.push((start, end - start, MemoryKind::Ram));
        }
    }
    map
}

fn mem_err(e: impl std::fmt::Display) -> BootError {
    BootError::GuestMemory(e.to_string())
}

pub(super) fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<(), BootError> {
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(mem_err)
}

pub(super) fn write_zero_page(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    cmdline: &str,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => {
            // An ELF vmlinux has no setup header: give the fields the kernel reads.
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.address.0 as u32;
        params.ext_ramdisk_image = (initrd.address.0 >> 32) as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    params.acpi_rsdp_addr = rsdp.0;
    for (start, len, kind) in memory_map(mem) {
        let index = params.e820_entries as usize;
        if index >= params.e820_table.len() {
            return Err(BootError::GuestMemory("too many e820 entries".into()));
        }
        params.e820_table[index] = boot_e820_entry {
            addr: start,
            size: len,
            r#type: kind as u32,
        };
        params.e820_entries += 1;
    }
    let boot = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&boot, mem).map_err(mem_err)
}

pub(super) fn write_pvh_start_info(
    mem: &GuestMemory,
    initrd: Option<LoadedInitrd>,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = memory_map(mem)
        .into_iter()
        .map(|(addr, size, kind)| hvm_memmap_table_entry {
            addr,
            size,
            type_: kind as u32,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp.0,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut boot = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some(initrd) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        boot = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        let module = hvm_modlist_entry {
            paddr: initrd.address.0,
            size: initrd.size,
            ..Default::default()
        };
        boot.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    boot.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&boot, mem).map_err(mem_err)
}
