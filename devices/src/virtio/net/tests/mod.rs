//! Device-level tests: mock split queues in fake guest memory and a mock backend.

mod events;
mod harness;
mod indirect;
mod rx;
mod tx;
