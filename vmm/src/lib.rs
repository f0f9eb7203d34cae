//! kiln's virtual machine monitor: KVM, guest memory, vCPUs, boot and the event loop.
pub mod guests;
