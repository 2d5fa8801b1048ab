//! Logging: `tracing` to stderr. Quiet by default (warnings of this program, errors of the
//! worker); `-v` shows the worker's logs (re-emitted by the supervisor under the target
//! `mlx_worker` at their own level) and this program's info, `-vv` debug, `-vvv` trace.
//! `RUST_LOG` replaces the filter. `serve --log-format json` writes one JSON object a line.
//!
//! A second layer taps the worker's info messages ("loading model", "startup", ...) into
//! the start-up spinner, so the user sees what the worker is doing without `-v`.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use super::args::LogFormat;
use super::progress::StderrProgress;

/// Installs the global subscriber.
pub(crate) fn init(verbose: u8, format: LogFormat, progress: Arc<StderrProgress>) {
    let default = match verbose {
        // The worker's log and the supervisor's reports reach the user through the errors
        // they cause; on their own they are shown from -v on.
        0 => "warn,mlx_worker=off,mlx_sidecar::supervisor=off,mlx_sidecar::client=off",
        1 => "info,h2=warn,tower=warn,hyper=warn",
        2 => "debug,h2=info,tower=info,hyper=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(verbose > 0)
            .without_time()
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let tap =
        WorkerTap { progress }.with_filter(Targets::new().with_target("mlx_worker", Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(tap)
        .try_init();
}

/// The worker's last error (or warning) message, with the last line of the exception it
/// carried: what went wrong when the worker fails to start.
pub(crate) fn last_worker_problem() -> Option<String> {
    problems()
        .lock()
        .ok()
        .and_then(|p| p.error.clone().or_else(|| p.warning.clone()))
}

#[derive(Default)]
struct Problems {
    error: Option<String>,
    warning: Option<String>,
}

fn problems() -> &'static Mutex<Problems> {
    static PROBLEMS: OnceLock<Mutex<Problems>> = OnceLock::new();
    PROBLEMS.get_or_init(Mutex::default)
}

/// Shows the worker's info-level messages as the spinner's detail, and remembers its last
/// error and warning.
struct WorkerTap {
    progress: Arc<StderrProgress>,
}

impl<S: Subscriber> Layer<S> for WorkerTap {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = WorkerEvent::default();
        event.record(&mut visitor);
        let Some(message) = visitor.message else {
            return;
        };
        let level = *event.metadata().level();
        if level <= Level::WARN {
            let detail = match visitor.fields.as_deref().and_then(problem_detail) {
                Some(detail) => format!("{message}: {detail}"),
                None => message.clone(),
            };
            if let Ok(mut p) = problems().lock() {
                if level == Level::ERROR {
                    p.error = Some(detail);
                } else {
                    p.warning = Some(detail);
                }
            }
        }
        self.progress.detail(&format!("worker: {message}"));
    }
}

/// The last line of an "exception" (a Python traceback) or the "error" in a worker log
/// event's fields.
fn problem_detail(fields: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(fields).ok()?;
    let text = value
        .get("exception")
        .or_else(|| value.get("error"))?
        .as_str()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

#[derive(Default)]
struct WorkerEvent {
    message: Option<String>,
    fields: Option<String>,
}

impl Visit for WorkerEvent {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = Some(value.to_owned()),
            "fields" => self.fields = Some(value.to_owned()),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = Some(format!("{value:?}")),
            "fields" => self.fields = Some(format!("{value:?}")),
            _ => {}
        }
    }
}
