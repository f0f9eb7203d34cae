//! `kiln run`: boot a kernel. Parses the options into a typed `VmConfig` once;
//! everything below works on typed values.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use kiln_devices::block::DiskConfig;
use kiln_devices::virtio::net::NetConfig;
use kiln_devices::virtio::rng::RateLimit;
use kiln_vmm::cpu::{CpuConfig, CustomTemplate, GuestCpu, Topology};
use kiln_vmm::device_manager::{
    ChannelSpec, ConsoleOutput, ConsoleSpec, VirtioDeviceConfig, VirtioSpec,
};
use kiln_vmm::{EntryChoice, OnReset, SerialOutput, VmConfig, VmExitStatus};

use self::values::*;
use super::parse_size;

mod values;

#[derive(clap::Args)]
pub struct Args {
    /// Kernel image: bzImage or ELF vmlinux (PVH entry used when present).
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initial ramdisk, loaded high in guest memory.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// ELF vmlinux entry: auto (PVH if the image has the note), linux64 or pvh.
    #[arg(long, value_enum, default_value = "auto")]
    pub entry: EntryArg,
    /// Extra kernel command line, after kiln's own parameters.
    #[arg(long, default_value = "")]
    pub append: String,
    /// Guest memory: bytes, or with a K/M/G suffix.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub memory: u64,
    /// vCPUs: N[,sockets=S,cores=C,threads=T] (default: N one-core sockets).
    #[arg(long, default_value = "1", value_parser = parse_cpus)]
    pub cpus: Topology,
    /// CPU model: MODEL[,+feat][,-feat][,feat=on|off][,check=none|warn|enforce]
    /// (`kiln cpu list`). Features the host lacks are cleared with a warning
    /// (check=warn) or refused (check=enforce).
    #[arg(long, default_value = "host", value_parser = parse_cpu)]
    pub cpu: CpuConfig,
    /// Firecracker-style custom CPU template (JSON), applied after the model.
    #[arg(long, value_name = "FILE")]
    pub cpu_template: Option<PathBuf>,
    /// Expose VMX/SVM to the guest (nested virtualization); refused when the host cannot nest.
    #[arg(long)]
    pub nested: bool,
    /// A virtio-blk disk:
    /// path=FILE[,format=qcow2|raw][,readonly=on][,serial=ID][,aio=threads|io_uring]
    /// [,cache=writeback|none|writethrough|directsync|unsafe][,num-queues=N]
    /// [,discard=unmap|ignore][,detect-zeroes=off|on|unmap]
    /// [,logical_block_size=B][,physical_block_size=B]
    /// (FILE may be a block device, an LVM volume say, as a raw disk of its size.
    /// aio, unless given: io_uring where the host allows it, for raw images and for a
    /// qcow2 image's own data clusters (reads; with cache=none, writes too); I/O
    /// threads for the rest. cache=none bypasses the host page cache (O_DIRECT) for the
    /// image and its backing files, as QEMU's does; requests direct I/O cannot take use
    /// the page cache.
    /// cache=writethrough starts the guest's disk cache off (every write synced until
    /// the guest turns it on); directsync is none and writethrough. cache=unsafe
    /// answers guest flushes without syncing: faster builds, lost on a host crash. With
    /// cache=writeback the guest may switch to writethrough, as with QEMU's config-wce:
    /// /sys/block/vdX/cache_type in Linux. num-queues: request queues, 1 to 64;
    /// Linux uses up to one per vCPU. discard=ignore keeps the image's space allocated
    /// (discards succeed and do nothing). detect-zeroes stores guest writes of zeroes
    /// as write-zeroes; unmap frees their space, so zeroing free space in the guest
    /// shrinks the image). logical_block_size (512 to 4096, a power of two) is the
    /// smallest unit the guest addresses; physical_block_size (up to 2M, default the
    /// logical size) the unit it should write whole. 4096 for both makes a 4Kn disk;
    /// its size must then be whole 4 KiB blocks.
    /// Repeatable; the guest sees them as vda, vdb, ... in order.
    #[arg(long = "disk", value_name = "path=FILE,...", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,
    /// A virtio-console (guest /dev/hvc0): virtio (to stdout; with --serial other than
    /// stdio, input from the terminal, Ctrl-A x quits), virtio,file=PATH or
    /// virtio,socket=PATH (connects to a listening UNIX socket, input from it too;
    /// with ,reconnect-ms=MS it may start without the listener and connects again
    /// every MS milliseconds while it is gone, as QEMU's reconnect-ms); with
    /// ,server=on kiln listens there instead and serves one client at a time
    /// (output is dropped while none is connected). An output that reads slowly makes
    /// the guest wait, never the other devices; a socket client that takes nothing for
    /// 5 s is dropped, and stdout or a file that takes nothing for 5 s is skipped until
    /// it takes data again.
    /// ,size=COLSxROWS gives the guest a terminal size; a console on a terminal's
    /// stdout gives that terminal's, kept current as it is resized.
    #[arg(long, value_parser = parse_console)]
    pub console: Option<ConsoleSpec>,
    /// A named virtio-serial port: name=NAME,socket=PATH. kiln listens on PATH and
    /// serves one client at a time; with ,server=off it connects to a listener there
    /// instead, and the port stays closed once that hangs up, unless ,reconnect-ms=MS
    /// is given: then kiln starts without the listener if need be, and connects again
    /// every MS milliseconds while it is gone (as QEMU's reconnect-ms). The guest sees
    /// /dev/virtio-ports/NAME (with udev), and /sys/class/virtio-ports/*/name. A guest
    /// program writing to it waits for the client to read, as long as it takes. For
    /// agents: name=org.qemu.guest_agent.0 for qemu-guest-agent. Repeatable, up to 31;
    /// all go on one virtio-serial device.
    #[arg(
        long = "channel",
        value_name = "name=NAME,socket=PATH[,server=off[,reconnect-ms=MS]]",
        value_parser = parse_channel
    )]
    pub channels: Vec<ChannelSpec>,
    /// A virtio-net card: user[,hostfwd=tcp:HOSTPORT-:GUESTPORT]... (passt),
    /// tap=NAME[,create=on] or none; each may end with ,mac=xx:xx:xx:xx:xx:xx.
    /// Repeatable, one card each (eth0, eth1, ...). Without --net: user.
    #[arg(long = "net", value_name = "user|tap=NAME|none", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,
    /// Leave out the virtio-rng device (present by default, fed from getrandom).
    #[arg(long)]
    pub no_rng: bool,
    /// Cap the entropy the guest may take from virtio-rng: max-bytes=N[,period=T]
    /// (period 1s unless given; a unit is required, as in 500ms), like QEMU's
    /// virtio-rng max-bytes and period. Requests past the cap wait for the next period.
    #[arg(
        long,
        value_name = "max-bytes=N[,period=T]",
        value_parser = parse_rng,
        conflicts_with = "no_rng"
    )]
    pub rng: Option<RateLimit>,
    /// Serial console (COM1, the guest's ttyS0): stdio, file=PATH or none. On stdio with
    /// a terminal on stdin it takes the keyboard (Ctrl-A x quits, Ctrl-A h helps). An
    /// output that takes nothing for 5 s (a paused pager) is skipped, its bytes dropped
    /// and counted, until it takes data again: it holds the guest 5 s at most.
    #[arg(long, default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialOutput,
    /// Stop the guest after this long (e.g. 30s, 500ms, 2m) and exit with 124.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// On a guest reset: exit (code 2) or reboot.
    #[arg(long, value_enum, default_value = "exit")]
    pub on_reset: OnResetArg,
    /// I/O port of an isa-debug-exit-like device: a write of V exits with (V << 1) | 1.
    #[arg(long, value_parser = parse_port)]
    pub debug_exit: Option<u16>,
    /// Log the time from kiln's start to the guest's boot-timer write (port 0x440, value 123).
    #[arg(long)]
    pub boot_timer: bool,
    /// Do not apply host compatibility profiles (PVM).
    #[arg(long)]
    pub no_host_quirks: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum EntryArg {
    Auto,
    Linux64,
    Pvh,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OnResetArg {
    Exit,
    Reboot,
}

impl Args {
    /// The virtio devices, in attachment order: disks (vda, vdb, ...), console,
    /// rng, NICs (eth0, ...), the channels' virtio-serial device.
    fn virtio_specs(&self) -> Vec<VirtioSpec> {
        let mut specs: Vec<VirtioSpec> = self.disks.iter().cloned().map(VirtioSpec::Disk).collect();
        specs.extend(self.console.clone().map(VirtioSpec::Console));
        if !self.no_rng {
            specs.push(VirtioSpec::Rng(self.rng));
        }
        let default_net = [NetConfig::default()];
        let nets = if self.nets.is_empty() {
            &default_net[..]
        } else {
            &self.nets[..]
        };
        specs.extend(
            nets.iter()
                .filter(|n| **n != NetConfig::None)
                .cloned()
                .map(VirtioSpec::Net),
        );
        if !self.channels.is_empty() {
            specs.push(VirtioSpec::Channels(self.channels.clone()));
        }
        specs
    }

    /// Each socket kiln listens on is given once: a second listener on the same path
    /// would be told "another process is listening" about kiln itself.
    fn check_sockets_distinct(&self) -> anyhow::Result<()> {
        let console = self.console.iter().filter_map(|c| match &c.output {
            ConsoleOutput::SocketServer(path) => Some(("--console".to_string(), path)),
            _ => None,
        });
        // Channels that connect (server=off) are clients: several may share a path.
        let channels = self
            .channels
            .iter()
            .filter(|c| c.server)
            .map(|c| (format!("--channel {}", c.name), &c.socket));
        let mut seen: Vec<(String, &PathBuf)> = Vec::new();
        for (owner, path) in console.chain(channels) {
            if let Some((first, _)) = seen.iter().find(|(_, p)| *p == path) {
                anyhow::bail!("{owner}: socket {} is also {first}'s", path.display());
            }
            seen.push((owner, path));
        }
        Ok(())
    }

    /// Everything the VM needs, with host files (images, templates) opened and
    /// checked, so bad input fails here, before the VM is built.
    fn into_config(self) -> anyhow::Result<VmConfig> {
        self.check_sockets_distinct()?;
        let template = match &self.cpu_template {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--cpu-template {}", path.display()))?;
                Some(
                    CustomTemplate::from_json(&text)
                        .with_context(|| format!("--cpu-template {}", path.display()))?,
                )
            }
            None => None,
        };
        let mut virtio_devices = Vec::new();
        for spec in self.virtio_specs() {
            virtio_devices.push(VirtioDeviceConfig::from_spec(&spec)?);
        }
        let mut config = VmConfig::new(self.kernel);
        config.initrd = self.initrd;
        config.entry = match self.entry {
            EntryArg::Auto => EntryChoice::Auto,
            EntryArg::Linux64 => EntryChoice::Linux64,
            EntryArg::Pvh => EntryChoice::Pvh,
        };
        config.append = self.append;
        config.memory_bytes = self.memory;
        // parse_cpus keeps the count within 1..=254.
        config.vcpus = self.cpus.cpus as u8;
        config.cpu = GuestCpu {
            config: self.cpu,
            template,
            topology: Some(self.cpus),
            nested: self.nested,
        };
        config.virtio_devices = virtio_devices;
        config.serial = self.serial;
        config.timeout = self.timeout;
        config.on_reset = match self.on_reset {
            OnResetArg::Exit => OnReset::Exit,
            OnResetArg::Reboot => OnReset::Reboot,
        };
        config.debug_exit_port = self.debug_exit;
        config.boot_timer = self.boot_timer;
        config.host_quirks = !self.no_host_quirks;
        Ok(config)
    }
}

/// `start` is kiln's clock for "since process start", taken first thing in main.
pub fn exec(args: Args, start: Instant) -> anyhow::Result<ExitCode> {
    log::debug!(
        "start-up: arguments parsed at {:.3} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    run_config(args.into_config()?, start)
}

/// Run a VM and turn its outcome into kiln's exit code and message.
pub fn run_config(config: VmConfig, start: Instant) -> anyhow::Result<ExitCode> {
    let status = kiln_vmm::run(&config, start)?;
    match status {
        VmExitStatus::PowerOff => {}
        VmExitStatus::Reset(source) => eprintln!("kiln: guest reset ({source})"),
        VmExitStatus::DebugExit(v) => log::info!("guest wrote {v:#x} to the debug-exit port"),
        VmExitStatus::Timeout(t) => eprintln!("kiln: timeout: guest still running after {t:?}"),
        VmExitStatus::ConsoleQuit => {
            eprintln!("kiln: quit from the console (Ctrl-A x); the guest did not shut down")
        }
        VmExitStatus::Interrupted(signum) => {
            eprintln!("kiln: stopped by signal {signum}; the guest did not shut down")
        }
    }
    Ok(ExitCode::from(status.exit_code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs_for(extra: &[&str]) -> Vec<VirtioSpec> {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: Args,
        }
        let argv = [&["kiln", "--kernel", "/k"][..], extra].concat();
        Cli::try_parse_from(argv).unwrap().run.virtio_specs()
    }

    #[test]
    fn net_defaults_to_user_repeats_and_none_drops_it() {
        let user = VirtioSpec::Net(NetConfig::default());
        assert_eq!(specs_for(&[]), vec![VirtioSpec::Rng(None), user.clone()]);
        assert_eq!(specs_for(&["--net", "none", "--no-rng"]), vec![]);
        let specs = specs_for(&["--net", "user,hostfwd=tcp:2222-:22", "--net", "tap=t0"]);
        assert_eq!(specs.len(), 3, "{specs:?}");
        assert!(matches!(&specs[1], VirtioSpec::Net(NetConfig::Nic { .. })));
        assert_ne!(specs[1], user, "hostfwd kept");
        assert!(parse_net("slirp").unwrap_err().contains("slirp"));
        assert!(parse_net("user,hostfwd=tcp:1-2").is_err());
    }
}
