//! A pool of I/O threads that runs submitted tasks without the submitter waiting.
//!
//! virtio-blk hands it one task per request; each task reports its own completion (see
//! [`super::inflight`]), so the event loop never blocks on disk I/O and many requests
//! overlap (a cold-cache random read spends its time waiting on the host disk, not on
//! the CPU). Threads start on demand, one whenever a task would otherwise wait for a
//! free thread, up to a maximum, and leave after [`IDLE_EXIT`] without work, so a
//! guest doing one request at a time costs one thread. Dropping the pool discards the
//! tasks that have not started and joins the threads (so the running ones finish).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use log::warn;

/// A unit of work; it reports its own result.
pub type Task = Box<dyn FnOnce() + Send + 'static>;

/// Upper bound on I/O threads when the caller does not choose: enough to keep the host
/// disk busy (cold 4 KiB random reads here gain nothing from 32 to 64 parallel reads),
/// and at queue depth 64 a thread finishing a request usually finds the next one queued
/// instead of going to sleep and being woken for it (measured: about 1.4 context
/// switches per request with 32 threads against 2.1 with 64, and 10-20% more requests
/// per second).
pub const DEFAULT_MAX_WORKERS: usize = 32;

/// How long an idle thread waits for work before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(10);

/// Worker threads used when the caller does not choose.
pub fn default_workers() -> usize {
    DEFAULT_MAX_WORKERS
}

#[derive(Default)]
struct State {
    tasks: VecDeque<Task>,
    /// Threads waiting for a task.
    idle: usize,
    /// Threads started and not yet exited.
    running: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    idle_exit: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Tasks run outside the lock, so a poisoned lock means a bug in this file only;
        // the state is still consistent (every update is a single statement).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Thread pool growing on demand up to `max` threads; `max` 0 runs every task inline
/// on the submitter's thread.
pub struct WorkerPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    max: usize,
    name: String,
    spawned: usize,
}

impl WorkerPool {
    /// A pool of at most `max` threads named `{name}-{n}`; none start until needed.
    pub fn new(max: usize, name: &str) -> Self {
        Self::with_idle_exit(max, name, IDLE_EXIT)
    }

    /// Like [`WorkerPool::new`], with idle threads leaving after `idle_exit`.
    pub fn with_idle_exit(max: usize, name: &str, idle_exit: Duration) -> Self {
        WorkerPool {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                work: Condvar::new(),
                idle_exit,
            }),
            handles: Vec::new(),
            max,
            name: name.to_owned(),
            spawned: 0,
        }
    }

    /// Most threads the pool starts (0: inline).
    pub fn max_threads(&self) -> usize {
        self.max
    }

    /// Threads currently running.
    pub fn threads(&self) -> usize {
        self.shared.lock().running
    }

    /// Run `task` on a pool thread, starting one if every thread is busy and the pool
    /// is below its maximum. Returns at once (inline pools run the task first).
    pub fn submit(&mut self, task: Task) {
        if self.max == 0 {
            run_task(task);
            return;
        }
        let mut state = self.shared.lock();
        state.tasks.push_back(task);
        let wants_thread = state.tasks.len() > state.idle && state.running < self.max;
        if wants_thread {
            state.running += 1;
        }
        // Busy threads look at the queue before they wait: only idle ones need a wake-up
        // (a futex call each, worth saving at tens of thousands of requests a second).
        let wake = state.idle > 0;
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
        if wants_thread {
            self.spawn();
        }
    }

    fn spawn(&mut self) {
        // Reap threads that left after idling, so the handle list stays short.
        let (done, alive): (Vec<_>, Vec<_>) = self.handles.drain(..).partition(|h| h.is_finished());
        self.handles = alive;
        for h in done {
            let _ = h.join();
        }
        let shared = self.shared.clone();
        let result = std::thread::Builder::new()
            .name(format!("{}-{}", self.name, self.spawned))
            .spawn(move || worker_loop(&shared));
        self.spawned += 1;
        match result {
            Ok(handle) => self.handles.push(handle),
            Err(e) => {
                let mut state = self.shared.lock();
                state.running -= 1;
                let orphaned = state.running == 0;
                let tasks: Vec<Task> = if orphaned {
                    state.tasks.drain(..).collect()
                } else {
                    Vec::new()
                };
                drop(state);
                warn!("{}: cannot start an I/O thread: {e}", self.name);
                // No thread would ever run these: run them here rather than lose them.
                tasks.into_iter().for_each(run_task);
            }
        }
    }
}

fn run_task(task: Task) {
    // A panicking task must not take its thread (or the event loop) down with it.
    if catch_unwind(AssertUnwindSafe(task)).is_err() {
        warn!("I/O task panicked");
    }
}

fn worker_loop(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if let Some(task) = state.tasks.pop_front() {
            drop(state);
            run_task(task);
            state = shared.lock();
            continue;
        }
        if state.shutdown {
            break;
        }
        state.idle += 1;
        let (next, timeout) = shared
            .work
            .wait_timeout(state, shared.idle_exit)
            .unwrap_or_else(|e| e.into_inner());
        state = next;
        state.idle -= 1;
        if timeout.timed_out() && state.tasks.is_empty() {
            break;
        }
    }
    state.running -= 1;
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.shutdown = true;
        let discarded: Vec<Task> = state.tasks.drain(..).collect();
        drop(state);
        // Dropped outside the lock: a task's captures may take time to drop.
        drop(discarded);
        self.shared.work.notify_all();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::sync::Barrier;
    use std::time::Instant;

    fn threads_named(prefix: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.starts_with(prefix))
            .count()
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn inline_pool_runs_tasks_before_submit_returns() {
        let mut pool = WorkerPool::new(0, "t");
        let (tx, rx) = channel();
        for i in 0..3 {
            let tx = tx.clone();
            pool.submit(Box::new(move || tx.send(i).unwrap()));
            assert_eq!(rx.try_recv(), Ok(i));
        }
        assert_eq!(pool.threads(), 0);
    }

    #[test]
    fn submit_does_not_wait_and_tasks_run_concurrently() {
        // Eight tasks that each wait for all the others: deadlocks unless all run at once,
        // and submit() would hang if it waited for its task.
        let mut pool = WorkerPool::new(8, "t");
        let barrier = Arc::new(Barrier::new(8));
        let (tx, rx) = channel();
        for i in 0..8 {
            let (b, tx) = (barrier.clone(), tx.clone());
            pool.submit(Box::new(move || {
                b.wait();
                tx.send(i).unwrap();
            }));
        }
        let mut got: Vec<i32> = (0..8)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..8).collect::<Vec<_>>());
        assert_eq!(pool.threads(), 8);
    }

    #[test]
    fn threads_start_only_when_needed_and_respect_the_maximum() {
        let mut pool = WorkerPool::new(3, "t");
        assert_eq!(pool.threads(), 0, "no thread before the first task");
        // Sequential tasks reuse one thread.
        for _ in 0..5 {
            let (tx, rx) = channel();
            pool.submit(Box::new(move || tx.send(()).unwrap()));
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
            // Let the thread go back to waiting before the next submit.
            wait_until("the thread to idle", || pool.shared.lock().idle == 1);
        }
        assert_eq!(pool.threads(), 1);
        // Ten tasks blocked on a gate: only three threads.
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (tx, rx) = channel();
        for _ in 0..10 {
            let (g, tx) = (gate.clone(), tx.clone());
            pool.submit(Box::new(move || {
                let (open, cv) = &*g;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
                tx.send(()).unwrap();
            }));
        }
        assert_eq!(pool.threads(), 3);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(tx);
        assert_eq!(rx.iter().count(), 10);
        assert_eq!(pool.threads(), 3);
    }

    #[test]
    fn idle_threads_exit() {
        let mut pool = WorkerPool::with_idle_exit(4, "idletest", Duration::from_millis(50));
        // The tasks hold their threads at the barrier until the test has counted them
        // (four tasks waiting together need four threads).
        let barrier = Arc::new(Barrier::new(5));
        for _ in 0..4 {
            let b = barrier.clone();
            pool.submit(Box::new(move || {
                b.wait();
            }));
        }
        wait_until("four threads", || pool.threads() == 4);
        barrier.wait();
        wait_until("idle threads to exit", || pool.threads() == 0);
        wait_until("idle threads to be gone", || {
            threads_named("idletest-") == 0
        });
        // And the pool starts new ones afterwards.
        let (tx, rx) = channel();
        pool.submit(Box::new(move || tx.send(7).unwrap()));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(7));
    }

    #[test]
    fn panicking_task_does_not_kill_its_thread() {
        let mut pool = WorkerPool::new(1, "t");
        pool.submit(Box::new(|| panic!("boom")));
        let (tx, rx) = channel();
        pool.submit(Box::new(move || tx.send(5).unwrap()));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(5));
        assert_eq!(pool.threads(), 1);
        // Inline pools survive a panicking task too.
        WorkerPool::new(0, "t").submit(Box::new(|| panic!("boom")));
    }

    #[test]
    fn drop_joins_running_tasks_and_discards_queued_ones() {
        let mut pool = WorkerPool::new(2, "droptest");
        let started = Arc::new(Barrier::new(3));
        let (tx, rx) = channel();
        for i in 0..5 {
            let (s, tx) = (started.clone(), tx.clone());
            pool.submit(Box::new(move || {
                if i < 2 {
                    s.wait();
                    std::thread::sleep(Duration::from_millis(50));
                }
                tx.send(i).unwrap();
            }));
        }
        drop(tx);
        started.wait(); // both threads are inside their first task
        assert_eq!(threads_named("droptest-"), 2);
        drop(pool);
        // Joined threads may linger in /proc for a moment while the kernel reaps them; a
        // thread left running would idle for IDLE_EXIT (10 s) before leaving.
        let deadline = Instant::now() + Duration::from_secs(2);
        while threads_named("droptest-") > 0 {
            assert!(Instant::now() < deadline, "worker threads leaked");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut done: Vec<i32> = rx.iter().collect();
        done.sort_unstable();
        assert_eq!(
            done,
            vec![0, 1],
            "running tasks finish, queued ones are dropped"
        );
    }
}
