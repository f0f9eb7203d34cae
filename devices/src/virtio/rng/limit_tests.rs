//! The rate limit: a period's budget, requests served in part, the rest waiting for
//! the next period on the event loop's timer, and no budget renewed by a reset.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};

use super::tests::{read, Counting};
use super::*;
use crate::virtio::test_utils::*;

const PERIOD: Duration = Duration::from_millis(300);
const LIMIT: RateLimit = RateLimit {
    max_bytes: 1000,
    period: PERIOD,
};

type Loop = EventManager<Arc<Mutex<Rng>>>;

/// A limited device on a ring of 8, activated, in an event loop.
fn limited<'a>(mem: &'a GuestMemory) -> (Arc<Mutex<Rng>>, Loop, TestRing<'a>) {
    let mut rng = Rng::with_source(Box::new(Counting(0))).unwrap();
    rng.set_rate_limit(LIMIT).unwrap();
    let ring = TestRing::new(mem, 0, 8);
    activate_queues(&mut rng, mem, vec![ring.queue()]);
    let rng = Arc::new(Mutex::new(rng));
    let mut em = Loop::new().unwrap();
    em.add_subscriber(rng.clone());
    (rng, em, ring)
}

#[test]
fn requests_past_the_budget_wait_for_the_next_period() {
    let mem = test_mem();
    let (rng, mut em, mut ring) = limited(&mem);
    for n in 0..3u16 {
        ring.post(n, &[(DATA + 0x1000 * u64::from(n), 512, true)]);
    }
    let start = Instant::now();
    rng.lock().unwrap().process_queue();
    // 1000 bytes this period: the first whole, the second in part, the third waits.
    assert_eq!(ring.used_idx(), 2);
    assert_eq!(ring.used_entry(0), (0, 512));
    assert_eq!(ring.used_entry(1), (1, 488));
    assert_eq!(
        read(&mem, DATA + 0x1000, 488),
        (512..1000).map(|i| i as u8).collect::<Vec<u8>>()
    );

    run_until(&mut em, "the next period", || ring.used_idx() == 3);
    assert!(
        start.elapsed() >= PERIOD - Duration::from_millis(20),
        "served again after {:?}, within the period",
        start.elapsed()
    );
    assert_eq!(ring.used_entry(2), (2, 512));

    // Nothing waits: once the last period's timer ended it, the loop goes quiet
    // instead of ticking every period.
    let longer_than_a_period = (PERIOD.as_millis() + 100) as i32;
    let quiet = (0..3).any(|_| em.run_with_timeout(longer_than_a_period).unwrap() == 0);
    assert!(quiet, "the event loop keeps waking");
    assert_eq!(em.run_with_timeout(2 * longer_than_a_period).unwrap(), 0);
}

#[test]
fn a_guest_that_asks_without_pause_gets_no_more_than_the_limit() {
    let mem = test_mem();
    let (rng, mut em, mut ring) = limited(&mem);
    let start = Instant::now();
    let mut served = 0u64;
    let mut seen = 0u16;
    let mut posted = 0u16;
    while start.elapsed() < Duration::from_millis(1000) {
        // Keep the ring full of 4 KiB requests.
        while posted.wrapping_sub(seen) < 8 {
            ring.post(
                posted % 8,
                &[(DATA + 0x1000 * u64::from(posted % 8), 4096, true)],
            );
            posted = posted.wrapping_add(1);
        }
        rng.lock().unwrap().process_queue();
        em.run_with_timeout(20).unwrap();
        while seen != ring.used_idx() {
            served += u64::from(ring.used_entry(seen).1);
            seen = seen.wrapping_add(1);
        }
    }
    // Periods start at 0, 300, 600 and 900 ms at the earliest: four budgets at most,
    // and at least three.
    let periods = start.elapsed().as_millis() as u64 / PERIOD.as_millis() as u64 + 1;
    assert!(
        served <= periods * LIMIT.max_bytes,
        "{served} bytes in {periods} periods"
    );
    assert!(served >= 3 * LIMIT.max_bytes, "only {served} bytes served");
}

#[test]
fn a_reset_does_not_renew_the_budget() {
    let mem = test_mem();
    let (rng, _em, mut ring) = limited(&mem);
    ring.post(0, &[(DATA, 1000, true)]);
    rng.lock().unwrap().process_queue();
    assert_eq!(ring.used_entry(0), (0, 1000));

    let mut dev = rng.lock().unwrap();
    assert!(dev.reset());
    let offered = dev.device_features();
    dev.ack_features(offered);
    let mut ring = TestRing::new(&mem, 0x4000, 8);
    activate_queues(&mut *dev, &mem, vec![ring.queue()]);
    ring.post(0, &[(DATA, 16, true)]);
    dev.process_queue();
    assert_eq!(ring.used_idx(), 0, "a reset gave the guest a fresh budget");
}
