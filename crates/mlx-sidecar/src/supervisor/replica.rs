//! One replica: an owner task (and, with a standby, a keeper task) looking after one
//! worker on its own socket, with its own restart policy and health probes. The
//! [`crate::Supervisor`] runs one per configured replica.

use std::{path::PathBuf, sync::Arc};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{
    command::{ProcessSlot, SharedSlot},
    events::LifecycleEvent,
    owner::{Control, Owner},
    restart::RestartTracker,
    socket::{Cleanup, SocketPlace},
    standby::Keeper,
};
use crate::{
    Error,
    config::SupervisorConfig,
    worker::{WorkerState, WorkerView},
};

/// The handle of one replica's tasks; dropping it kills its workers (see
/// [`crate::Supervisor`]'s `Drop`).
#[derive(Debug)]
pub(crate) struct Replica {
    control: mpsc::Sender<Control>,
    pub(crate) view: watch::Receiver<WorkerView>,
    /// Lets `Drop` tell clients that no worker will come, even though it aborts the task.
    view_tx: watch::Sender<WorkerView>,
    slot: SharedSlot,
    task: Option<JoinHandle<()>>,
    /// The standby keeper's task, with [`SupervisorConfig::standby`].
    standby_task: Option<JoinHandle<()>>,
    pub(crate) socket_dir: PathBuf,
    /// The device this replica's workers are pinned to, if any.
    pub(crate) device: Option<String>,
    cleanup: Cleanup,
}

impl Replica {
    /// Prepares the replica's socket and spawns its worker (see [`crate::Supervisor::spawn`]);
    /// `config` is already this replica's (its device set).
    pub(crate) async fn spawn(
        config: SupervisorConfig,
        device: Option<String>,
        events: broadcast::Sender<LifecycleEvent>,
    ) -> Result<Replica, Error> {
        let socket = SocketPlace::prepare(&config)?;
        let socket_path = socket.path().to_path_buf();
        let socket_dir = socket.dir();
        let cleanup = socket.cleanup_target();
        let (view_tx, view_rx) = watch::channel(WorkerView {
            shadow_prefill: config.standby && config.shadow_prefill,
            ..WorkerView::initial(socket_path.clone())
        });
        let (control_tx, control_rx) = mpsc::channel(8);
        let (first_tx, first_rx) = oneshot::channel();
        let slot: SharedSlot = Arc::new(std::sync::Mutex::new(ProcessSlot::default()));
        let (standby, standby_task) = if config.standby {
            let (commands_tx, commands) = mpsc::unbounded_channel();
            let keeper = Keeper {
                config: config.clone(),
                slot: slot.clone(),
                view: view_tx.clone(),
                events: events.clone(),
                commands,
                restarts: RestartTracker::new(config.restart.clone()),
                gave_up: false,
            };
            (Some(commands_tx), Some(tokio::spawn(keeper.run())))
        } else {
            (None, None)
        };
        let owner = Owner {
            restarts: RestartTracker::new(config.restart.clone()),
            config,
            socket,
            view: view_tx.clone(),
            events,
            slot: slot.clone(),
            control: control_rx,
            first_spawn: Some(first_tx),
            generation: 0,
            shutdown_reply: None,
            active_socket: socket_path,
            standby,
        };
        let replica = Replica {
            control: control_tx,
            view: view_rx,
            view_tx,
            slot,
            task: Some(tokio::spawn(owner.run())),
            standby_task,
            socket_dir,
            device,
            cleanup,
        };
        match first_rx.await {
            Ok(Ok(())) => Ok(replica),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Stopped),
        }
    }

    /// Stops gracefully (see [`crate::Supervisor::shutdown`]).
    pub(crate) async fn shutdown(mut self) -> Result<(), Error> {
        let (reply_tx, reply_rx) = oneshot::channel();
        if self
            .control
            .send(Control::Shutdown { reply: reply_tx })
            .await
            .is_ok()
        {
            let _ = reply_rx.await;
        }
        for task in [self.task.take(), self.standby_task.take()]
            .into_iter()
            .flatten()
        {
            task.await.map_err(|e| {
                Error::io(
                    "the supervisor task failed",
                    std::io::Error::other(e.to_string()),
                )
            })?;
        }
        Ok(())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.slot.lock() {
            slot.closed = true;
            for pgid in slot.pgids.drain(..) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
        for task in [self.task.take(), self.standby_task.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        self.view_tx.send_modify(|v| {
            if v.state != WorkerState::GaveUp {
                v.state = WorkerState::Stopped;
            }
            v.alive = false;
            v.channel = None;
        });
        self.cleanup.run();
    }
}
