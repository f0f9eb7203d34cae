//! Device models for kiln.
//!
//! This crate knows nothing about KVM: every model takes guest memory and an interrupt
//! abstraction, so unit tests drive it with mock guest memory and mock queues.

pub mod block;
pub mod bus;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod legacy;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod virtio;

/// Guest memory type shared by all device models.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
