//! virtio-mmio plumbing: each device gets an MMIO window and an IRQ, an
//! ioeventfd per queue on QueueNotify, an irqfd, a DSDT entry, a
//! `virtio_mmio.device=` kernel parameter, and its event subscriber in the event
//! manager. Devices come in through [`VirtioDeviceConfig`] in `VmConfig`, so new
//! device kinds attach without touching the attach code.
//!
//! [`VirtioSpec`] is the typed form of the CLI's device options (`--disk`,
//! `--console virtio`, `--net`, rng); [`VirtioDeviceConfig::from_spec`] opens their
//! host side (disk images, files, sockets) once, before the VM is built, so a bad
//! path fails early with an error naming it. A new device kind is one variant and
//! one match arm there. A NIC's backend (passt, TAP) is opened by the device
//! factory instead, so a rebuilt device after a guest reboot gets a fresh one and
//! dropping the device stops passt.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kiln_devices::block::config::Aio;
use kiln_devices::block::{open_disk, DiskBackend, DiskConfig, DiskError};
use kiln_devices::virtio::block::{uring, Block};
use kiln_devices::virtio::console::{
    connect_nonblocking, Console, ConsoleInput, ConsoleSize, SizeSource,
};
use kiln_devices::virtio::mmio::{MmioTransport, MMIO_REGION_SIZE, NOTIFY_REG_OFFSET};
use kiln_devices::virtio::net::{Net, NetConfig};
use kiln_devices::virtio::rng::{RateLimit, Rng};
use kiln_devices::virtio::serial::{check_port_names, PortSocket, PortsError, SerialPorts};
use kiln_devices::virtio::VirtioDevice;
use kvm_ioctls::{IoEventAddress, VmFd};

use crate::acpi::VirtioMmioAcpi;
use crate::bus::Bus;
use crate::console_socket::ListeningSocket;
use crate::console_stdin::EscapedInput;
use crate::control::VmControl;
use crate::layout::{IOAPIC_LAST_PIN, VIRTIO_IRQ_START, VIRTIO_MMIO_END, VIRTIO_MMIO_START};
use crate::memory::GuestMemory;
use crate::terminal_size::following_terminal;

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// One device instance, seen both as a virtio device (for the transport) and as
/// an event subscriber (for its queue work).
pub struct VirtioHandles {
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    pub subscriber: Subscriber,
}

/// Builds a device; the console on stdout is given the VM's control when the terminal
/// on stdin is its input (see [`VirtioDeviceConfig::takes_terminal`]).
type Factory = dyn Fn(Option<&Arc<VmControl>>) -> Result<VirtioHandles, String> + Send + Sync;

/// A virtio device to attach. Holds a factory, so a guest reboot gets a fresh
/// device.
#[derive(Clone)]
pub struct VirtioDeviceConfig {
    /// For messages, e.g. "virtio-blk disk.qcow2".
    pub name: String,
    factory: Arc<Factory>,
    takes_terminal: bool,
}

impl std::fmt::Debug for VirtioDeviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioDeviceConfig")
            .field("name", &self.name)
            .finish()
    }
}

impl VirtioDeviceConfig {
    /// `make` builds the device model (open its backend, ...).
    pub fn new<T, F>(name: impl Into<String>, make: F) -> Self
    where
        T: VirtioDevice + MutEventSubscriber + Send + 'static,
        F: Fn() -> Result<T, String> + Send + Sync + 'static,
    {
        Self::with_factory(name, false, move |_| make())
    }

    /// Like [`VirtioDeviceConfig::new`], for a device that takes the terminal on stdin
    /// as input when it is offered (`make` then gets the VM's control, for the
    /// escape commands).
    fn taking_terminal<T, F>(name: impl Into<String>, make: F) -> Self
    where
        T: VirtioDevice + MutEventSubscriber + Send + 'static,
        F: Fn(Option<&Arc<VmControl>>) -> Result<T, String> + Send + Sync + 'static,
    {
        Self::with_factory(name, true, make)
    }

    fn with_factory<T, F>(name: impl Into<String>, takes_terminal: bool, make: F) -> Self
    where
        T: VirtioDevice + MutEventSubscriber + Send + 'static,
        F: Fn(Option<&Arc<VmControl>>) -> Result<T, String> + Send + Sync + 'static,
    {
        let factory = move |terminal: Option<&Arc<VmControl>>| {
            let dev = Arc::new(Mutex::new(make(terminal)?));
            Ok(VirtioHandles {
                device: dev.clone(),
                subscriber: dev,
            })
        };
        Self {
            name: name.into(),
            factory: Arc::new(factory),
            takes_terminal,
        }
    }

    pub fn build(&self) -> Result<VirtioHandles, String> {
        self.build_with(None)
    }

    /// Build the device; with `terminal`, a device that takes the terminal on stdin
    /// gets it as input.
    pub(crate) fn build_with(
        &self,
        terminal: Option<&Arc<VmControl>>,
    ) -> Result<VirtioHandles, String> {
        (self.factory)(terminal.filter(|_| self.takes_terminal))
    }

    /// Whether the device can take the terminal on stdin as input: a console on stdout.
    pub fn takes_terminal(&self) -> bool {
        self.takes_terminal
    }
}

/// Where the virtio-console port's output goes (guest `/dev/hvc0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleOutput {
    /// kiln's stdout; input from the terminal on stdin when the serial console is not
    /// on it.
    Stdout,
    /// This file, created or truncated; no input.
    File(PathBuf),
    /// Connect to a listening UNIX socket: output to it, input from it.
    Socket(PathBuf),
    /// Listen on this UNIX socket (`server=on`) and serve one client at a time;
    /// output is dropped while no client is connected.
    SocketServer(PathBuf),
    /// Connect to a listening UNIX socket, and again `every` after it hangs up or a
    /// try fails (`reconnect-ms`); it need not listen yet when the VM starts. Output
    /// is dropped while not connected.
    SocketReconnect { path: PathBuf, every: Duration },
}

/// The virtio-console as the user asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSpec {
    pub output: ConsoleOutput,
    /// Columns and rows to offer the guest (VIRTIO_CONSOLE_F_SIZE). Without one, a
    /// console on stdout offers the terminal's size, kept current on SIGWINCH, and
    /// other consoles offer none.
    pub size: Option<ConsoleSize>,
}

impl ConsoleSpec {
    /// A console to `output`, sized as the default says.
    pub fn new(output: ConsoleOutput) -> Self {
        ConsoleSpec { output, size: None }
    }
}

/// A named virtio-serial port (`--channel name=NAME,socket=PATH[,server=off]`): kiln
/// listens on PATH and serves one client at a time, or with `server: false` connects
/// to a listener there; the guest sees /dev/virtio-ports/NAME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSpec {
    pub name: String,
    pub socket: PathBuf,
    pub server: bool,
    /// With `server: false`: connect again this long after the listener hangs up or a
    /// try fails, and start without one (QEMU's `reconnect-ms`). Without it, the
    /// listener must be there at start and the port stays closed once it hangs up.
    pub reconnect: Option<Duration>,
}

/// A virtio device as the user asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VirtioSpec {
    Disk(DiskConfig),
    Console(ConsoleSpec),
    /// A NIC; `NetConfig::None` (`--net none`) attaches nothing and is not a valid spec.
    Net(NetConfig),
    /// virtio-rng, with an optional cap (`--rng max-bytes=N,period=T`).
    Rng(Option<RateLimit>),
    /// One virtio-serial device carrying these ports.
    Channels(Vec<ChannelSpec>),
}

/// Why a device's host side could not be opened. The inner error is part of the
/// message, not a `source`: disk errors already carry their own causes in their text.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("--disk {}: {error}", path.display())]
    Disk { path: PathBuf, error: DiskError },
    #[error("virtio-console: {}: {error}", path.display())]
    Console {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("--disk {}: aio=io_uring: {why}", path.display())]
    Aio { path: PathBuf, why: String },
    #[error(
        "--disk {}: the disk's {size} bytes are not whole {logical}-byte logical blocks \
         (resize the image to a multiple of {logical})",
        path.display()
    )]
    PartialBlock {
        path: PathBuf,
        size: u64,
        logical: u32,
    },
    #[error("--net: {0}")]
    Net(String),
    #[error("--channel: {0}")]
    Channels(#[from] PortsError),
    #[error("--channel {name}: {}: {error}", socket.display())]
    ChannelSocket {
        name: String,
        socket: PathBuf,
        error: std::io::Error,
    },
}

/// Whether virtio-blk should try io_uring on `disk`. By default yes (it falls back to
/// I/O threads where it cannot); an explicit `aio=io_uring` must be possible, so it
/// fails here, before the guest starts, rather than fall back quietly.
fn io_uring_wanted(cfg: &DiskConfig, disk: &dyn DiskBackend) -> Result<bool, SpecError> {
    let refuse = |why: String| SpecError::Aio {
        path: cfg.path.clone(),
        why,
    };
    match cfg.aio {
        None => Ok(true),
        Some(Aio::Threads) => Ok(false),
        Some(Aio::IoUring) if !disk.has_read_extents() => Err(refuse(format!(
            "needs an image whose data kiln can reach in the file (raw, or qcow2 without \
             an external data file); this {} image has none (use aio=threads)",
            disk.format()
        ))),
        Some(Aio::IoUring) => uring::probe().map(|()| true).map_err(|e| {
            refuse(format!(
                "io_uring is not available here: {e} (use aio=threads)"
            ))
        }),
    }
}

impl VirtioDeviceConfig {
    /// Open the host side of `spec` (disk image, output file, socket) and return
    /// the device to attach. The backend is opened once: a guest reboot gets a
    /// fresh device model over the same open image.
    pub fn from_spec(spec: &VirtioSpec) -> Result<Self, SpecError> {
        match spec {
            VirtioSpec::Disk(cfg) => {
                let disk: Arc<dyn DiskBackend> =
                    open_disk(cfg).map_err(|error| SpecError::Disk {
                        path: cfg.path.clone(),
                        error,
                    })?;
                let io_uring = io_uring_wanted(cfg, disk.as_ref())?;
                let sizes = cfg.block_sizes;
                // With 512-byte blocks a partial last sector is left out of the
                // capacity, as QEMU does; larger blocks must be whole.
                if sizes.logical > 512 && disk.size() % u64::from(sizes.logical) != 0 {
                    return Err(SpecError::PartialBlock {
                        path: cfg.path.clone(),
                        size: disk.size(),
                        logical: sizes.logical,
                    });
                }
                let serial = cfg.serial.clone();
                let cache = cfg.cache;
                let (discard, detect_zeroes) = (cfg.discard, cfg.detect_zeroes);
                let num_queues = cfg.num_queues;
                let name = format!("virtio-blk {}", cfg.path.display());
                Ok(Self::new(name, move || {
                    let mut blk =
                        Block::new(disk.clone(), serial.as_deref()).map_err(|e| e.to_string())?;
                    blk.set_io_uring(io_uring);
                    blk.set_cache(cache);
                    blk.set_discard(discard);
                    blk.set_detect_zeroes(detect_zeroes);
                    blk.set_num_queues(num_queues).map_err(|e| e.to_string())?;
                    blk.set_block_sizes(sizes);
                    Ok(blk)
                }))
            }
            VirtioSpec::Console(out) => console(out),
            VirtioSpec::Net(cfg) => net(cfg),
            VirtioSpec::Rng(limit) => {
                let limit = *limit;
                Ok(Self::new("virtio-rng", move || {
                    let mut rng = Rng::new().map_err(|e| e.to_string())?;
                    if let Some(limit) = limit {
                        rng.set_rate_limit(limit).map_err(|e| e.to_string())?;
                    }
                    Ok(rng)
                }))
            }
            VirtioSpec::Channels(channels) => serial_ports(channels),
        }
    }
}

fn net(cfg: &NetConfig) -> Result<VirtioDeviceConfig, SpecError> {
    if *cfg == NetConfig::None {
        return Err(SpecError::Net("`none` asks for no network card".into()));
    }
    // One MAC for the VM's whole life: a device rebuilt on reboot keeps it.
    let cfg = cfg
        .clone()
        .with_fixed_mac()
        .map_err(|e| SpecError::Net(format!("cannot pick a random MAC address: {e}")))?;
    Ok(VirtioDeviceConfig::new("virtio-net", move || {
        Net::from_config(&cfg)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no network card configured".to_string())
    }))
}

/// A channel's host socket, set up before the guest starts.
enum ChannelSocket {
    Listening(ListeningSocket),
    Connected(UnixStream),
    Reconnecting {
        path: PathBuf,
        every: Duration,
        first: Option<UnixStream>,
    },
}

/// A channel's socket, bound or connected now so that a bad path fails before the
/// guest starts. A reconnecting one may start without a listener (as QEMU's do) but
/// not with a path no socket can have.
fn channel_socket(c: &ChannelSpec) -> std::io::Result<ChannelSocket> {
    match (c.server, c.reconnect) {
        (true, _) => ListeningSocket::bind(&c.socket).map(ChannelSocket::Listening),
        (false, None) => UnixStream::connect(&c.socket).map(ChannelSocket::Connected),
        (false, Some(every)) => Ok(ChannelSocket::Reconnecting {
            path: c.socket.clone(),
            every,
            first: first_connection(&c.socket, &format!("--channel {}", c.name), every)?,
        }),
    }
}

/// The first connection of a socket that reconnects: `None` when nothing listens there
/// yet (the device keeps trying), an error when no socket can be there (a path too
/// long for one).
fn first_connection(
    path: &Path,
    owner: &str,
    every: Duration,
) -> std::io::Result<Option<UnixStream>> {
    match connect_nonblocking(path) {
        Ok(stream) => Ok(Some(stream)),
        Err(e) if e.kind() == ErrorKind::InvalidInput => Err(e),
        Err(e) => {
            log::info!(
                "{owner}: {}: {e}; connecting every {every:?}",
                path.display()
            );
            Ok(None)
        }
    }
}

/// The sockets of every channel, bound (or connected) now so that a bad name or path
/// fails before the guest starts (and removed when the configuration goes).
fn serial_ports(channels: &[ChannelSpec]) -> Result<VirtioDeviceConfig, SpecError> {
    check_port_names(channels.iter().map(|c| c.name.as_str()))?;
    let mut sockets = Vec::with_capacity(channels.len());
    for c in channels {
        let socket = channel_socket(c).map_err(|error| SpecError::ChannelSocket {
            name: c.name.clone(),
            socket: c.socket.clone(),
            error,
        })?;
        sockets.push((c.name.clone(), socket));
    }
    Ok(VirtioDeviceConfig::new("virtio-serial", move || {
        let ports = sockets
            .iter()
            .map(|(name, socket)| {
                let socket = match socket {
                    ChannelSocket::Listening(l) => PortSocket::Listening(l.listener()?),
                    ChannelSocket::Connected(s) => PortSocket::Connected(s.try_clone()?),
                    ChannelSocket::Reconnecting { path, every, first } => {
                        PortSocket::Reconnecting {
                            path: path.clone(),
                            every: *every,
                            first: first.as_ref().map(UnixStream::try_clone).transpose()?,
                        }
                    }
                };
                Ok((name.clone(), socket))
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        SerialPorts::new(ports).map_err(|e| e.to_string())
    }))
}

fn console(spec: &ConsoleSpec) -> Result<VirtioDeviceConfig, SpecError> {
    let err = |path: &PathBuf| {
        let path = path.clone();
        move |error| SpecError::Console { path, error }
    };
    let size = spec.size;
    let on_stdout = spec.output == ConsoleOutput::Stdout;
    let sized = move |console: std::io::Result<Console>| -> Result<Console, String> {
        let console = console.map_err(|e| e.to_string())?;
        let source = match size {
            Some(size) => Some(SizeSource::fixed(size)),
            None if on_stdout => following_terminal(libc::STDOUT_FILENO).transpose(),
            None => None,
        };
        match source {
            Some(source) => Ok(console.with_size(source.map_err(|e| e.to_string())?)),
            None => Ok(console),
        }
    };
    let new = |make: Box<dyn Fn() -> std::io::Result<Console> + Send + Sync>| {
        VirtioDeviceConfig::new("virtio-console", move || sized(make()))
    };
    match &spec.output {
        ConsoleOutput::Stdout => Ok(VirtioDeviceConfig::taking_terminal(
            "virtio-console",
            move |terminal| {
                let input = terminal.map(|control| -> Box<dyn ConsoleInput> {
                    Box::new(EscapedInput::new(std::io::stdin(), control.clone()))
                });
                sized(Console::relayed(Box::new(std::io::stdout()), input))
            },
        )),
        ConsoleOutput::File(path) => {
            let file = File::create(path).map_err(err(path))?;
            Ok(new(Box::new(move || {
                Console::relayed(Box::new(file.try_clone()?), None)
            })))
        }
        ConsoleOutput::Socket(path) => {
            let stream = UnixStream::connect(path).map_err(err(path))?;
            Ok(new(Box::new(move || {
                Console::connected(stream.try_clone()?)
            })))
        }
        ConsoleOutput::SocketReconnect { path, every } => {
            let first = first_connection(path, "--console", *every).map_err(err(path))?;
            let (path, every) = (path.clone(), *every);
            Ok(new(Box::new(move || {
                let first = first.as_ref().map(UnixStream::try_clone).transpose()?;
                Console::reconnecting(path.clone(), every, first)
            })))
        }
        ConsoleOutput::SocketServer(path) => {
            let socket = ListeningSocket::bind(path).map_err(err(path))?;
            Ok(new(Box::new(move || {
                Console::listening(socket.listener()?)
            })))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("{0}: cannot create device: {1}")]
    Build(String, String),
    #[error("{0}: {1}")]
    Transport(String, kiln_devices::virtio::mmio::MmioError),
    #[error("no virtio-mmio window or IRQ left for {0}")]
    Exhausted(String),
    #[error("{0}: cannot register {1} with KVM: {2}")]
    Kvm(String, &'static str, kvm_ioctls::Error),
    #[error("{0}: {1}")]
    Bus(String, crate::bus::BusError),
    #[error("{0}: cannot add its event handler: {1}")]
    EventManager(String, event_manager::Error),
}

/// Window and IRQ allocation, plus what the guest is told.
pub struct VirtioMmioAllocator {
    next_base: u64,
    next_irq: u32,
    /// DSDT entries for the attached devices.
    pub acpi: Vec<VirtioMmioAcpi>,
}

impl Default for VirtioMmioAllocator {
    fn default() -> Self {
        Self {
            next_base: VIRTIO_MMIO_START,
            next_irq: VIRTIO_IRQ_START,
            acpi: Vec::new(),
        }
    }
}

impl VirtioMmioAllocator {
    /// The next window and IRQ, in attachment order.
    pub fn allocate(&mut self) -> Option<VirtioMmioAcpi> {
        if self.next_base + MMIO_REGION_SIZE > VIRTIO_MMIO_END || self.next_irq > IOAPIC_LAST_PIN {
            return None;
        }
        let slot = VirtioMmioAcpi {
            base: self.next_base,
            size: MMIO_REGION_SIZE,
            irq: self.next_irq,
        };
        self.next_base += MMIO_REGION_SIZE;
        self.next_irq += 1;
        self.acpi.push(slot);
        Some(slot)
    }

    /// Kernel parameters announcing the devices (for kernels without ACPI).
    pub fn cmdline_params(&self) -> Vec<String> {
        self.acpi
            .iter()
            .map(|d| format!("virtio_mmio.device={}@{:#x}:{}", d.size, d.base, d.irq))
            .collect()
    }
}

/// Attach one device: transport on the MMIO bus, ioeventfds, irqfd, subscriber. With
/// `terminal`, a device that takes the terminal on stdin (see
/// [`VirtioDeviceConfig::takes_terminal`]) gets it as input.
pub fn attach(
    config: &VirtioDeviceConfig,
    alloc: &mut VirtioMmioAllocator,
    vm: &VmFd,
    mem: &GuestMemory,
    mmio_bus: &mut Bus,
    events: &mut EventManager<Subscriber>,
    terminal: Option<&Arc<VmControl>>,
) -> Result<VirtioMmioAcpi, DeviceManagerError> {
    let name = &config.name;
    let handles = config
        .build_with(terminal)
        .map_err(|e| DeviceManagerError::Build(name.clone(), e))?;
    let transport = MmioTransport::new(mem.clone(), handles.device)
        .map_err(|e| DeviceManagerError::Transport(name.clone(), e))?;
    let slot = alloc
        .allocate()
        .ok_or_else(|| DeviceManagerError::Exhausted(name.clone()))?;
    let notify = IoEventAddress::Mmio(slot.base + NOTIFY_REG_OFFSET);
    for (index, event) in transport.queue_events().iter().enumerate() {
        vm.register_ioevent(event, &notify, index as u32)
            .map_err(|e| DeviceManagerError::Kvm(name.clone(), "queue notify ioeventfd", e))?;
    }
    vm.register_irqfd(transport.irq_event(), slot.irq)
        .map_err(|e| DeviceManagerError::Kvm(name.clone(), "irqfd", e))?;
    mmio_bus
        .insert(slot.base, slot.size, Arc::new(Mutex::new(transport)))
        .map_err(|e| DeviceManagerError::Bus(name.clone(), e))?;
    events.add_subscriber(handles.subscriber);
    log::debug!("{name}: virtio-mmio at {:#x}, IRQ {}", slot.base, slot.irq);
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_irqs_are_allocated_in_order_skipping_com1() {
        let mut alloc = VirtioMmioAllocator::default();
        let a = alloc.allocate().unwrap();
        let b = alloc.allocate().unwrap();
        assert_eq!((a.base, a.irq), (VIRTIO_MMIO_START, 5));
        assert_eq!((b.base, b.irq), (VIRTIO_MMIO_START + MMIO_REGION_SIZE, 6));
        assert_eq!(
            alloc.cmdline_params()[1],
            format!("virtio_mmio.device={}@{:#x}:6", MMIO_REGION_SIZE, b.base)
        );
        // IRQs 5..=23 give 19 devices at most.
        for _ in 2..19 {
            assert!(alloc.allocate().is_some());
        }
        assert!(alloc.allocate().is_none());
    }

    #[test]
    fn specs_open_their_host_side_once_and_name_bad_paths() {
        let dir = std::env::temp_dir().join(format!("kiln-dm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("console.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let console = VirtioDeviceConfig::from_spec(&VirtioSpec::Console(ConsoleSpec::new(
            ConsoleOutput::Socket(sock.clone()),
        )))
        .unwrap();
        // Each build (first boot, reboot) gets its own device over the same stream.
        let first = console.build().unwrap();
        let second = console.build().unwrap();
        assert_eq!(first.device.lock().unwrap().device_type(), 3);
        assert_eq!(second.device.lock().unwrap().device_type(), 3);

        let missing = dir.join("no.sock");
        let err = VirtioDeviceConfig::from_spec(&VirtioSpec::Console(ConsoleSpec::new(
            ConsoleOutput::Socket(missing.clone()),
        )))
        .unwrap_err();
        assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
        // Reconnecting: nobody need listen yet, but the path must be one a socket can
        // have.
        let every = Duration::from_millis(100);
        let later = |path: PathBuf| {
            VirtioDeviceConfig::from_spec(&VirtioSpec::Console(ConsoleSpec::new(
                ConsoleOutput::SocketReconnect { path, every },
            )))
        };
        let console = later(missing.clone()).unwrap();
        assert_eq!(
            console
                .build()
                .unwrap()
                .device
                .lock()
                .unwrap()
                .device_type(),
            3
        );
        let long = dir.join("x".repeat(120));
        let err = later(long.clone()).unwrap_err();
        assert!(err.to_string().contains(long.to_str().unwrap()), "{err}");

        let disk = DiskConfig::new(dir.join("absent.qcow2"));
        let err = VirtioDeviceConfig::from_spec(&VirtioSpec::Disk(disk)).unwrap_err();
        assert!(err.to_string().starts_with("--disk "), "{err}");
        assert!(err.to_string().contains("absent.qcow2"), "{err}");

        let raw = dir.join("disk.raw");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        let disk = DiskConfig {
            readonly: true,
            serial: Some("s1".into()),
            ..DiskConfig::new(raw)
        };
        let blk = VirtioDeviceConfig::from_spec(&VirtioSpec::Disk(disk.clone())).unwrap();
        assert_eq!(blk.build().unwrap().device.lock().unwrap().device_type(), 2);
        // What each aio= asks of virtio-blk on a raw image (io_uring is tried by default).
        let raw_disk = open_disk(&disk).unwrap();
        for (aio, ring) in [
            (None, true),
            (Some(Aio::Threads), false),
            (Some(Aio::IoUring), true),
        ] {
            let cfg = DiskConfig {
                aio,
                ..disk.clone()
            };
            assert_eq!(
                io_uring_wanted(&cfg, raw_disk.as_ref()).unwrap(),
                ring,
                "{aio:?}"
            );
            VirtioDeviceConfig::from_spec(&VirtioSpec::Disk(cfg)).unwrap();
        }
        // io_uring reaches a qcow2 image's own data clusters, so it may be asked for...
        let qcow2 = dir.join("disk.qcow2");
        kiln_devices::block::create::create_image(
            &qcow2,
            &kiln_devices::block::create::CreateOptions::new(
                kiln_devices::block::ImageFormat::Qcow2,
                Some(1 << 20),
            ),
        )
        .unwrap();
        let cfg = DiskConfig {
            aio: Some(Aio::IoUring),
            ..DiskConfig::new(qcow2)
        };
        let disk = open_disk(&cfg).unwrap();
        assert!(io_uring_wanted(&cfg, disk.as_ref()).unwrap());
        drop(disk);
        VirtioDeviceConfig::from_spec(&VirtioSpec::Disk(cfg)).unwrap();
        // ...but not with an external data file, whose data kiln reads only through
        // imago: refused before the guest starts.
        let external = dir.join("external.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "data_file=external.raw",
            ])
            .arg(&external)
            .arg("1M")
            .current_dir(&dir)
            .status()
            .expect("qemu-img (qemu-utils) is needed by this test");
        assert!(made.success());
        let cfg = DiskConfig {
            aio: Some(Aio::IoUring),
            ..DiskConfig::new(external)
        };
        let err = VirtioDeviceConfig::from_spec(&VirtioSpec::Disk(cfg)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("aio=io_uring: needs an image whose data kiln can reach in the file")
                && msg.contains("this qcow2 image has none"),
            "{msg}"
        );
        let rng = VirtioDeviceConfig::from_spec(&VirtioSpec::Rng(None)).unwrap();
        assert_eq!(rng.build().unwrap().device.lock().unwrap().device_type(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn explicit_io_uring_is_refused_where_the_host_denies_it() {
        let dir = std::env::temp_dir().join(format!("kiln-dm-uring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("disk.raw");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        let cfg = DiskConfig {
            aio: Some(Aio::IoUring),
            ..DiskConfig::new(raw)
        };
        let results = std::thread::spawn(move || {
            // As a seccomp profile without io_uring does (this thread only).
            kiln_devices::test_support::deny_io_uring_on_this_thread();
            let explicit = VirtioDeviceConfig::from_spec(&VirtioSpec::Disk(cfg.clone()));
            let default =
                VirtioDeviceConfig::from_spec(&VirtioSpec::Disk(DiskConfig { aio: None, ..cfg }));
            (
                explicit.map(drop).map_err(|e| e.to_string()),
                default.map(drop).map_err(|e| e.to_string()),
            )
        })
        .join()
        .unwrap();
        let msg = results.0.unwrap_err();
        assert!(
            msg.contains("aio=io_uring: io_uring is not available here")
                && msg.contains("use aio=threads"),
            "{msg}"
        );
        // Without aio= the device falls back to threads instead.
        assert!(
            results.1.is_ok(),
            "the default refused too: {:?}",
            results.1
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_nic_keeps_one_random_mac_across_rebuilds_and_none_is_not_a_device() {
        let mac = |h: &VirtioHandles| {
            let mut bytes = [0u8; 6];
            h.device.lock().unwrap().read_config(0, &mut bytes);
            bytes
        };
        // A TAP that does not exist: the spec is accepted, building it names the device.
        let tap: NetConfig = "tap=kilnnotthere0".parse().unwrap();
        let cfg = VirtioDeviceConfig::from_spec(&VirtioSpec::Net(tap)).unwrap();
        let err = cfg.build().err().expect("no such TAP");
        assert!(err.contains("kilnnotthere0"), "{err}");
        // User mode starts passt per build; both builds see the MAC picked once.
        let user = VirtioDeviceConfig::from_spec(&VirtioSpec::Net(NetConfig::default())).unwrap();
        let first = user.build().unwrap();
        let second = user.build().unwrap();
        assert_eq!(first.device.lock().unwrap().device_type(), 1);
        assert_eq!(mac(&first), mac(&second));
        assert_ne!(mac(&first)[0] & 0x02, 0, "locally administered");
        let err = VirtioDeviceConfig::from_spec(&VirtioSpec::Net(NetConfig::None)).unwrap_err();
        assert!(err.to_string().starts_with("--net: "), "{err}");
    }
}
