//! The PVM host compatibility profile. PVM (`kvm_pvm`) runs guest ring 0 in KVM's
//! instruction emulator and does not honour CPUID feature leaves; see
//! shared/reference/kvm-here.md. The profile applies only on such a host and not
//! with `--no-host-quirks`; each part is logged when applied.

pub mod emulation;
pub mod walk;

use std::path::Path;

/// The boot parameter of kiln's syscall-repair kernel patch (resources/kernel/).
pub const SYSCALL_FIXUP_PARAM: &str = "kiln_pvm_syscall_fixup";

/// Is this a PVM host? (`<sysfs>/module/kvm_pvm` exists.)
pub fn is_pvm_host(sysfs_root: &Path) -> bool {
    sysfs_root.join("module/kvm_pvm").exists()
}

/// Kernel parameters that keep an unmodified Linux off what PVM's emulator
/// cannot run. Each one answers a failure met here:
/// - `noxsave`: `xrstor` fails emulation (kvm-here.md);
/// - `clearcpuid=smap,popcnt`: `clac` and `popcnt` fail emulation, and CPUID
///   masking is not honoured, so the kernel must be told (kvm-here.md);
/// - `nopv`: run as a generic guest, without KVM's paravirtual interfaces. With
///   them an AP hung in a PV send-IPI hypercall (`kvm_hypercall4`) during SMP
///   bring-up, and kvmclock makes the guest spin in the PTP clock-pairing
///   hypercall (kvm-here.md); `nopv` also keeps kvmclock off;
/// - `nofsgsbase`: with FSGSBASE, busybox on the second vCPU read its TLS
///   pointer through %fs as 0 and segfaulted.
pub const KERNEL_PARAMS: &[&str] = &["noxsave", "clearcpuid=smap,popcnt", "nopv", "nofsgsbase"];

/// Without kvmclock (`nopv`) a guest has no way to learn the TSC frequency, and
/// calibration against the PIT fails under emulation ("Unable to calibrate
/// against PIT"). On a hardware-reduced ACPI machine Linux then has no timer at
/// all (no PIT, no TSC-deadline LAPIC timer) and hangs in calibrate_delay()
/// waiting for a jiffy. Tell it the frequency KVM runs the guest TSC at.
pub fn tsc_param(tsc_khz: u32) -> String {
    log::info!("PVM profile: tsc_early_khz={tsc_khz} (no kvmclock to report the TSC frequency)");
    format!("tsc_early_khz={tsc_khz}")
}

const LINUX_BANNER: &[u8] = b"Linux version ";

/// What the profile needs to know about a kernel image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// The image carries kiln's syscall-repair patch: only then does the
    /// parameter's name exist in it (the patch registers it). In a compressed
    /// bzImage the name is only visible if the compressor kept it as a literal
    /// run: LZ4 did for kiln's kernel, but only the ELF vmlinux is certain.
    pub syscall_fixup: bool,
    /// A Linux kernel: a bzImage setup header, or the banner string of an
    /// uncompressed vmlinux (the userspace warning is about Linux).
    pub linux: bool,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Scan an image in fixed-size chunks (kernels are tens of MiB; kiln keeps its
/// memory small), with an overlap so no match is split.
pub fn scan_image(reader: &mut impl std::io::Read) -> std::io::Result<ImageFacts> {
    const CHUNK: usize = 64 * 1024;
    let fixup = SYSCALL_FIXUP_PARAM.as_bytes();
    let overlap = fixup.len().max(LINUX_BANNER.len()) - 1;
    let mut buf = vec![0u8; CHUNK + overlap];
    let mut kept = 0;
    let mut facts = ImageFacts::default();
    let mut first = true;
    loop {
        let n = reader.read(&mut buf[kept..])?;
        if n == 0 {
            break;
        }
        let window = &buf[..kept + n];
        if first && window.len() >= 0x206 && &window[0x202..0x206] == b"HdrS" {
            facts.linux = true;
        }
        first = false;
        facts.syscall_fixup |= contains(window, fixup);
        facts.linux |= contains(window, LINUX_BANNER);
        let keep_from = window.len().saturating_sub(overlap);
        buf.copy_within(keep_from..kept + n, 0);
        kept = kept + n - keep_from;
    }
    Ok(facts)
}

/// The profile's command-line additions for a kernel image.
pub fn cmdline_additions(facts: ImageFacts) -> Vec<String> {
    let mut params: Vec<String> = KERNEL_PARAMS.iter().map(|p| p.to_string()).collect();
    log::info!("PVM profile: kernel parameters {}", KERNEL_PARAMS.join(" "));
    if facts.syscall_fixup {
        log::info!("PVM profile: kiln kernel, enabling {SYSCALL_FIXUP_PARAM}=1");
        params.push(format!("{SYSCALL_FIXUP_PARAM}=1"));
    } else if facts.linux {
        eprintln!(
            "kiln: warning: this host is PVM (kvm_pvm): system calls from guest user mode \
             do not work here, and this kernel lacks kiln's {SYSCALL_FIXUP_PARAM} patch, \
             so its userspace cannot run on this host"
        );
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_pvm_from_an_injected_sysfs_root() {
        let dir = std::env::temp_dir().join(format!("kiln-pvm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_pvm_host(&dir));
        std::fs::create_dir_all(dir.join("module/kvm_pvm")).unwrap();
        assert!(is_pvm_host(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn facts(image: &[u8]) -> ImageFacts {
        scan_image(&mut std::io::Cursor::new(image)).unwrap()
    }

    #[test]
    fn syscall_fixup_only_for_images_carrying_the_parameter() {
        let stock = b"\x7fELF....Linux version 6.1....".to_vec();
        let mut ours = stock.clone();
        ours.extend_from_slice(b"\0kiln_pvm_syscall_fixup=\0");
        assert_eq!(
            facts(&stock),
            ImageFacts {
                syscall_fixup: false,
                linux: true
            }
        );
        assert!(!cmdline_additions(facts(&stock))
            .iter()
            .any(|p| p.contains(SYSCALL_FIXUP_PARAM)));
        let params = cmdline_additions(facts(&ours));
        assert!(params.contains(&"kiln_pvm_syscall_fixup=1".to_string()));
        assert!(params.contains(&"noxsave".to_string()));
    }

    #[test]
    fn matches_across_chunk_boundaries_are_found() {
        for offset in [65_536 - 10, 65_536 - 1, 65_536, 3 * 65_536 - 5] {
            let mut image = vec![0u8; offset];
            image.extend_from_slice(SYSCALL_FIXUP_PARAM.as_bytes());
            image.extend_from_slice(&[0u8; 100]);
            assert!(facts(&image).syscall_fixup, "offset {offset}");
        }
    }

    #[test]
    fn linux_images_are_recognised() {
        assert!(facts(b"\x7fELF...Linux version 6.1.0 (kiln@build)").linux);
        assert!(!facts(b"\x7fELF tiny guest").linux);
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(facts(&bz).linux);
    }
}
