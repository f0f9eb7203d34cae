//! Building a VM from a [`VmConfig`] and running it to its outcome.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use kiln_devices::legacy::{GuestExit, ResetSource};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::signal::Killable;

use crate::acpi::{build_tables, AcpiConfig};
use crate::boot;
use crate::bus::Bus;
use crate::config::{OnReset, SerialOutput, VmConfig};
use crate::control::{Outcome, VmControl};
use crate::device_manager::{self, Subscriber, VirtioMmioAllocator};
use crate::layout::*;
use crate::memory::{create_guest_memory, GuestMemory};
use crate::platform::{self, SerialWriter, WakeWatcher};
use crate::serial::RawTerminal;
use crate::stop_signal;
use crate::vcpu::{create_vcpu, CpuSetup};
use crate::vcpu_exit::{install_kick_handler, kick_signal, run_vcpu, VcpuContext, VcpuSnapshot};
use crate::VmmError;

/// How the VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExitStatus {
    PowerOff,
    Reset(ResetSource),
    DebugExit(u8),
    Timeout(Duration),
    /// SIGINT or SIGTERM (the signal number) stopped the VM.
    Interrupted(i32),
    /// The user quit from the serial console (Ctrl-A x).
    ConsoleQuit,
}

impl VmExitStatus {
    /// kiln's process exit code for this outcome.
    pub fn exit_code(&self) -> u8 {
        match self {
            VmExitStatus::PowerOff => 0,
            VmExitStatus::Reset(_) => 2,
            // Like QEMU's isa-debug-exit; the OS keeps the low 8 bits.
            VmExitStatus::DebugExit(v) => ((u32::from(*v) << 1) | 1) as u8,
            VmExitStatus::Timeout(_) => 124,
            // The shell convention for a death by signal.
            VmExitStatus::Interrupted(signum) => (128 + signum) as u8,
            // As a Ctrl-C would end a program on the terminal.
            VmExitStatus::ConsoleQuit => 128 + libc::SIGINT as u8,
        }
    }
}

/// Boot `config` and run until the guest powers off, resets (per `on_reset`),
/// reports on the debug-exit port, or the timeout expires.
pub fn run(config: &VmConfig, process_start: Instant) -> Result<VmExitStatus, VmmError> {
    let deadline = config.timeout.map(|t| Instant::now() + t);
    stop_signal::install()
        .map_err(|e| VmmError::Device(format!("cannot install SIGINT/SIGTERM handlers: {e}")))?;
    // Refuse bad input before creating any output file.
    boot::check_inputs(&config.kernel, config.initrd.as_deref())?;
    let output = SerialWriter::open(&config.serial)?;
    let pvm = config.host_quirks && crate::pvm::is_pvm_host(&config.sysfs_root);
    let profile_params = if pvm {
        log::info!("PVM host detected (kvm_pvm loaded): applying its compatibility profile");
        let facts = File::open(&config.kernel)
            .and_then(|mut f| crate::pvm::scan_image(&mut f))
            .map_err(|source| {
                VmmError::Boot(boot::BootError::Open {
                    what: "kernel",
                    path: config.kernel.clone(),
                    source,
                })
            })?;
        crate::pvm::cmdline_additions(facts)
    } else {
        Vec::new()
    };
    // The terminal on stdin is the serial console's input when the serial console is
    // on stdout, else the virtio console's when that is on stdout.
    let terminal_user = if config.serial == SerialOutput::Stdio {
        Some(TerminalUser::Serial)
    } else if config.virtio_devices.iter().any(|d| d.takes_terminal()) {
        Some(TerminalUser::VirtioConsole)
    } else {
        None
    };
    // Restores the terminal when dropped, at the end of this function.
    let raw_terminal = terminal_user.and_then(|_| RawTerminal::enable());
    let terminal_user = terminal_user.filter(|_| raw_terminal.is_some());
    match terminal_user {
        Some(TerminalUser::Serial) => {
            eprint!("kiln: serial console on this terminal; Ctrl-A x quits, Ctrl-A h for help\r\n")
        }
        Some(TerminalUser::VirtioConsole) => eprint!(
            "kiln: virtio console (hvc0) on this terminal; Ctrl-A x quits, Ctrl-A h for help\r\n"
        ),
        None => {}
    }
    let result = loop {
        let outcome = boot_once(
            config,
            process_start,
            deadline,
            &output,
            &profile_params,
            pvm,
            terminal_user,
        );
        match outcome {
            Ok(VmExitStatus::Reset(source)) if config.on_reset == OnReset::Reboot => {
                eprintln!("kiln: guest reset ({source}); rebooting");
            }
            other => break other,
        }
    };
    // The serial output's last lines reach the terminal before its mode is restored.
    drop(output);
    drop(raw_terminal);
    result
}

/// Which device reads the terminal on stdin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TerminalUser {
    Serial,
    VirtioConsole,
}

pub(crate) fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

fn register_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by
        // `mem`, which outlives the VM (both are dropped together at the end of
        // boot_once, the VM first).
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(kvm_err("register guest memory"))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn boot_once(
    config: &VmConfig,
    process_start: Instant,
    deadline: Option<Instant>,
    output: &SerialWriter,
    profile_params: &[String],
    pvm: bool,
    terminal_user: Option<TerminalUser>,
) -> Result<VmExitStatus, VmmError> {
    let phase = |what: &str| {
        log::debug!(
            "start-up: {what} at {:.3} ms",
            process_start.elapsed().as_secs_f64() * 1000.0
        )
    };
    let kvm = Kvm::new().map_err(|source| VmmError::OpenKvm { source })?;
    // KVM_GET_SUPPORTED_CPUID and the model's CPUID computation take about as long
    // as creating the VM and its memory: do them side by side (each with its own
    // /dev/kvm handle), and join before the first vCPU.
    let cpu_config = config.cpu.clone();
    let vcpu_count = config.vcpus;
    let cpu_setup = std::thread::Builder::new()
        .name("cpuid".into())
        .spawn(move || -> Result<CpuSetup, VmmError> {
            let kvm = Kvm::new().map_err(|source| VmmError::OpenKvm { source })?;
            Ok(CpuSetup::prepare(&kvm, &cpu_config, vcpu_count)?)
        })
        .map_err(|e| VmmError::Device(format!("cannot start the CPUID thread: {e}")))?;
    let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
    phase("VM created");
    let mem = create_guest_memory(config.memory_bytes)?;
    register_memory(&vm, &mem)?;
    phase("guest memory registered");
    vm.set_identity_map_address(KVM_IDENTITY_MAP_START)
        .map_err(kvm_err("set identity map address"))?;
    vm.set_tss_address(KVM_TSS_START as usize)
        .map_err(kvm_err("set TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("create in-kernel irqchip"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(kvm_err("create in-kernel PIT"))?;

    let kernel = boot::load_kernel(&mem, &config.kernel, config.entry)?;
    let initrd = match &config.initrd {
        Some(path) => Some(boot::load_initrd(&mem, path, &kernel)?),
        None => None,
    };

    phase("irqchip, PIT and kernel ready");
    let control = Arc::new(
        VmControl::new(process_start).map_err(|e| VmmError::Device(format!("eventfd: {e}")))?,
    );
    let mut events: EventManager<Subscriber> =
        EventManager::new().map_err(|e| VmmError::Device(format!("event manager: {e}")))?;
    events.add_subscriber(Arc::new(Mutex::new(WakeWatcher(control.clone()))));

    let mut io_bus = Bus::new();
    let mut mmio_bus = Bus::new();
    platform::add_port_devices(
        config,
        &vm,
        &control,
        output,
        terminal_user == Some(TerminalUser::Serial),
        &mut io_bus,
        &mut events,
    )?;

    let mut alloc = VirtioMmioAllocator::default();
    for dev in &config.virtio_devices {
        let terminal = (terminal_user == Some(TerminalUser::VirtioConsole)).then_some(&control);
        device_manager::attach(
            dev,
            &mut alloc,
            &vm,
            &mem,
            &mut mmio_bus,
            &mut events,
            terminal,
        )?;
    }

    let acpi = build_tables(&AcpiConfig {
        vcpus: config.vcpus,
        virtio_mmio: alloc.acpi.clone(),
    });
    acpi.write_to(&mem)
        .map_err(|e| VmmError::Boot(boot::BootError::GuestMemory(e.to_string())))?;
    boot::regs::write_boot_tables(&mem)
        .map_err(|e| VmmError::Boot(boot::BootError::GuestMemory(e.to_string())))?;
    phase("devices and boot tables ready");
    let cpus = cpu_setup
        .join()
        .map_err(|_| VmmError::Device("the CPUID thread panicked".into()))??;
    phase("CPUID computed");
    let mut vcpus = Vec::with_capacity(config.vcpus as usize);
    for id in 0..config.vcpus {
        vcpus.push(create_vcpu(&vm, id, &cpus, kernel.entry)?);
    }
    phase("vCPUs created");
    let mut profile_params = profile_params.to_vec();
    if pvm {
        let khz = vcpus[0]
            .get_tsc_khz()
            .map_err(kvm_err("get the TSC frequency"))?;
        profile_params.push(crate::pvm::tsc_param(khz));
    }
    let cmdline = compose_cmdline(&profile_params, &alloc.cmdline_params(), &config.append);
    log::debug!("kernel command line: {cmdline}");
    boot::write_boot_info(&mem, &kernel, initrd, &cmdline, acpi.rsdp_address())?;

    install_kick_handler().map_err(|e| VmmError::Device(format!("vCPU kick signal: {e}")))?;
    let ctx = Arc::new(VcpuContext {
        io_bus: Arc::new(io_bus),
        mmio_bus: Arc::new(mmio_bus),
        control: control.clone(),
        mem: mem.clone(),
        pvm_recovery: pvm,
        process_start,
    });
    let mut threads = Vec::with_capacity(vcpus.len());
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let ctx = ctx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || run_vcpu(vcpu, id as u8, ctx))
            .map_err(|e| VmmError::Device(format!("cannot start vCPU thread: {e}")))?;
        threads.push(thread);
    }

    phase("vCPU threads started");
    let wake_on_signal = stop_signal::watch(&control.wake);
    let status = loop {
        if let Some(signum) = stop_signal::requested() {
            break Ok(VmExitStatus::Interrupted(signum));
        }
        if let Some(outcome) = control.take() {
            break match outcome {
                Outcome::Guest(GuestExit::PowerOff) => Ok(VmExitStatus::PowerOff),
                Outcome::Guest(GuestExit::Reset(source)) => Ok(VmExitStatus::Reset(source)),
                Outcome::Guest(GuestExit::DebugExit(v)) => Ok(VmExitStatus::DebugExit(v)),
                Outcome::Error(message) => Err(VmmError::Guest(message)),
                Outcome::ConsoleQuit => Ok(VmExitStatus::ConsoleQuit),
            };
        }
        let wait_ms = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    break Ok(VmExitStatus::Timeout(config.timeout.unwrap_or_default()));
                }
                (d - now).as_millis().min(i32::MAX as u128) as i32 + 1
            }
            None => -1,
        };
        if let Err(e) = events.run_with_timeout(wait_ms) {
            // A stop signal interrupts epoll_wait; the next turn reports it.
            if stop_signal::requested().is_none() {
                break Err(VmmError::Device(format!("event loop: {e}")));
            }
        }
    };
    drop(wake_on_signal);
    control.finish(Outcome::Error("VM stopped".into()));
    // Reading smaps walks every page table entry: only when someone will see it.
    let rss = log::log_enabled!(log::Level::Info)
        .then(|| crate::memory::rss_report(&mem))
        .flatten();
    if let Some(rss) = rss {
        log::info!(
            "memory: peak RSS {} KiB, guest RAM resident {} KiB, kiln itself at most {} KiB \
             (now: anonymous {} KiB of which guest {} KiB, file-backed {} KiB)",
            rss.peak_kib,
            rss.guest_kib,
            rss.non_guest_kib(),
            rss.anon_kib,
            rss.guest_kib,
            rss.file_kib
        );
    }
    let snapshots = stop_vcpus(threads);
    if let Ok(VmExitStatus::Timeout(_)) = status {
        for s in snapshots {
            log::info!("at timeout: {s}");
        }
    }
    status
}

/// Kick every vCPU thread out of KVM_RUN until it notices the VM has stopped.
/// A thread stuck for more than a second is left behind (the process is ending).
fn stop_vcpus(threads: Vec<JoinHandle<Option<VcpuSnapshot>>>) -> Vec<VcpuSnapshot> {
    let give_up = Instant::now() + Duration::from_secs(1);
    let mut snapshots = Vec::new();
    for thread in threads {
        while !thread.is_finished() && Instant::now() < give_up {
            let _ = thread.kill(kick_signal());
            std::thread::sleep(Duration::from_micros(200));
        }
        if thread.is_finished() {
            if let Ok(Some(s)) = thread.join() {
                snapshots.push(s);
            }
        } else {
            log::warn!("a vCPU thread did not stop in time");
        }
    }
    snapshots
}

/// kiln's own parameters first, then the host profile's, the devices', and the
/// user's last so they can override.
pub fn compose_cmdline(profile: &[String], devices: &[String], user: &str) -> String {
    let mut parts: Vec<&str> = vec!["console=ttyS0"];
    parts.extend(profile.iter().map(String::as_str));
    parts.extend(devices.iter().map(String::as_str));
    if !user.trim().is_empty() {
        parts.push(user.trim());
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(VmExitStatus::PowerOff.exit_code(), 0);
        assert_eq!(VmExitStatus::Reset(ResetSource::TripleFault).exit_code(), 2);
        assert_eq!(VmExitStatus::DebugExit(0x21).exit_code(), 67);
        assert_eq!(
            VmExitStatus::Timeout(Duration::from_secs(1)).exit_code(),
            124
        );
    }

    #[test]
    fn user_parameters_come_last() {
        let line = compose_cmdline(
            &["noxsave".into()],
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
            " quiet ",
        );
        assert_eq!(
            line,
            "console=ttyS0 noxsave virtio_mmio.device=4K@0xd0000000:5 quiet"
        );
    }
}
