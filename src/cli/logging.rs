//! Logging: `tracing` to stderr. Quiet by default (warnings of this program, errors of the
//! worker); `-v` shows the worker's logs (re-emitted by the supervisor under the target
//! `mlx_worker` at their own level) and this program's info, `-vv` debug, `-vvv` trace.
//! `RUST_LOG` replaces the filter.
//!
//! A second layer taps the worker's info messages ("loading model", "startup", ...) into
//! the start-up spinner, so the user sees what the worker is doing without `-v`.

use std::io::IsTerminal;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use super::progress::StderrProgress;

/// Installs the global subscriber.
pub(crate) fn init(verbose: u8, progress: Arc<StderrProgress>) {
    let default = match verbose {
        0 => "warn,mlx_worker=error",
        1 => "info,h2=warn,tower=warn,hyper=warn",
        2 => "debug,h2=info,tower=info,hyper=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(verbose > 0)
        .without_time()
        .with_filter(filter);
    let tap =
        WorkerTap { progress }.with_filter(Targets::new().with_target("mlx_worker", Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(tap)
        .try_init();
}

/// Shows the worker's info-level messages as the spinner's detail.
struct WorkerTap {
    progress: Arc<StderrProgress>,
}

impl<S: Subscriber> Layer<S> for WorkerTap {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = MessageVisitor(None);
        event.record(&mut visitor);
        if let Some(message) = visitor.0 {
            self.progress.detail(&format!("worker: {message}"));
        }
    }
}

struct MessageVisitor(Option<String>);

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}
