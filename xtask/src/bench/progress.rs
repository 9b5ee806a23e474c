//! Progress on stderr: time-stamped lines, warnings, the run's phases with their durations,
//! the estimate of the run time, and the quick-mode banner.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

fn clock() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}", day / 3600, day / 60 % 60, day % 60)
}

/// A progress line: `[HH:MM:SS] message` (UTC).
pub fn log(message: &str) {
    eprintln!("[{}] {message}", clock());
}

pub fn warn(message: &str) {
    eprintln!("[{}] WARNING: {message}", clock());
}

pub fn error(message: &str) {
    eprintln!("[{}] ERROR: {message}", clock());
}

/// "about 5 minutes (287 s)".
pub fn estimate_text(seconds: u64) -> String {
    format!("about {} minutes ({seconds} s)", seconds.div_ceil(60))
}

/// The banner of quick runs, on stderr at the start and at the end.
pub fn quick_banner(what: &str) {
    eprintln!("\n*** QUICK MODE (smoke test): {what}; these figures are NOT to be judged. ***\n");
}

/// One phase of a run and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
}

/// The run's phases: starting one ends the one before and records its duration.
#[derive(Debug, Default)]
pub struct Phases {
    current: Option<(String, Instant)>,
    pub done: Vec<Phase>,
}

impl Phases {
    pub fn start(&mut self, name: impl Into<String>) {
        self.end();
        let name = name.into();
        log(&format!("== {name}"));
        self.current = Some((name, Instant::now()));
    }

    pub fn end(&mut self) {
        if let Some((name, t0)) = self.current.take() {
            self.done.push(Phase { name, seconds: round(t0.elapsed().as_secs_f64(), 3) });
        }
    }
}

/// Seconds since `t0`, to the millisecond.
pub fn seconds_since(t0: Instant) -> f64 {
    round(t0.elapsed().as_secs_f64(), 3)
}

/// `x` rounded to `digits` decimals.
pub fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}
