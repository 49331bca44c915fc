//! The manual and system clocks.

use std::sync::Arc;
use std::time::Duration;

use fib_flow_ports::Clock;

use super::*;
use crate::clock::SystemClock;

#[tokio::test]
async fn manual_clock_wakes_sleepers_when_time_reaches_their_deadline() {
    let clock = Arc::new(ManualClock::new(t0()));
    assert_eq!(clock.now(), t0());
    let deadline = t0() + chrono::TimeDelta::seconds(10);
    let sleeper = tokio::spawn({
        let clock = clock.clone();
        async move { clock.sleep_until(deadline).await }
    });
    settle().await;
    assert_eq!(clock.sleepers(), 1);
    clock.advance(Duration::from_secs(9));
    settle().await;
    assert!(!sleeper.is_finished(), "9 s is not enough");
    clock.advance(Duration::from_secs(1));
    tokio::time::timeout(WAIT_LIMIT, sleeper)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(clock.now(), deadline);
    assert_eq!(clock.sleepers(), 0);
}

#[tokio::test]
async fn manual_clock_set_moves_both_ways_and_past_deadlines_return_at_once() {
    let clock = ManualClock::new(t0());
    let later = t0() + chrono::TimeDelta::hours(1);
    clock.set(later);
    assert_eq!(clock.now(), later);
    clock.sleep_until(t0()).await;
    clock.set(t0());
    assert_eq!(clock.now(), t0(), "set can move backwards");
    let clock = Arc::new(clock);
    let sleeper = tokio::spawn({
        let clock = clock.clone();
        async move { clock.sleep_until(later).await }
    });
    settle().await;
    clock.set(later + chrono::TimeDelta::seconds(1));
    tokio::time::timeout(WAIT_LIMIT, sleeper)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn system_clock_sleeps_until_the_deadline() {
    let clock = SystemClock;
    let before = clock.now();
    clock
        .sleep_until(before - chrono::TimeDelta::seconds(1))
        .await;
    // With tokio's paused time the timer fires at once; the call must not hang or panic.
    let short = clock.now() + chrono::TimeDelta::milliseconds(5);
    tokio::time::timeout(WAIT_LIMIT, clock.sleep_until(short))
        .await
        .unwrap();
    assert!(clock.now() >= short);
}
