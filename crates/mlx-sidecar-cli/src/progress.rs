//! Progress on stderr: an indicatif spinner per step when stderr is a terminal, plain lines
//! otherwise (indicatif draws nothing when stderr is not a terminal).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mlx_sidecar::env::{Progress, Step};

/// Shows progress on stderr.
pub(crate) struct StderrProgress {
    tty: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl StderrProgress {
    /// Progress for this process's stderr.
    pub(crate) fn new() -> Self {
        StderrProgress {
            tty: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    /// Starts a spinner with `message` (nothing when stderr is not a terminal).
    pub(crate) fn spin(&self, message: impl Into<String>) {
        if !self.tty {
            return;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(spinner_style());
        bar.set_prefix(message.into());
        bar.enable_steady_tick(Duration::from_millis(100));
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(old) = slot.replace(bar) {
                old.finish_and_clear();
            }
        }
    }

    /// Sets the detail shown after the current spinner's message.
    pub(crate) fn detail(&self, detail: &str) {
        if let Ok(slot) = self.bar.lock() {
            if let Some(bar) = slot.as_ref() {
                bar.set_message(truncate(detail, 70));
            }
        }
    }

    /// Removes the current spinner, leaving `line` (if any) in its place.
    pub(crate) fn done(&self, line: Option<String>) {
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(bar) = slot.take() {
                match line {
                    Some(line) => {
                        bar.set_style(done_style());
                        bar.finish_with_message(line);
                    }
                    None => bar.finish_and_clear(),
                }
            }
        }
    }
}

impl Progress for StderrProgress {
    fn started(&self, step: Step, detail: &str) {
        let text = with_detail(step, detail);
        if self.tty {
            self.spin(text);
        } else if is_slow(step) {
            eprintln!("mlx-sidecar: {text}...");
        }
    }

    fn output(&self, _step: Step, line: &str) {
        let line = line.trim();
        if !line.is_empty() {
            self.detail(line);
        }
    }

    fn finished(&self, step: Step, elapsed: Duration) {
        let line = format!("{} ({:.1} s)", step.describe(), elapsed.as_secs_f64());
        if !is_slow(step) {
            self.done(None);
        } else if self.tty {
            self.done(Some(format!("✓ {line}")));
        } else {
            eprintln!("mlx-sidecar: done {line}");
        }
    }

    fn failed(&self, step: Step, _error: &str) {
        if self.tty {
            self.done(Some(format!("✗ {}", step.describe())));
        } else if is_slow(step) {
            eprintln!("mlx-sidecar: failed {}", step.describe());
        }
    }
}

/// Steps worth a line of their own; quick ones only show a spinner while they run.
fn is_slow(step: Step) -> bool {
    !matches!(step, Step::ExtractWorker | Step::Verify)
}

fn with_detail(step: Step, detail: &str) -> String {
    match step {
        // The path or variant is useful here; for the other steps it is noise.
        Step::CreateVenv | Step::InstallRequirements | Step::RemoveBroken => {
            format!("{} ({detail})", step.describe())
        }
        _ => step.describe().to_owned(),
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {prefix} [{elapsed}] {wide_msg:.dim}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn done_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}
