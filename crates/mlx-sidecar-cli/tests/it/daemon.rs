//! `mlx-sidecar serve`, `status`, and `generate` through a daemon: the real binary on the tiny
//! model, each daemon on its own socket in its own temp dir (never the user's default one).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{Cli, DEADLINE, Running, json_lines, text};

/// A `serve` process on its own socket; killed if the test ends without stopping it.
struct Daemon {
    serve: Running,
    socket: PathBuf,
    /// The daemon's stderr lines, as they come.
    stderr: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `serve` on the tiny model and waits until its worker is ready.
    fn start(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("d.sock");
        let mut serve = Cli::tiny()
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .spawn(Stdio::piped());
        let (tx, stderr) = mpsc::channel();
        let pipe = serve.child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let daemon = Daemon {
            serve,
            socket,
            stderr,
            _dir: dir,
        };
        let listening = daemon.line_with("listening on");
        assert!(
            listening.contains(&format!("unix:{}", daemon.socket.display())),
            "{listening}"
        );
        let until = Instant::now() + DEADLINE;
        while daemon.status()["worker_state"] != "ready" {
            assert!(
                Instant::now() < until,
                "the daemon's worker never got ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    /// The next stderr line containing `needle` (panics after the deadline).
    fn line_with(&self, needle: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no stderr line with {needle:?}: {e}"),
            }
        }
    }

    fn connect(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// `status --json`, or Null when it fails.
    fn status(&self) -> Value {
        let out = Cli::new()
            .args(["status", "--json", "--connect"])
            .arg(self.connect())
            .run();
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Sends SIGTERM and waits for the exit code.
    fn terminate(mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.serve.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.serve.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(Instant::now() < until, "serve did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn socket_exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

#[test]
fn serve_status_generate_through_it_refuse_a_second_and_stop_on_sigterm() {
    let daemon = Daemon::start(&[]);
    let before = daemon.status();
    assert_eq!(before["model_id"], "tiny", "{before}");
    let worker = before["worker_pid"].as_u64().expect("worker pid");
    assert!(
        crate::support::procfs::children_running(daemon.serve.id(), "mlx_worker")
            .contains(&(worker as u32))
    );

    // The plain status lines name the model and the worker.
    let out = Cli::new()
        .args(["status", "--connect"])
        .arg(daemon.connect())
        .run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = text(&out.stdout);
    assert!(lines.contains("model      tiny"), "{lines}");
    assert!(lines.contains(&format!("pid {worker}")), "{lines}");

    // generate goes through the daemon: no worker of its own, the daemon's unchanged.
    let out = Cli::new()
        .args(["-v", "generate", "--json", "--max-tokens", "4", "--connect"])
        .arg(daemon.connect())
        .arg("hello")
        .run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = json_lines(&out);
    assert!(events.iter().any(|e| e["type"] == "finished"), "{events:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("using the daemon"), "{stderr}");
    assert!(!stderr.contains("worker starting"), "{stderr}");
    let after = daemon.status();
    assert_eq!(after["worker_pid"], before["worker_pid"]);
    assert_eq!(after["worker_restarts"], 0);

    // A second daemon on the same socket is refused.
    let out = Cli::tiny()
        .args(["serve", "--socket"])
        .arg(&daemon.socket)
        .run();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("another mlx-sidecar serve is running on"),
        "{stderr}"
    );

    let socket = daemon.socket.clone();
    assert_eq!(daemon.terminate(), Some(0));
    assert!(!socket_exists(&socket), "the socket was left behind");
}

#[test]
fn generate_uses_a_daemon_on_the_default_socket_unless_no_daemon() {
    // XDG_RUNTIME_DIR points into this test's dir, so the default socket is its own.
    let runtime = tempfile::tempdir().expect("tempdir");
    let socket = runtime.path().join("mlx-sidecar").join("daemon.sock");
    let mut cli = Cli::tiny().arg("serve");
    cli.cmd.env("XDG_RUNTIME_DIR", runtime.path());
    let mut serve = cli.spawn(Stdio::null());
    let until = Instant::now() + DEADLINE;
    let ready = || {
        let mut status = Cli::new().args(["status", "--json"]);
        status.cmd.env("XDG_RUNTIME_DIR", runtime.path());
        let out = status.run();
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout).expect("JSON")["worker_state"]
                == "ready"
    };
    while !ready() {
        assert!(Instant::now() < until, "the daemon never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Without options (and without --model) the daemon answers.
    let mut auto = Cli::new().args(["-v", "generate", "--max-tokens", "2", "hi"]);
    auto.cmd.env("XDG_RUNTIME_DIR", runtime.path());
    let out = auto.run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("using the daemon"), "{stderr}");
    assert!(!stderr.contains("worker starting"), "{stderr}");

    // --no-daemon starts an own worker although the daemon serves.
    let mut own = Cli::tiny().args(["-v", "generate", "--no-daemon", "--max-tokens", "2", "hi"]);
    own.cmd.env("XDG_RUNTIME_DIR", runtime.path());
    let out = own.run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("worker starting"), "{stderr}");
    assert!(!stderr.contains("using the daemon"), "{stderr}");

    let pid = nix::unistd::Pid::from_raw(serve.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = serve.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(!socket_exists(&socket));
}

#[test]
fn listen_on_all_addresses_without_a_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Cli::tiny()
        .args(["serve", "--listen", "0.0.0.0:0", "--socket"])
        .arg(dir.path().join("d.sock"))
        .run();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without an API key"),
        "{stderr}"
    );
}

#[test]
fn connect_or_status_where_nothing_listens_exits_1_saying_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nothing.sock");
    for command in [&["generate", "hi"][..], &["status"][..]] {
        let out = Cli::new()
            .args(command)
            .arg("--connect")
            .arg(format!("unix:{}", socket.display()))
            .run();
        assert_eq!(out.status.code(), Some(1), "{command:?}");
        let stderr = text(&out.stderr);
        let expected = format!(
            "no daemon answers on {} (no socket there); start one with `mlx-sidecar serve`",
            socket.display()
        );
        assert!(stderr.contains(&expected), "{command:?}: {stderr}");
    }
}
