//! The progress display while the CLI waits for an operation: bytes copied of the total when
//! the operation reports them, a spinner otherwise. It draws on stderr, and only when stderr
//! is a terminal, so that scripts and `--json` see nothing of it.

use std::time::Duration;

use api::Operation;
use indicatif::{ProgressBar, ProgressStyle};

use super::format::describe;

pub struct OperationBar {
    bar: ProgressBar,
    /// Whether the bar shows bytes yet (it starts as a spinner).
    counting_bytes: bool,
}

impl OperationBar {
    /// A display for `op`, drawn only when `visible`.
    pub fn new(op: &Operation, visible: bool) -> OperationBar {
        let bar = if visible { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
        bar.set_style(spinner_style());
        bar.set_prefix(describe(op));
        if visible {
            bar.enable_steady_tick(Duration::from_millis(100));
        }
        let mut this = OperationBar { bar, counting_bytes: false };
        this.update(op);
        this
    }

    /// Shows the operation's latest step and progress.
    pub fn update(&mut self, op: &Operation) {
        if let Some(message) = &op.message {
            self.bar.set_message(message.clone());
        }
        match op.progress {
            Some(p) if p.total_bytes > 0 => {
                // The total is an estimate that may grow, or be passed.
                self.bar.set_length(p.total_bytes.max(p.done_bytes));
                self.bar.set_position(p.done_bytes);
                if !self.counting_bytes {
                    self.counting_bytes = true;
                    self.bar.set_style(bytes_style());
                    // Measure throughput from here: the time spent before the first figure
                    // is not time spent copying these bytes.
                    self.bar.reset_eta();
                }
            }
            // Copying is over and another step (preparing the copy) is under way.
            _ if self.counting_bytes => {
                self.counting_bytes = false;
                self.bar.set_style(spinner_style());
            }
            _ => {}
        }
    }

    /// Removes the display.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }

    #[cfg(test)]
    fn position_and_length(&self) -> (u64, Option<u64>) {
        (self.bar.position(), self.bar.length())
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} {elapsed} {wide_msg}").expect("a valid template")
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {prefix}: {msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use api::{OperationKind, OperationState, Progress};
    use client::testing::operation;

    use super::*;

    #[test]
    fn the_bar_follows_the_bytes_and_tolerates_a_total_that_is_passed() {
        let mut op = operation(1, OperationKind::ImageCreate, "prod", OperationState::Running);
        let mut bar = OperationBar::new(&op, false);
        assert_eq!(bar.position_and_length(), (0, None));
        assert!(!bar.counting_bytes);
        op.progress = Some(Progress { done_bytes: 10, total_bytes: 100 });
        bar.update(&op);
        assert_eq!(bar.position_and_length(), (10, Some(100)));
        op.progress = Some(Progress { done_bytes: 150, total_bytes: 140 });
        bar.update(&op);
        assert_eq!(bar.position_and_length(), (150, Some(150)));
        assert!(bar.counting_bytes);
        // After the copy, the next step shows as a spinner again.
        op.progress = None;
        op.message = Some("preparing the copy".into());
        bar.update(&op);
        assert!(!bar.counting_bytes);
        bar.finish();
    }
}
