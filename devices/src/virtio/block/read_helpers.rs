//! Read helpers: a few I/O threads that take a share of a deep batch of reads off the
//! io_uring.
//!
//! The ring's reads are all submitted by the event-loop thread, one after another, and
//! a read that misses the host page cache costs its submitter about 5 us here (page
//! allocation, the block request, the host disk's doorbell). At depth 64 that one
//! thread is what the disk waits for: the device measured 0.97-0.99 against
//! `qemu-img bench -i io_uring`, which has the same shape, while 64 threads of
//! blocking reads (the bench's "kiln" runner) reached 1.06-1.09 by submitting on both
//! cores at once. The helpers add that second submitter for deep batches only.
//!
//! How the share is chosen (cold 4 KiB random reads, `kiln bench blk`, medians of 7-9
//! rounds against qemu-img on a 2-core host):
//! - The ring keeps a batch's reads until it holds [`RING_READS_ALONE`] unfinished
//!   requests, so shallow queues never share.
//! - The helpers then hold at most two reads per thread, so a helper that finishes a
//!   read usually finds the next one queued instead of sleeping until the event loop
//!   wakes it. With one read per thread the wake-ups cost more than the second core
//!   gave: 0.86-0.92 at depth 64, and 0.87-0.89 at depths 24 and 48, where a fixed
//!   split left the helpers exactly one read each.
//! - So a batch shares only when it would fill both the ring's share and the helpers'
//!   backlog; the rest of it goes to the ring.
//! - Reads above [`HELPER_READ_MAX`] stay on the ring, and so does every read the
//!   page cache answers: the ring counts only requests still unfinished, and a cached
//!   read finishes during its submission (warm 4 KiB random reads at depth 64, 1.4-1.6
//!   against qemu-img, would otherwise drop to 0.99).
//!
//! With 12 helpers the device measured medians of 1.00-1.06 at depth 64 against
//! 0.96-0.99 without, 1.02-1.03 at depth 48 (0.99-1.00 without) and 0.97-0.99 at 40
//! (0.98 without). Queues of fewer than 40 requests never share. With the device on
//! its own thread and the driver on another (`--device-thread`, as in a VM), the
//! helpers changed nothing measurable.

use std::collections::BTreeSet;

use super::workers::{Task, WorkerPool};

/// Reads a batch leaves on the ring before it shares any.
pub const RING_READS_ALONE: usize = 16;

/// Largest read the helpers take. Larger reads cost the disk more than their
/// submission costs the event loop, so a second submitter gains them nothing (64 KiB
/// sequential reads at depth 64 lost 1-3% when shared).
pub const HELPER_READ_MAX: u64 = 16 << 10;

/// Most helper threads per queue.
pub const READ_HELPERS: usize = 12;

/// The helpers of one queue and the reads they hold.
pub struct ReadHelpers {
    /// Dropped before the rest (see `Active`): discards queued reads, joins running ones.
    pool: WorkerPool,
    /// Most reads queued to or running on the helpers.
    max_reads: usize,
    /// Sequence numbers of the reads handed to the helpers and not yet finished.
    reads: BTreeSet<u64>,
    /// The current batch is deep enough to share (see [`ReadHelpers::plan`]).
    sharing: bool,
    /// Reads ever handed to the helpers.
    shared_total: u64,
}

impl ReadHelpers {
    /// Up to `threads` helpers (none start until a batch shares); 0 never shares.
    pub fn new(threads: usize) -> Self {
        ReadHelpers {
            pool: WorkerPool::new(threads, "kiln-blk-read"),
            max_reads: 2 * threads,
            reads: BTreeSet::new(),
            sharing: false,
            shared_total: 0,
        }
    }

    /// Before a batch starts: it shares when the ring's reads in flight, the batch's
    /// reads and the helpers' own fill both the ring's share and the helpers' backlog.
    pub fn plan(&mut self, ring_reads: usize, batch_reads: usize) {
        let wanted = RING_READS_ALONE + self.max_reads;
        self.sharing = self.max_reads > 0 && ring_reads + batch_reads + self.reads.len() >= wanted;
    }

    /// Whether a read of `len` bytes, next in the batch, goes to the helpers while
    /// `ring_reads` of the ring's requests are unfinished.
    pub fn takes(&self, len: u64, ring_reads: usize) -> bool {
        self.sharing
            && len <= HELPER_READ_MAX
            && ring_reads >= RING_READS_ALONE
            && self.reads.len() < self.max_reads
    }

    /// Run read `seq` as `task` on a helper.
    pub fn submit(&mut self, seq: u64, task: Task) {
        self.reads.insert(seq);
        self.shared_total += 1;
        self.pool.submit(task);
    }

    /// Request `seq` finished (any request: only the helpers' own are counted).
    pub fn finished(&mut self, seq: u64) {
        self.reads.remove(&seq);
    }

    /// Reads ever handed to the helpers.
    pub fn shared_total(&self) -> u64 {
        self.shared_total
    }

    /// Helper threads running.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
}
