//! What the client and the supervisor share, so that neither imports the other: the
//! Unix-socket `transport` both dial the worker with, the worker `state` the supervisor
//! publishes on a `watch` channel and clients read to find the current worker, and the
//! gRPC `health` check both ask the worker with, and the `pool` of replicas (one view and
//! one in-flight counter each) a call picks the least loaded ready worker from.
//!
//! The supervisor writes [`WorkerView`]s; a supervised [`crate::Client`] only reads them.

pub(crate) mod health;
mod pool;
mod state;
pub(crate) mod transport;

pub(crate) use pool::{LoadGuard, Member, Replicas, WorkerId, pool_state};
pub use state::{ExitStatusInfo, WorkerState};
pub(crate) use state::{GaveUpInfo, WorkerView};
