//! virtio-serial: the driver's control messages from descriptor chains and guest
//! memory the fuzzer chooses.

use std::os::unix::net::UnixListener;
use std::sync::OnceLock;

use virtio_queue::{Queue, QueueT};

use super::{fuzz_memory, fuzzed_queue, NoInterrupt};
use crate::virtio::serial::{PortSocket, SerialPorts};
use crate::virtio::{ActivateContext, VirtioDevice};

/// Two listening sockets, made once per process: every input's device serves them.
/// Abstract names (Linux), so that no socket file is left behind.
fn listeners() -> Option<&'static [UnixListener; 2]> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;
    static LISTENERS: OnceLock<Option<[UnixListener; 2]>> = OnceLock::new();
    LISTENERS
        .get_or_init(|| {
            let bind = |port: &str| {
                let name = format!("kiln-fuzz-serial-{}-{port}", std::process::id());
                let addr = SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
                UnixListener::bind_addr(&addr).ok()
            };
            Some([bind("a")?, bind("b")?])
        })
        .as_ref()
}

/// Fuzz the control transmit queue of a virtio-serial device with two ports: the
/// input is a queue as [`fuzzed_queue`] reads it. The other queues are not set up,
/// so the device's answers wait (up to its cap) for receive buffers.
pub fn serial_control(data: &[u8]) {
    // Without sockets there is no device to fuzz: fail rather than test nothing.
    let [a, b] = listeners().expect("cannot bind the fuzz target's UNIX sockets");
    let (Ok(a), Ok(b)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let ports = vec![
        ("org.kiln.a".to_string(), PortSocket::Listening(a)),
        (
            "org.qemu.guest_agent.0".to_string(),
            PortSocket::Listening(b),
        ),
    ];
    let Ok(mut dev) = SerialPorts::new(ports) else {
        return;
    };
    let Some(mem) = fuzz_memory() else { return };
    let Some(control_tx) = fuzzed_queue(data, &mem) else {
        return;
    };
    let n = dev.queue_max_sizes().len();
    let Ok(mut queues) = (0..n)
        .map(|_| Queue::new(256))
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    queues[3] = control_tx; // the control transmit queue
    let Ok(events) = (0..n)
        .map(|_| vmm_sys_util::eventfd::EventFd::new(0))
        .collect::<std::io::Result<Vec<_>>>()
    else {
        return;
    };
    dev.ack_features(dev.device_features());
    let ctx = ActivateContext {
        mem,
        queues,
        queue_events: events,
        interrupt: std::sync::Arc::new(NoInterrupt),
    };
    if dev.activate(ctx).is_ok() {
        dev.process_control_tx();
        dev.process_control_rx();
        dev.process_port_tx(0);
        dev.process_port_rx(1);
    }
}
