//! ACPI tables (built with `acpi_tables`): RSDP, XSDT, a hardware-reduced FADT,
//! MADT and DSDT. They live in the BIOS area at 0xE0000, where an OS also scans
//! for the RSDP when the boot protocol does not hand it over.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use kiln_devices::legacy::{
    RESET_OFFSET, RESET_VALUE, S5_SLP_TYP, SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET,
};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;
use crate::memory::GuestMemory;

const OEM_ID: [u8; 6] = *b"KILN  ";
const OEM_TABLE_ID: [u8; 8] = *b"KILNVM  ";
const OEM_REVISION: u32 = 1;
/// FADT IAPC_BOOT_ARCH: no VGA, no CMOS RTC (and, by leaving bit 1 clear, no 8042).
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const IAPC_BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;
/// MADT flags: the machine also has dual 8259 PICs (KVM's in-kernel irqchip).
const MADT_PCAT_COMPAT: u32 = 1;

/// A virtio-mmio device as the DSDT announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioAcpi {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// What the tables describe.
#[derive(Clone, Debug, Default)]
pub struct AcpiConfig {
    pub vcpus: u8,
    pub virtio_mmio: Vec<VirtioMmioAcpi>,
}

/// The encoded tables, each with the guest address it is written at.
pub struct AcpiTables {
    pub tables: Vec<(&'static str, GuestAddress, Vec<u8>)>,
}

impl AcpiTables {
    /// Where the RSDP is.
    pub fn rsdp_address(&self) -> GuestAddress {
        GuestAddress(ACPI_START)
    }

    pub fn write_to(&self, mem: &GuestMemory) -> Result<(), vm_memory::GuestMemoryError> {
        for (_, addr, bytes) in &self.tables {
            mem.write_slice(bytes, *addr)?;
        }
        Ok(())
    }
}

fn io_gas(port: u16, offset: u64) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port) + offset,
    )
}

/// The DSDT body: COM1, the \_S5 sleep package and the virtio-mmio devices.
pub fn dsdt_aml(config: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();
    // Temporaries live to the end of the statement, so build and encode in one.
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
                    &aml::Interrupt::new(true, true, false, false, COM1_IRQ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut body);
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &aml::ZERO, &aml::ZERO]),
    );
    s5.to_aml_bytes(&mut body);
    for (index, dev) in config.virtio_mmio.iter().enumerate() {
        append_virtio_mmio_device(&mut body, index, dev);
    }
    body
}

/// Append one `LNRO0005` device (Linux's virtio_mmio ACPI match) with its MMIO
/// window and interrupt to a DSDT body.
pub fn append_virtio_mmio_device(body: &mut Vec<u8>, index: usize, dev: &VirtioMmioAcpi) {
    let hid: String = "LNRO0005".into();
    let uid = index as u32;
    let path = format!("_SB_.V{index:03X}");
    aml::Device::new(
        path.as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::Memory32Fixed::new(true, dev.base as u32, dev.size as u32),
                    &aml::Interrupt::new(true, true, false, false, dev.irq),
                ]),
            ),
        ],
    )
    .to_aml_bytes(body);
}

fn aml_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Build every table and lay them out from [`ACPI_START`].
pub fn build_tables(config: &AcpiConfig) -> AcpiTables {
    let align = |a: u64| (a + 15) & !15;
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    // XSDT: header + two entries.
    let fadt_addr = align(xsdt_addr + 36 + 2 * 8);
    let madt_addr = align(fadt_addr + acpi_tables::fadt::FADT::len() as u64);

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_START as u32),
    );
    for cpu in 0..config.vcpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_START as u32, 0));
    let mut madt = aml_bytes(&madt);
    set_madt_flags(&mut madt, MADT_PCAT_COMPAT);

    let dsdt_addr = align(madt_addr + madt.len() as u64);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(config));
    let dsdt = dsdt.as_slice().to_vec();

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC).into();
    fadt.sleep_control_reg = io_gas(ACPI_PM_PORT, SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = io_gas(ACPI_PM_PORT, SLEEP_STATUS_OFFSET);
    fadt.reset_reg = io_gas(ACPI_PM_PORT, RESET_OFFSET);
    fadt.reset_value = RESET_VALUE;
    let fadt = aml_bytes(&fadt.finalize());

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = aml_bytes(&xsdt);
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    let tables = vec![
        ("rsdp", GuestAddress(rsdp_addr), rsdp),
        ("xsdt", GuestAddress(xsdt_addr), xsdt),
        ("facp", GuestAddress(fadt_addr), fadt),
        ("apic", GuestAddress(madt_addr), madt),
        ("dsdt", GuestAddress(dsdt_addr), dsdt),
    ];
    debug_assert!(tables
        .iter()
        .all(|(_, a, b)| a.0 + b.len() as u64 <= ACPI_END));
    AcpiTables { tables }
}

/// Set the MADT flags field (offset 40) and fix the checksum (offset 9).
fn set_madt_flags(madt: &mut [u8], flags: u32) {
    madt[40..44].copy_from_slice(&flags.to_le_bytes());
    madt[9] = 0;
    let sum = madt.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    madt[9] = 0u8.wrapping_sub(sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_checksum_and_fit_in_the_bios_area() {
        let tables = build_tables(&AcpiConfig {
            vcpus: 4,
            virtio_mmio: vec![VirtioMmioAcpi {
                base: VIRTIO_MMIO_START,
                size: 0x1000,
                irq: 5,
            }],
        });
        for (name, addr, bytes) in &tables.tables {
            assert!(addr.0 + bytes.len() as u64 <= ACPI_END, "{name}");
            if *name == "rsdp" {
                assert!(checksum_ok(&bytes[..20]) && checksum_ok(bytes));
            } else {
                assert!(checksum_ok(bytes), "{name} checksum");
                let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
                assert_eq!(len as usize, bytes.len(), "{name} length");
            }
        }
        let madt = &tables.tables[3].2;
        // Header (44) + 4 LAPICs (8) + IOAPIC (12).
        assert_eq!(madt.len(), 44 + 4 * 8 + 12);
        assert_eq!(madt[44 + 3 * 8 + 3], 3, "fourth LAPIC has APIC id 3");
        let dsdt = &tables.tables[4].2;
        assert!(dsdt.windows(8).any(|w| w == b"LNRO0005"));
    }
}
