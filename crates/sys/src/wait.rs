//! Waiting for a condition, with a timeout.

use std::time::{Duration, Instant};

/// Calls `check` every `interval` until it answers `Some`, or `timeout` has passed (then
/// `None`). `check` runs at least once.
pub fn until<T>(timeout: Duration, interval: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval.min(deadline.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_at_the_deadline() {
        let mut n = 0;
        assert_eq!(until(Duration::from_millis(30), Duration::from_millis(5), || (n += 1, None::<()>).1), None);
        assert!(n >= 2);
        assert_eq!(until(Duration::ZERO, Duration::from_millis(5), || Some(7)), Some(7));
    }
}
