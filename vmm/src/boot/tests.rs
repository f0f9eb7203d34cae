//! Boot information read back from guest memory.
use super::*;
use crate::layout::{CMDLINE_START, PVH_INFO_START, ZERO_PAGE_START};
use crate::memory::create_guest_memory;
use linux_loader::loader::bootparam::boot_params;
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};

fn guest_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("kiln-boot-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn read_cstr(mem: &GuestMemory, addr: u64) -> String {
    let mut bytes = Vec::new();
    for i in 0..4096 {
        let b: u8 = mem.read_obj(GuestAddress(addr + i)).unwrap();
        if b == 0 {
            break;
        }
        bytes.push(b);
    }
    String::from_utf8(bytes).unwrap()
}

#[test]
fn pvh_start_info_memmap_cmdline_and_initrd_module() {
    let mem = create_guest_memory(64 << 20).unwrap();
    let kernel = guest_file("pvh.elf", crate::guests::DEBUG_EXIT);
    let initrd = guest_file("initrd", &[0x5a; 10_000]);
    let loaded = load_kernel(&mem, &kernel, EntryChoice::Auto).unwrap();
    assert_eq!(
        loaded.entry,
        BootEntry::Pvh {
            entry: GuestAddress(0x100000)
        }
    );
    let rd = load_initrd(&mem, &initrd, &loaded).unwrap();
    assert_eq!(rd.address.0 % 4096, 0);
    assert!(rd.address.0 + rd.size <= 64 << 20);
    write_boot_info(
        &mem,
        &loaded,
        Some(rd),
        "console=ttyS0 quiet",
        GuestAddress(0xe0000),
    )
    .unwrap();

    let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    assert_eq!(info.magic, 0x336e_c578);
    assert_eq!(info.version, 1);
    assert_eq!(info.rsdp_paddr, 0xe0000);
    assert_eq!(read_cstr(&mem, info.cmdline_paddr), "console=ttyS0 quiet");
    let map = memory_map(&mem);
    assert_eq!(info.memmap_entries as usize, map.len());
    for (i, (start, len, kind)) in map.iter().enumerate() {
        let e: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + i as u64 * 24))
            .unwrap();
        assert_eq!((e.addr, e.size, e.type_), (*start, *len, *kind as u32));
    }
    assert_eq!(info.nr_modules, 1);
    let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
    assert_eq!((module.paddr, module.size), (rd.address.0, 10_000));
    let byte: u8 = mem.read_obj(GuestAddress(module.paddr + 9_999)).unwrap();
    assert_eq!(byte, 0x5a);
    std::fs::remove_file(kernel).unwrap();
    std::fs::remove_file(initrd).unwrap();
}

#[test]
fn elf_64bit_entry_gets_a_zero_page_without_setup_header() {
    let mem = create_guest_memory(64 << 20).unwrap();
    let kernel = guest_file("linux64.elf", crate::guests::DEBUG_EXIT);
    let loaded = load_kernel(&mem, &kernel, EntryChoice::Linux64).unwrap();
    assert_eq!(
        loaded.entry,
        BootEntry::Linux64 {
            entry: GuestAddress(0x100000)
        }
    );
    write_boot_info(&mem, &loaded, None, "panic=-1", GuestAddress(0xe0000)).unwrap();
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    let hdr = params.hdr;
    assert_eq!(({ hdr.boot_flag }, { hdr.header }), (0xaa55, 0x5372_6448));
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_eq!({ hdr.cmd_line_ptr } as u64, CMDLINE_START);
    assert_eq!(read_cstr(&mem, CMDLINE_START), "panic=-1");
    assert_eq!({ hdr.ramdisk_image }, 0);
    assert_eq!(usize::from(params.e820_entries), memory_map(&mem).len());
    assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);
    std::fs::remove_file(kernel).unwrap();
}

#[test]
fn pvh_is_refused_without_the_note_and_long_cmdlines_are_refused() {
    let mem = create_guest_memory(64 << 20).unwrap();
    // Drop the PT_NOTE program header: change its type to PT_NULL.
    let mut image = crate::guests::DEBUG_EXIT.to_vec();
    let phoff = u64::from_le_bytes(image[0x20..0x28].try_into().unwrap()) as usize;
    let phnum = u16::from_le_bytes(image[0x38..0x3a].try_into().unwrap()) as usize;
    for i in 0..phnum {
        let at = phoff + i * 56;
        if image[at..at + 4] == 4u32.to_le_bytes() {
            image[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        }
    }
    let kernel = guest_file("nonote.elf", &image);
    assert!(matches!(
        load_kernel(&mem, &kernel, EntryChoice::Pvh),
        Err(BootError::NoPvhNote(_))
    ));
    let loaded = load_kernel(&mem, &kernel, EntryChoice::Auto).unwrap();
    assert!(matches!(loaded.entry, BootEntry::Linux64 { .. }));
    let long = "x".repeat(crate::layout::CMDLINE_MAX_SIZE);
    assert!(matches!(
        write_boot_info(&mem, &loaded, None, &long, GuestAddress(0xe0000)),
        Err(BootError::CmdlineTooLong { .. })
    ));
    std::fs::remove_file(kernel).unwrap();
}
