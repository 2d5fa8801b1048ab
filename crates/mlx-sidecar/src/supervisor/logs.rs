//! The worker's output: stderr carries JSON log lines, re-emitted as `tracing` events.
//!
//! Each stderr line `{"ts", "level", "target", "message", "fields"}` becomes an event
//! with target `mlx_worker` at the line's level, with the worker's logger name, pid and
//! fields attached; a line that is not JSON (a Python traceback, a crash in native code)
//! is emitted at `warn`. The last lines are kept in a [`LogTail`] for error reports, and a
//! "listening", "health" or "startup" message wakes the start-up probe at once. Stdout (which the
//! worker does not normally use) is re-emitted at `info`.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use serde::Deserialize;

use super::events::StartupTimes;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    sync::Notify,
    task::JoinHandle,
};

/// The last lines a worker wrote to stderr, in readable form, and its start-up times.
#[derive(Debug, Clone)]
pub(crate) struct LogTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    capacity: usize,
    startup: Arc<Mutex<Option<StartupTimes>>>,
}

impl LogTail {
    pub(crate) fn new(capacity: usize) -> Self {
        LogTail {
            lines: Arc::new(Mutex::new(VecDeque::with_capacity(capacity.min(1024)))),
            capacity,
            startup: Arc::default(),
        }
    }

    /// The times of the worker's "startup" event, once it was logged.
    pub(crate) fn startup(&self) -> Option<StartupTimes> {
        self.startup.lock().ok().and_then(|s| *s)
    }

    fn push(&self, line: String) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut lines) = self.lines.lock() {
            while lines.len() >= self.capacity {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    /// The kept lines, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|lines| lines.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct LogLine {
    #[serde(default)]
    level: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    fields: serde_json::Map<String, serde_json::Value>,
}

/// Reads the worker's stderr until EOF (the worker exited).
pub(crate) fn spawn_stderr_reader(
    stderr: impl AsyncRead + Unpin + Send + 'static,
    pid: u32,
    tail: LogTail,
    startup_hint: Arc<Notify>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => handle_line(&line, pid, &tail, &startup_hint),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(target: "mlx_worker", pid, error = %e, "cannot read the worker's stderr");
                    break;
                }
            }
        }
    })
}

/// Reads the worker's stdout until EOF, re-emitting each line.
pub(crate) fn spawn_stdout_reader(
    stdout: impl AsyncRead + Unpin + Send + 'static,
    pid: u32,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "mlx_worker", pid, stream = "stdout", "{line}");
        }
    })
}

fn handle_line(line: &str, pid: u32, tail: &LogTail, startup_hint: &Notify) {
    let line = line.trim_end();
    if line.is_empty() {
        return;
    }
    let Ok(log) = serde_json::from_str::<LogLine>(line) else {
        tracing::warn!(target: "mlx_worker", pid, "{line}");
        tail.push(line.to_owned());
        return;
    };
    let fields = if log.fields.is_empty() {
        String::new()
    } else {
        serde_json::Value::Object(log.fields.clone()).to_string()
    };
    let logger = log.target.as_str();
    let message = log.message.as_str();
    match log.level.as_str() {
        "debug" | "trace" => {
            tracing::debug!(target: "mlx_worker", pid, logger, fields = %fields, "{message}")
        }
        "info" => tracing::info!(target: "mlx_worker", pid, logger, fields = %fields, "{message}"),
        "warning" | "warn" => {
            tracing::warn!(target: "mlx_worker", pid, logger, fields = %fields, "{message}")
        }
        _ => tracing::error!(target: "mlx_worker", pid, logger, fields = %fields, "{message}"),
    }
    if message == "startup" {
        if let (Some(times), Ok(mut slot)) =
            (StartupTimes::from_fields(&log.fields), tail.startup.lock())
        {
            *slot = Some(times);
        }
    }
    if matches!(message, "listening" | "startup" | "health") {
        startup_hint.notify_one();
    }
    let mut readable = format!("{} {}: {}", log.level, logger, message);
    if !fields.is_empty() {
        readable.push(' ');
        readable.push_str(&fields);
    }
    tail.push(readable);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_plain_lines_are_kept_readably() {
        let tail = LogTail::new(2);
        let hint = Notify::new();
        handle_line(
            r#"{"ts": 1.0, "level": "info", "target": "mlx_worker.server", "message": "listening", "fields": {"socket": "/x"}}"#,
            1,
            &tail,
            &hint,
        );
        handle_line("Traceback (most recent call last):", 1, &tail, &hint);
        handle_line(
            r#"{"level": "error", "target": "w", "message": "boom"}"#,
            1,
            &tail,
            &hint,
        );
        assert_eq!(
            tail.snapshot(),
            vec![
                "Traceback (most recent call last):".to_owned(),
                "error w: boom".to_owned()
            ]
        );
    }
}
