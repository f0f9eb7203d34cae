//! A small pool of I/O threads that runs a batch of jobs in parallel.
//!
//! virtio-blk hands it the requests of one queue notification so that their disk I/O
//! overlaps (a cold-cache random read spends its time waiting on the host disk, not
//! on the CPU). The pool is deliberately simple: the caller submits a batch and waits
//! for all of it, so completions come back to the one thread that owns the queue and
//! no request outlives the call. Dropping the pool stops and joins its threads.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Task = Box<dyn FnOnce() + Send + 'static>;

/// A job of a batch: runs on some worker and produces a `T`.
pub type Job<T> = Box<dyn FnOnce() -> T + Send + 'static>;

/// Worker threads used when the caller does not choose: enough to overlap a few
/// blocking reads without crowding a small host.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
}

/// Fixed-size thread pool; size 0 runs every job inline on the caller's thread.
pub struct WorkerPool {
    sender: Option<Sender<Task>>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Start `size` threads named `{name}-{i}`.
    pub fn new(size: usize, name: &str) -> std::io::Result<Self> {
        if size == 0 {
            return Ok(WorkerPool {
                sender: None,
                threads: Vec::new(),
            });
        }
        let (sender, receiver) = channel::<Task>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut pool = WorkerPool {
            sender: Some(sender),
            threads: Vec::with_capacity(size),
        };
        for i in 0..size {
            let rx = receiver.clone();
            // On error, dropping `pool` stops and joins the threads already started.
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker_loop(&rx))?;
            pool.threads.push(handle);
        }
        Ok(pool)
    }

    /// Number of worker threads (0: inline).
    pub fn size(&self) -> usize {
        self.threads.len()
    }

    /// Run `jobs` in parallel and wait for all of them. Results come back in job
    /// order; `None` marks a job that panicked.
    pub fn run_all<T: Send + 'static>(&self, jobs: Vec<Job<T>>) -> Vec<Option<T>> {
        let Some(sender) = self.sender.as_ref().filter(|_| jobs.len() > 1) else {
            return jobs
                .into_iter()
                .map(|job| catch_unwind(AssertUnwindSafe(job)).ok())
                .collect();
        };
        let count = jobs.len();
        let (done_tx, done_rx) = channel::<(usize, T)>();
        for (i, job) in jobs.into_iter().enumerate() {
            let done = done_tx.clone();
            let task: Task = Box::new(move || {
                let _ = done.send((i, job()));
            });
            if let Err(e) = sender.send(task) {
                // Every worker is gone (cannot happen while we hold the sender); run here.
                (e.0)();
            }
        }
        drop(done_tx);
        let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
        // Ends when every task has sent or been dropped (a panicking job drops its sender).
        for (i, value) in done_rx {
            results[i] = Some(value);
        }
        results
    }
}

fn worker_loop(receiver: &Mutex<Receiver<Task>>) {
    loop {
        // The guard is dropped at the end of this statement, before the task runs.
        let task = receiver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .recv();
        match task {
            // A panicking job must not take the worker down with it.
            Ok(task) => {
                let _ = catch_unwind(AssertUnwindSafe(task));
            }
            Err(_) => return, // pool dropped
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.sender = None;
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn results_in_job_order_and_inline_mode() {
        for size in [0, 1, 3] {
            let pool = WorkerPool::new(size, "t").unwrap();
            assert_eq!(pool.size(), size);
            let jobs: Vec<Job<usize>> = (0..20usize)
                .map(|i| {
                    Box::new(move || {
                        std::thread::sleep(std::time::Duration::from_millis((20 - i as u64) % 4));
                        i * 10
                    }) as Job<usize>
                })
                .collect();
            let got: Vec<_> = pool.run_all(jobs);
            let want: Vec<_> = (0..20).map(|i| Some(i * 10)).collect();
            assert_eq!(got, want, "pool of {size}");
        }
    }

    #[test]
    fn jobs_really_run_concurrently() {
        // Three jobs that each wait for the other two: deadlocks unless all run at once.
        let pool = WorkerPool::new(3, "t").unwrap();
        let barrier = Arc::new(Barrier::new(3));
        let jobs: Vec<Job<()>> = (0..3)
            .map(|_| {
                let b = barrier.clone();
                Box::new(move || {
                    b.wait();
                }) as Job<()>
            })
            .collect();
        assert_eq!(pool.run_all(jobs), vec![Some(()); 3]);
    }

    #[test]
    fn panicking_job_is_none_and_pool_survives() {
        let pool = WorkerPool::new(2, "t").unwrap();
        let jobs: Vec<Job<u8>> = vec![Box::new(|| 1), Box::new(|| panic!("boom")), Box::new(|| 3)];
        assert_eq!(pool.run_all(jobs), vec![Some(1), None, Some(3)]);
        let jobs: Vec<Job<u8>> = vec![Box::new(|| 4), Box::new(|| 5), Box::new(|| 6)];
        assert_eq!(pool.run_all(jobs), vec![Some(4), Some(5), Some(6)]);
    }

    fn threads_named(prefix: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.starts_with(prefix))
            .count()
    }

    #[test]
    fn drop_joins_workers() {
        let pool = WorkerPool::new(3, "droptest").unwrap();
        // Each thread names itself once it starts running.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while threads_named("droptest-") < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(threads_named("droptest-"), 3);
        drop(pool);
        assert_eq!(threads_named("droptest-"), 0, "worker threads leaked");
    }
}
