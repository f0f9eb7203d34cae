//! Emulation failures (KVM_EXIT_INTERNAL_ERROR, suberror 1): read and decode the
//! instruction at the guest RIP, name it, and say whether its semantics allow a
//! recovery without emulating it.

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter, Mnemonic};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::walk::{translate, PagingState, WalkError};

/// Longest x86 instruction.
const MAX_INSN_LEN: usize = 15;

/// What kiln may do about an instruction the host could not emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// `int3`: advance RIP past it and inject #BP, as the CPU would.
    InjectBreakpoint,
    /// `fwait` with no x87 exception pending: a no-op, so skip it.
    Skip,
    /// Nothing safe to do.
    Fatal,
}

/// An instruction at the guest RIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedInsn {
    pub text: String,
    pub len: usize,
    pub bytes: Vec<u8>,
    pub recovery: Recovery,
}

/// Decode the first instruction of `bytes` in a `bitness`-bit code segment.
pub fn decode(bytes: &[u8], bitness: u32, rip: u64) -> Option<DecodedInsn> {
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return None;
    }
    let mut text = String::new();
    IntelFormatter::new().format(&insn, &mut text);
    let recovery = match insn.mnemonic() {
        Mnemonic::Int3 => Recovery::InjectBreakpoint,
        Mnemonic::Wait => Recovery::Skip,
        _ => Recovery::Fatal,
    };
    Some(DecodedInsn {
        text,
        len: insn.len(),
        bytes: bytes[..insn.len()].to_vec(),
        recovery,
    })
}

/// Read up to 15 code bytes from linear address `linear`, page by page (a page
/// that is not mapped ends the read early).
pub fn read_code<M: GuestMemory>(
    mem: &M,
    paging: PagingState,
    linear: u64,
) -> Result<Vec<u8>, WalkError> {
    let mut bytes = Vec::with_capacity(MAX_INSN_LEN);
    let mut addr = linear;
    while bytes.len() < MAX_INSN_LEN {
        let phys = match translate(mem, paging, addr) {
            Ok(p) => p,
            Err(e) if bytes.is_empty() => return Err(e),
            Err(_) => break,
        };
        let in_page = (0x1000 - (addr & 0xfff)) as usize;
        let n = in_page.min(MAX_INSN_LEN - bytes.len());
        let mut chunk = vec![0u8; n];
        if mem.read_slice(&mut chunk, GuestAddress(phys)).is_err() {
            if bytes.is_empty() {
                return Err(WalkError::OutsideMemory(phys));
            }
            break;
        }
        bytes.extend_from_slice(&chunk);
        addr = addr.wrapping_add(n as u64);
    }
    Ok(bytes)
}

/// Code-segment width from CS.L / CS.D and CR0.PE.
pub fn code_bitness(cs_l: u8, cs_db: u8, cr0: u64) -> u32 {
    if cr0 & 1 == 0 {
        16
    } else if cs_l == 1 {
        64
    } else if cs_db == 1 {
        32
    } else {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn names_and_classifies_the_failures_seen_here() {
        let int3 = decode(&[0xcc, 0x90], 64, 0xffff_ffff_8100_0000).unwrap();
        assert_eq!((int3.text.as_str(), int3.len), ("int3", 1));
        assert_eq!(int3.recovery, Recovery::InjectBreakpoint);
        let fwait = decode(&[0x9b, 0xdb, 0xe2], 64, 0).unwrap();
        assert_eq!((fwait.len, fwait.recovery), (1, Recovery::Skip));
        let cx16 = decode(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e], 64, 0).unwrap();
        assert_eq!(cx16.text, "lock cmpxchg16b [rsi]");
        assert_eq!(cx16.recovery, Recovery::Fatal);
        let xrstor = decode(&[0x48, 0x0f, 0xae, 0x2f], 64, 0).unwrap();
        assert!(xrstor.text.starts_with("xrstor64"), "{}", xrstor.text);
        assert!(decode(&[0x0f, 0xff], 64, 0).is_none_or(|d| d.recovery == Recovery::Fatal));
    }

    #[test]
    fn reads_code_across_a_page_boundary_through_page_tables() {
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // Identity 2 MiB page for 0..2M via PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000.
        mem.write_obj(0x2003u64, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0x3003u64, GuestAddress(0x2000)).unwrap();
        mem.write_obj(0x83u64, GuestAddress(0x3000)).unwrap();
        mem.write_slice(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e], GuestAddress(0x7ffe))
            .unwrap();
        let paging = PagingState {
            cr0: 0x8000_0001,
            cr3: 0x1000,
            cr4: 0x20,
            efer: 0x500,
        };
        let bytes = read_code(&mem, paging, 0x7ffe).unwrap();
        assert_eq!(bytes.len(), 15);
        assert_eq!(decode(&bytes, 64, 0x7ffe).unwrap().len, 5);
        assert!(read_code(&mem, paging, 0x4000_0000).is_err());
    }

    #[test]
    fn bitness_follows_the_code_segment() {
        assert_eq!(code_bitness(1, 0, 0x8000_0011), 64);
        assert_eq!(code_bitness(0, 1, 0x11), 32);
        assert_eq!(code_bitness(0, 0, 0x10), 16);
    }
}
