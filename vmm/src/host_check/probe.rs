//! The live inputs of the host check: the filesystem root, the current user, the
//! /dev/kvm answers and the CPUID of the CPU we run on. Tests build these by hand.

use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};

use crate::cpu::nested::nested_state_size;

/// Where to look for sysfs, /dev and /proc, and who is asking.
#[derive(Clone, Debug)]
pub struct HostEnv {
    /// "/" for the real host; a fake tree in tests.
    pub root: PathBuf,
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl HostEnv {
    /// The real host, as the current process sees it.
    pub fn real() -> HostEnv {
        // SAFETY: geteuid/getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut gids = vec![gid];
        let mut buf = [0 as libc::gid_t; 256];
        // SAFETY: the buffer holds 256 entries and its length is passed.
        let n = unsafe { libc::getgroups(buf.len() as libc::c_int, buf.as_mut_ptr()) };
        if n > 0 {
            gids.extend_from_slice(&buf[..n as usize]);
        }
        HostEnv {
            root: PathBuf::from("/"),
            uid,
            gids,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok()
    }

    /// Whether the user may read and write `rel`, by the mode bits (root always may).
    pub fn can_read_write(&self, rel: &str) -> Result<bool, std::io::Error> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(self.path(rel))?;
        if self.uid == 0 {
            return Ok(true);
        }
        let mode = meta.mode();
        let bits = if meta.uid() == self.uid {
            mode >> 6
        } else if self.gids.contains(&meta.gid()) {
            mode >> 3
        } else {
            mode
        };
        Ok(bits & 0o6 == 0o6)
    }

    /// The loaded KVM vendor module: kvm_intel, kvm_amd or kvm_pvm.
    pub fn kvm_flavour(&self) -> Option<String> {
        ["kvm_intel", "kvm_amd", "kvm_pvm"]
            .into_iter()
            .find(|m| self.path(&format!("sys/module/{m}")).is_dir())
            .map(str::to_string)
    }

    /// The vendor module's `nested` parameter: kvm_intel Y/N, kvm_amd 1/0.
    pub fn nested_param(&self, module: &str) -> Option<(String, bool)> {
        let raw = self.read(&format!("sys/module/{module}/parameters/nested"))?;
        let raw = raw.trim().to_string();
        let on = matches!(raw.as_str(), "Y" | "y" | "1");
        Some((raw, on))
    }

    /// Looks for an executable in the usual system directories under the root.
    pub fn find_program(&self, name: &str) -> Option<PathBuf> {
        ["usr/bin", "usr/local/bin", "bin", "usr/sbin", "sbin"]
            .iter()
            .map(|d| self.path(d).join(name))
            .find(|p| p.is_file())
    }
}

/// What /dev/kvm answered.
#[derive(Clone, Debug, Default)]
pub struct KvmFacts {
    /// Why /dev/kvm could not be opened, if it could not.
    pub open_error: Option<String>,
    pub api_version: i32,
    /// (capability name, supported).
    pub caps: Vec<(&'static str, bool)>,
    /// KVM_CAP_NESTED_STATE: the nested state size, 0 when unsupported.
    pub nested_state: i32,
}

/// The capabilities kiln's VMM relies on.
pub const NEEDED_CAPS: &[(&str, Cap)] = &[
    ("KVM_CAP_IRQCHIP", Cap::Irqchip),
    ("KVM_CAP_USER_MEMORY", Cap::UserMemory),
    ("KVM_CAP_IOEVENTFD", Cap::Ioeventfd),
    ("KVM_CAP_IRQFD", Cap::Irqfd),
    ("KVM_CAP_EXT_CPUID", Cap::ExtCpuid),
    ("KVM_CAP_SET_TSS_ADDR", Cap::SetTssAddr),
    ("KVM_CAP_PIT2", Cap::Pit2),
    ("KVM_CAP_IMMEDIATE_EXIT", Cap::ImmediateExit),
];

impl KvmFacts {
    /// Opens `path` (normally /dev/kvm) and asks it.
    pub fn probe(path: &Path) -> KvmFacts {
        use std::os::unix::ffi::OsStrExt;
        let opened = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|c| Kvm::new_with_path(c).map_err(|e| e.to_string()));
        let kvm = match opened {
            Ok(kvm) => kvm,
            Err(e) => {
                return KvmFacts {
                    open_error: Some(format!("{}: {e}", path.display())),
                    ..Default::default()
                }
            }
        };
        KvmFacts {
            open_error: None,
            api_version: kvm.get_api_version(),
            caps: NEEDED_CAPS
                .iter()
                .map(|&(name, cap)| (name, kvm.check_extension(cap)))
                .collect(),
            nested_state: nested_state_size(&kvm),
        }
    }
}

/// Whether the CPU we run on says it is virtualized (CPUID.1:ECX[31]) and by whom
/// (leaf 0x40000000).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuidProbe {
    pub hypervisor_bit: bool,
    pub signature: Option<String>,
}

impl CpuidProbe {
    /// Executes CPUID on this CPU.
    // `__cpuid` is a safe function from Rust 1.87 on; the blocks keep 1.85 building.
    #[allow(unused_unsafe)]
    pub fn native() -> CpuidProbe {
        use std::arch::x86_64::__cpuid;
        // SAFETY: CPUID is available on every x86_64 CPU and has no side effects.
        let leaf1 = unsafe { __cpuid(1) };
        let hypervisor_bit = leaf1.ecx & (1 << 31) != 0;
        let signature = hypervisor_bit.then(|| {
            // SAFETY: as above; leaves 0x40000000+ are defined when the bit is set.
            let r = unsafe { __cpuid(0x4000_0000) };
            let bytes: Vec<u8> = [r.ebx, r.ecx, r.edx]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            String::from_utf8_lossy(&bytes)
                .trim_end_matches('\0')
                .to_string()
        });
        CpuidProbe {
            hypervisor_bit,
            signature,
        }
    }
}
