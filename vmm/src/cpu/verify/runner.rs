//! Boots the CPUID guest (resources/guests/cpuid.S) on one vCPU with a given CPUID
//! table and returns its serial output. Deliberately minimal: 4 MiB of RAM, no
//! devices but COM1's data/status ports and the debug-exit port, a watchdog.

use std::io::Cursor;
use std::sync::mpsc;
use std::time::Duration;

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};
use linux_loader::loader::{Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::cpu::table::CpuidTable;
use crate::cpu::CpuError;
use crate::guests::CPUID_VERIFY;

/// Where cpuid.S keeps its leaf list: image base (1 MiB) + 16.
pub const LEAF_LIST_ADDR: u64 = 0x10_0010;
const LEAF_LIST_MAGIC: &[u8; 8] = b"KCPULIST";
const RAM_SIZE: usize = 4 << 20;
const COM1: u16 = 0x3f8;
const COM1_LSR: u16 = COM1 + 5;
const DEBUG_EXIT: u16 = 0xf4;
/// cpuid.S writes this after a complete report.
pub const EXIT_REPORTED: u8 = 0x10;

/// How the guest run ended.
#[derive(Debug)]
pub struct GuestOutput {
    pub serial: String,
    /// Value written to the debug-exit port, if any.
    pub exit_value: Option<u8>,
}

fn kvm_err(what: &str) -> impl Fn(kvm_ioctls::Error) -> CpuError + '_ {
    move |e| CpuError::Kvm(format!("{what}: {e}"))
}

/// Runs the guest with `table` as its CPUID and `leaves` as the list to read back.
pub fn run(
    kvm: &Kvm,
    table: &CpuidTable,
    leaves: &[(u32, u32)],
    timeout: Duration,
) -> Result<GuestOutput, CpuError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    let mem: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE)])
        .map_err(|e| CpuError::Kvm(format!("guest memory: {e}")))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| CpuError::Kvm(format!("guest memory: {e}")))?;
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM
        // (both are dropped at the end of this function, the VM first).
        unsafe { vm.set_user_memory_region(desc) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    let loaded = Elf::load(&mem, None, &mut Cursor::new(CPUID_VERIFY), None)
        .map_err(|e| CpuError::Kvm(format!("loading the CPUID guest: {e}")))?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => a.0,
        _ => return Err(CpuError::Kvm("the CPUID guest has no PVH entry".into())),
    };
    write_leaf_list(&mem, leaves)?;

    let mut vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    let cpuid = table
        .to_kvm()
        .map_err(|e| CpuError::Kvm(format!("CPUID table: {e:?}")))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let seg = |type_: u8, selector: u16| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    // PVH: flat 32-bit protected mode, paging off (xen docs/misc/pvh.pandoc).
    sregs.cs = seg(0xb, 0x8);
    for s in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *s = seg(0x3, 0x10);
    }
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    regs.rip = entry;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;

    let watchdog = Watchdog::start(timeout)?;
    let mut serial = Vec::new();
    let mut exit_value = None;
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(COM1, data)) => serial.extend_from_slice(data),
            Ok(VcpuExit::IoOut(DEBUG_EXIT, data)) => {
                exit_value = data.first().copied();
                break;
            }
            Ok(VcpuExit::IoOut(..)) => {}
            Ok(VcpuExit::IoIn(port, data)) => {
                // LSR: transmitter empty; anything else reads as open bus.
                let v = if port == COM1_LSR { 0x60 } else { 0xff };
                data.iter_mut().for_each(|b| *b = v);
            }
            Ok(VcpuExit::Hlt) => break,
            Ok(VcpuExit::Shutdown) => {
                return Err(fail("the CPUID guest triple-faulted", &serial));
            }
            Ok(VcpuExit::InternalError) => {
                return Err(fail(
                    "KVM_EXIT_INTERNAL_ERROR (instruction emulation failed)",
                    &serial,
                ));
            }
            Ok(other) => {
                return Err(fail(&format!("unexpected exit {other:?}"), &serial));
            }
            Err(e) if e.errno() == libc::EINTR => {
                if watchdog.fired() {
                    return Err(fail(&format!("no result after {timeout:?}"), &serial));
                }
            }
            Err(e) if e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(CpuError::Kvm(format!("KVM_RUN: {e}"))),
        }
    }
    drop(watchdog);
    Ok(GuestOutput {
        serial: String::from_utf8_lossy(&serial).into_owned(),
        exit_value,
    })
}

fn fail(what: &str, serial: &[u8]) -> CpuError {
    CpuError::Kvm(format!(
        "CPUID guest: {what}; its output so far: {:?}",
        String::from_utf8_lossy(serial)
    ))
}

fn write_leaf_list(mem: &GuestMemoryMmap<()>, leaves: &[(u32, u32)]) -> Result<(), CpuError> {
    let err = |e: vm_memory::GuestMemoryError| CpuError::Kvm(format!("leaf list: {e}"));
    let mut magic = [0u8; 8];
    mem.read_slice(&mut magic, GuestAddress(LEAF_LIST_ADDR))
        .map_err(err)?;
    if &magic != LEAF_LIST_MAGIC {
        return Err(CpuError::Kvm(
            "the CPUID guest image has no leaf list at 0x100010 (build mismatch)".into(),
        ));
    }
    let capacity: u32 = mem
        .read_obj(GuestAddress(LEAF_LIST_ADDR + 12))
        .map_err(err)?;
    if leaves.len() > capacity as usize {
        return Err(CpuError::Kvm(format!(
            "{} leaves exceed the guest's list of {capacity}",
            leaves.len()
        )));
    }
    mem.write_obj(leaves.len() as u32, GuestAddress(LEAF_LIST_ADDR + 8))
        .map_err(err)?;
    for (i, &(leaf, subleaf)) in leaves.iter().enumerate() {
        let at = LEAF_LIST_ADDR + 16 + 8 * i as u64;
        mem.write_obj(leaf, GuestAddress(at)).map_err(err)?;
        mem.write_obj(subleaf, GuestAddress(at + 4)).map_err(err)?;
    }
    Ok(())
}

/// Interrupts KVM_RUN on this thread (with a real-time signal) once `timeout` passes.
struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A pthread handle that may cross to the watchdog thread (on musl it is a raw pointer).
struct VcpuThread(libc::pthread_t);
// SAFETY: the handle is only passed to pthread_kill, which is safe from any thread
// while the target lives; the vCPU thread outlives the watchdog (it joins it on drop).
unsafe impl Send for VcpuThread {}

impl VcpuThread {
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: see the Send impl: the target thread is alive while we hold this.
        unsafe { libc::pthread_kill(self.0, signal) };
    }
}

extern "C" fn ignore_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

impl Watchdog {
    fn start(timeout: Duration) -> Result<Watchdog, CpuError> {
        let signal = vmm_sys_util::signal::SIGRTMIN() + 1;
        vmm_sys_util::signal::register_signal_handler(signal, ignore_signal)
            .map_err(|e| CpuError::Kvm(format!("signal handler: {e}")))?;
        // SAFETY: pthread_self has no preconditions.
        let target = VcpuThread(unsafe { libc::pthread_self() });
        let (stop, rx) = mpsc::channel::<()>();
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = fired.clone();
        let thread = std::thread::spawn(move || {
            if rx.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                // Keep signalling until the vCPU thread stops us: a signal that lands
                // between two KVM_RUN calls would otherwise be lost.
                loop {
                    // `target` is the vCPU thread, alive until it drops the Watchdog,
                    // which joins this thread first.
                    target.signal(signal);
                    if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                        break;
                    }
                }
            }
        });
        Ok(Watchdog {
            stop: Some(stop),
            fired,
            thread: Some(thread),
        })
    }

    fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
