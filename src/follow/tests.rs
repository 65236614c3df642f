//! The poll interval policy and its cost.

use super::*;

#[test]
fn interval_is_fast_after_a_change_and_backs_off_to_the_max() {
    let mut i = Interval::new(Duration::from_secs(10));
    assert_eq!(i.get(), FAST);
    let mut waits = Vec::new();
    for _ in 0..8 {
        i.idle();
        waits.push(i.get().as_millis());
    }
    assert_eq!(waits, [400, 800, 1600, 3200, 6400, 10000, 10000, 10000]);
    i.changed();
    assert_eq!(i.get(), FAST);
    // A max below FAST wins.
    let mut small = Interval::new(Duration::from_millis(50));
    assert_eq!(small.get(), Duration::from_millis(50));
    small.idle();
    assert_eq!(small.get(), Duration::from_millis(50));
}

#[test]
fn idle_cost_per_hour() {
    // One LIST per poll, plus two more every sixth idle poll (snapshots,
    // the went-back check).
    assert_eq!(
        Interval::idle_requests_per_hour(DEFAULT_INTERVAL_MAX).round(),
        480.0
    );
    assert_eq!(
        Interval::idle_requests_per_hour(Duration::from_secs(60)).round(),
        80.0
    );
}
