//! The vCPU thread: KVM_RUN, exits dispatched to the buses, and the ways a vCPU
//! ends the VM (shutdown, errors, emulation failures kiln cannot recover).

use std::sync::Arc;
use std::time::Instant;

use kiln_devices::legacy::{GuestExit, ResetSource};
use kvm_bindings::{
    KVM_INTERNAL_ERROR_EMULATION, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::Bus;
use crate::control::{Outcome, VmControl};
use crate::memory::GuestMemory;
use crate::pvm::emulation::{code_bitness, decode, read_code, Recovery};
use crate::pvm::walk::PagingState;

/// Signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Install the (empty) kick handler, so the signal only interrupts KVM_RUN.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
}

/// What every vCPU thread shares.
pub struct VcpuContext {
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub control: Arc<VmControl>,
    pub mem: GuestMemory,
    /// Recover emulation failures (PVM profile).
    pub pvm_recovery: bool,
    pub process_start: Instant,
}

/// A vCPU's state when it stopped, for diagnostics (e.g. where a guest was at a
/// timeout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuSnapshot {
    pub id: u8,
    pub rip: u64,
    pub rsp: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

impl std::fmt::Display for VcpuSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "vCPU {}: RIP={:#x} RSP={:#x} CR0={:#x} CR3={:#x} CR4={:#x} EFER={:#x}",
            self.id, self.rip, self.rsp, self.cr0, self.cr3, self.cr4, self.efer
        )
    }
}

fn snapshot(vcpu: &VcpuFd, id: u8) -> Option<VcpuSnapshot> {
    let regs = vcpu.get_regs().ok()?;
    let sregs = vcpu.get_sregs().ok()?;
    Some(VcpuSnapshot {
        id,
        rip: regs.rip,
        rsp: regs.rsp,
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
    })
}

/// Run vCPU `id` until the VM stops; returns its final state.
pub fn run_vcpu(mut vcpu: VcpuFd, id: u8, ctx: Arc<VcpuContext>) -> Option<VcpuSnapshot> {
    let mut first = true;
    let mut first_io = id == 0;
    while !ctx.control.is_stopping() {
        if first {
            first = false;
            if id == 0 {
                log::debug!(
                    "vCPU 0: first KVM_RUN {:.3} ms after start",
                    ctx.process_start.elapsed().as_secs_f64() * 1000.0
                );
            }
        }
        let mut emulation_failure = false;
        let exit = vcpu.run();
        if first_io && matches!(exit, Ok(VcpuExit::IoIn(..)) | Ok(VcpuExit::IoOut(..))) {
            first_io = false;
            log::info!(
                "vCPU 0: first I/O exit {:.3} ms after start",
                ctx.process_start.elapsed().as_secs_f64() * 1000.0
            );
        }
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !ctx.io_bus.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !ctx.io_bus.write(u64::from(port), data) {
                    log::trace!("vCPU {id}: write to unclaimed port {port:#x}");
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !ctx.mmio_bus.read(addr, data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !ctx.mmio_bus.write(addr, data) {
                    log::trace!("vCPU {id}: write to unclaimed MMIO {addr:#x}");
                }
            }
            Ok(VcpuExit::Shutdown) => ctx
                .control
                .finish(Outcome::Guest(GuestExit::Reset(ResetSource::TripleFault))),
            Ok(VcpuExit::SystemEvent(kind, _)) => ctx.control.finish(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Outcome::Guest(GuestExit::PowerOff),
                KVM_SYSTEM_EVENT_RESET => {
                    Outcome::Guest(GuestExit::Reset(ResetSource::TripleFault))
                }
                other => Outcome::Error(format!("vCPU {id}: KVM system event {other}")),
            }),
            Ok(VcpuExit::Hlt) => {
                // With the in-kernel LAPIC, HLT stays in KVM; if it ever exits,
                // this vCPU is done and waits for the VM to end.
                log::debug!("vCPU {id}: halted");
                while !ctx.control.is_stopping() {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            Ok(VcpuExit::InternalError) => emulation_failure = true,
            Ok(VcpuExit::FailEntry(reason, cpu)) => ctx.control.finish(Outcome::Error(format!(
                "vCPU {id}: KVM could not enter the guest (hardware reason {reason:#x}, CPU {cpu})"
            ))),
            Ok(VcpuExit::Intr) => {}
            Ok(other) => ctx.control.finish(Outcome::Error(format!(
                "vCPU {id}: unexpected KVM exit {other:?}"
            ))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => ctx
                .control
                .finish(Outcome::Error(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        }
        if emulation_failure {
            if let Err(message) = handle_internal_error(&mut vcpu, id, &ctx) {
                ctx.control.finish(Outcome::Error(message));
            }
        }
    }
    snapshot(&vcpu, id)
}

/// KVM_EXIT_INTERNAL_ERROR: name the instruction; recover `int3` and `fwait`
/// when the PVM profile is on.
fn handle_internal_error(vcpu: &mut VcpuFd, id: u8, ctx: &VcpuContext) -> Result<(), String> {
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
    // union member KVM filled.
    let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
    let mut regs = vcpu
        .get_regs()
        .map_err(|e| format!("vCPU {id}: get registers: {e}"))?;
    if suberror != KVM_INTERNAL_ERROR_EMULATION {
        return Err(format!(
            "vCPU {id}: KVM internal error (suberror {suberror}) at RIP {:#x}",
            regs.rip
        ));
    }
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("vCPU {id}: get sregs: {e}"))?;
    let paging = PagingState {
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
    };
    let bitness = code_bitness(sregs.cs.l, sregs.cs.db, sregs.cr0);
    let linear = if bitness == 64 {
        regs.rip
    } else {
        sregs.cs.base.wrapping_add(regs.rip)
    };
    let insn = read_code(&ctx.mem, paging, linear)
        .ok()
        .and_then(|bytes| decode(&bytes, bitness, regs.rip));
    let Some(insn) = insn else {
        return Err(format!(
            "vCPU {id}: the host could not emulate the guest instruction at RIP {:#x}, \
             and kiln cannot read or decode it",
            regs.rip
        ));
    };
    let fatal = || {
        format!(
            "vCPU {id}: the host could not emulate guest instruction `{}` (bytes {:02x?}) \
             at RIP {:#x} (KVM emulation failure)",
            insn.text, insn.bytes, regs.rip
        )
    };
    if !ctx.pvm_recovery {
        return Err(fatal());
    }
    match insn.recovery {
        Recovery::Fatal => Err(fatal()),
        Recovery::Skip => {
            log::info!(
                "PVM profile: skipped `{}` at RIP {:#x}",
                insn.text,
                regs.rip
            );
            regs.rip += insn.len as u64;
            vcpu.set_regs(&regs)
                .map_err(|e| format!("vCPU {id}: set registers: {e}"))
        }
        Recovery::InjectBreakpoint => {
            log::info!(
                "PVM profile: `{}` at RIP {:#x}: injecting #BP",
                insn.text,
                regs.rip
            );
            regs.rip += insn.len as u64;
            vcpu.set_regs(&regs)
                .map_err(|e| format!("vCPU {id}: set registers: {e}"))?;
            let mut events = vcpu
                .get_vcpu_events()
                .map_err(|e| format!("vCPU {id}: get events: {e}"))?;
            events.exception.injected = 1;
            events.exception.nr = 3;
            events.exception.has_error_code = 0;
            events.exception.error_code = 0;
            vcpu.set_vcpu_events(&events)
                .map_err(|e| format!("vCPU {id}: inject #BP: {e}"))
        }
    }
}
