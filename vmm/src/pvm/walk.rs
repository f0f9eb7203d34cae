//! Guest virtual-to-physical translation by walking the guest's page tables, for
//! when KVM_TRANSLATE cannot help (Intel SDM vol. 3A, 4.3-4.5).

use vm_memory::{Bytes, GuestAddress, GuestMemory};

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Physical-address bits of an entry (bits 51:12).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The control registers that select the paging mode.
#[derive(Clone, Copy, Debug, Default)]
pub struct PagingState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("page-table entry for {addr:#x} at level {level} is not present")]
    NotPresent { addr: u64, level: u8 },
    #[error("page-table entry at guest physical {0:#x} is outside guest memory")]
    OutsideMemory(u64),
}

fn read_entry<M: GuestMemory>(mem: &M, addr: u64, wide: bool) -> Result<u64, WalkError> {
    let result = if wide {
        mem.read_obj::<u64>(GuestAddress(addr))
    } else {
        mem.read_obj::<u32>(GuestAddress(addr)).map(u64::from)
    };
    result.map_err(|_| WalkError::OutsideMemory(addr))
}

/// Translate the linear address `addr` under `state`.
pub fn translate<M: GuestMemory>(mem: &M, state: PagingState, addr: u64) -> Result<u64, WalkError> {
    if state.cr0 & CR0_PG == 0 {
        // No paging: linear is physical (32-bit outside long mode).
        return Ok(if state.efer & EFER_LMA != 0 {
            addr
        } else {
            addr & 0xffff_ffff
        });
    }
    if state.efer & EFER_LMA != 0 {
        let levels: u8 = if state.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
        let mut table = state.cr3 & ADDR_MASK;
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * u32::from(level - 1);
            let index = (addr >> shift) & 0x1ff;
            let entry = read_entry(mem, table + index * 8, true)?;
            if entry & PRESENT == 0 {
                return Err(WalkError::NotPresent { addr, level });
            }
            // 1 GiB pages at level 3, 2 MiB pages at level 2.
            if (level == 2 || level == 3) && entry & PAGE_SIZE_BIT != 0 {
                let page_mask = (1u64 << shift) - 1;
                return Ok((entry & ADDR_MASK & !page_mask) | (addr & page_mask));
            }
            table = entry & ADDR_MASK;
        }
        return Ok(table | (addr & 0xfff));
    }
    let addr = addr & 0xffff_ffff;
    if state.cr4 & CR4_PAE != 0 {
        // PAE: 4-entry PDPT, then 512-entry directory and table of 64-bit entries.
        let pdpt = state.cr3 & 0xffff_ffe0;
        let pdpte = read_entry(mem, pdpt + ((addr >> 30) & 3) * 8, true)?;
        if pdpte & PRESENT == 0 {
            return Err(WalkError::NotPresent { addr, level: 3 });
        }
        let pde = read_entry(mem, (pdpte & ADDR_MASK) + ((addr >> 21) & 0x1ff) * 8, true)?;
        if pde & PRESENT == 0 {
            return Err(WalkError::NotPresent { addr, level: 2 });
        }
        if pde & PAGE_SIZE_BIT != 0 {
            return Ok((pde & ADDR_MASK & !0x1f_ffff) | (addr & 0x1f_ffff));
        }
        let pte = read_entry(mem, (pde & ADDR_MASK) + ((addr >> 12) & 0x1ff) * 8, true)?;
        if pte & PRESENT == 0 {
            return Err(WalkError::NotPresent { addr, level: 1 });
        }
        return Ok((pte & ADDR_MASK) | (addr & 0xfff));
    }
    // 32-bit paging with 4-byte entries and optional 4 MiB pages.
    let pde = read_entry(mem, (state.cr3 & 0xffff_f000) + (addr >> 22) * 4, false)?;
    if pde & PRESENT == 0 {
        return Err(WalkError::NotPresent { addr, level: 2 });
    }
    if state.cr4 & CR4_PSE != 0 && pde & PAGE_SIZE_BIT != 0 {
        // Bits 20:13 of a 4 MiB PDE hold physical bits 39:32 (PSE-36).
        let high = ((pde >> 13) & 0xff) << 32;
        return Ok(high | (pde & 0xffc0_0000) | (addr & 0x3f_ffff));
    }
    let pte = read_entry(mem, (pde & 0xffff_f000) + ((addr >> 12) & 0x3ff) * 4, false)?;
    if pte & PRESENT == 0 {
        return Err(WalkError::NotPresent { addr, level: 1 });
    }
    Ok((pte & 0xffff_f000) | (addr & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap<()>, addr: u64, value: u64) {
        mem.write_obj(value, GuestAddress(addr)).unwrap();
    }

    const LONG: PagingState = PagingState {
        cr0: CR0_PG | 1,
        cr3: 0x1000,
        cr4: CR4_PAE,
        efer: EFER_LMA | (1 << 8),
    };

    #[test]
    fn four_level_with_4k_2m_and_1g_pages() {
        let m = mem();
        // Kernel-half address 0xffffffff81000123: PML4 511, PDPT 510, PD 8, PT 0.
        let va = 0xffff_ffff_8100_0123u64;
        put(&m, 0x1000 + 511 * 8, 0x2000 | 3);
        put(&m, 0x2000 + 510 * 8, 0x3000 | 3);
        put(&m, 0x3000 + 8 * 8, 0x4000 | 3);
        put(&m, 0x4000, 0x0050_0000 | 3);
        assert_eq!(translate(&m, LONG, va), Ok(0x0050_0123));
        // Same PD entry as a 2 MiB page.
        put(&m, 0x3000 + 8 * 8, 0x0060_0000 | 0x83);
        assert_eq!(translate(&m, LONG, va), Ok(0x0060_0123));
        // The PDPT entry as a 1 GiB page.
        put(&m, 0x2000 + 510 * 8, 0x4000_0000 | 0x83);
        assert_eq!(translate(&m, LONG, va), Ok(0x4100_0123));
    }

    #[test]
    fn missing_entries_are_reported_not_followed() {
        let m = mem();
        assert_eq!(
            translate(&m, LONG, 0x1234),
            Err(WalkError::NotPresent {
                addr: 0x1234,
                level: 4
            })
        );
        // An entry pointing outside guest memory.
        put(&m, 0x1000, 0x40_0000_0000 | 3);
        assert_eq!(
            translate(&m, LONG, 0x1234),
            Err(WalkError::OutsideMemory(0x40_0000_0000))
        );
    }

    #[test]
    fn unpaged_and_legacy_modes() {
        let m = mem();
        let real = PagingState::default();
        assert_eq!(translate(&m, real, 0x1_0000_7c00), Ok(0x7c00));
        // 32-bit paging, 4 MiB page at directory index 1.
        let legacy = PagingState {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PSE,
            efer: 0,
        };
        m.write_obj(0x0080_0000u32 | 0x83, GuestAddress(0x1000 + 4))
            .unwrap();
        assert_eq!(translate(&m, legacy, 0x0040_1234), Ok(0x0080_1234));
        // PAE, 4 KiB page.
        let pae = PagingState {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: 0,
        };
        put(&m, 0x1000, 0x2000 | 1);
        put(&m, 0x2000, 0x3000 | 3);
        put(&m, 0x3000 + 5 * 8, 0x9000 | 3);
        assert_eq!(translate(&m, pae, 0x5abc), Ok(0x9abc));
    }
}
