//! The BSP's register state at the kernel entry, and the GDT and identity page
//! tables it needs (Intel SDM vol. 3A, 9.8 "Initializing IA-32e mode").

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::BootEntry;
use crate::layout::*;
use crate::memory::GuestMemory;

/// The boot GDT: null, flat 32-bit code, flat 64-bit code, flat data, TSS.
const GDT: [u64; 5] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
];
const CODE32_INDEX: u16 = 1;
const CODE64_INDEX: u16 = 2;
const DATA_INDEX: u16 = 3;
const TSS_INDEX: u16 = 4;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_PS: u64 = 0x80;
/// Page directories in the identity map: 4 x 1 GiB of 2 MiB pages.
const IDENTITY_MAP_GIB: u64 = 4;

/// The segment register value a GDT entry gives when loaded with selector index `index`.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let granular = (entry >> 55) & 1;
    kvm_segment {
        base,
        // The hidden limit is in bytes: 4 KiB granularity scales it.
        limit: if granular == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Write the GDT and the identity-mapped page tables.
pub fn write_boot_tables(mem: &GuestMemory) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))?;
    }
    mem.write_obj(PDPTE_START | PAGE_PRESENT_RW, GuestAddress(PML4_START))?;
    for gib in 0..IDENTITY_MAP_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | PAGE_PRESENT_RW, GuestAddress(PDPTE_START + gib * 8))?;
        for i in 0..512u64 {
            let phys = (gib << 30) | (i << 21);
            mem.write_obj(phys | PAGE_PRESENT_RW | PAGE_PS, GuestAddress(pd + i * 8))?;
        }
    }
    Ok(())
}

/// Special registers at the entry: long mode with paging for the 64-bit protocol,
/// flat protected mode without paging for PVH.
pub fn boot_sregs(mut sregs: kvm_sregs, entry: BootEntry) -> kvm_sregs {
    let code_index = match entry {
        BootEntry::Linux64 { .. } => CODE64_INDEX,
        BootEntry::Pvh { .. } => CODE32_INDEX,
    };
    let data = segment_from_gdt(GDT[DATA_INDEX as usize], DATA_INDEX);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = segment_from_gdt(GDT[code_index as usize], code_index);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(GDT[TSS_INDEX as usize], TSS_INDEX);
    match entry {
        BootEntry::Linux64 { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootEntry::Pvh { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General registers at the entry.
pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    match entry {
        BootEntry::Linux64 { entry } => kvm_regs {
            rflags: 0x2,
            rip: entry.0,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
        BootEntry::Pvh { entry } => kvm_regs {
            rflags: 0x2,
            rip: entry.0,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
    }
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use vm_memory::GuestAddress;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let cs = segment_from_gdt(GDT[CODE64_INDEX as usize], CODE64_INDEX);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.type_),
            (0, 0xffff_ffff, 1, 0, 0xb)
        );
        assert_eq!(cs.selector, 0x10);
        let cs32 = segment_from_gdt(GDT[CODE32_INDEX as usize], CODE32_INDEX);
        assert_eq!((cs32.l, cs32.db, cs32.present, cs32.s), (0, 1, 1, 1));
        let ds = segment_from_gdt(GDT[DATA_INDEX as usize], DATA_INDEX);
        assert_eq!((ds.type_, ds.limit), (3, 0xffff_ffff));
    }

    #[test]
    fn page_tables_identity_map_4g_with_2m_pages() {
        let mem = create_guest_memory(64 << 20).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let pdpte3: u64 = mem.read_obj(GuestAddress(PDPTE_START + 3 * 8)).unwrap();
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte3 & !0xfff) + 511 * 8))
            .unwrap();
        assert_eq!(pde, (3 << 30) | (511 << 21) | 0x83);
    }

    #[test]
    fn pvh_entry_is_protected_mode_without_paging() {
        let entry = BootEntry::Pvh {
            entry: GuestAddress(0x100000),
        };
        let sregs = boot_sregs(kvm_sregs::default(), entry);
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.efer, 0);
        assert_eq!(boot_regs(entry).rbx, PVH_INFO_START);
    }
}
