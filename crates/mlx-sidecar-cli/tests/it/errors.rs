//! What the command prints when things go wrong, as a user sees it: a worker killed
//! mid-answer, a daemon's worker killed, a daemon killed, a wrong API key, a prompt too long.
//! Each message says what happened in plain words; transport words ("h2 protocol error")
//! and gRPC code names appear only with `-v`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cli::{Cli, DEADLINE, Running, text};

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Starts `cli` with stdout and stderr piped and waits until some output arrived.
/// The `Cli` comes back too: its environment directory holds the worker's source, which a
/// restarted worker imports, so it must outlive the command.
fn start_streaming(mut cli: Cli) -> (Child, mpsc::Receiver<Vec<u8>>, Cli) {
    let mut child = cli
        .cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx.recv_timeout(DEADLINE).expect("output began");
    (child, rx, cli)
}

/// Waits for `child` to end (within the deadline) and returns its output.
fn finish(mut child: Child) -> Output {
    let until = Instant::now() + DEADLINE;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the command did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn assert_plain(stderr: &str) {
    for word in [
        "h2 protocol",
        "Unknown:",
        "Unavailable:",
        "ResourceExhausted",
        "Unauthenticated",
    ] {
        assert!(!stderr.contains(word), "{word:?} leaked: {stderr}");
    }
}

#[test]
fn a_worker_killed_mid_answer_is_named_with_its_signal() {
    let (child, _out, _cli) = start_streaming(Cli::new().args([
        "--test-model",
        "generate",
        "--no-daemon",
        // The stream would resume on the next worker: this is about the message when it ends.
        "--no-resume",
        "--max-tokens",
        "1900",
        "hi",
    ]));
    let workers = children(child.id());
    assert_eq!(workers.len(), 1, "one worker: {workers:?}");
    sigkill(workers[0]);
    let out = finish(child);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the worker process was killed by signal 9 (SIGKILL) mid-answer, after"),
        "{stderr}"
    );
    assert!(stderr.contains("the text above is incomplete"), "{stderr}");
    assert_plain(&stderr);
}

#[test]
fn a_prompt_too_long_says_so_and_the_detail_is_behind_verbose() {
    let prompt = "hello world ".repeat(2000);
    let out = Cli::new()
        .args(["--test-model", "generate", "--no-daemon", &prompt])
        .run();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: the prompt is too long for the model: "),
        "{stderr}"
    );
    assert_plain(&stderr);

    let verbose = Cli::new()
        .args(["-v", "--test-model", "generate", "--no-daemon", &prompt])
        .run();
    let stderr = text(&verbose.stderr);
    assert!(
        stderr.contains("detail: ") && stderr.contains("ResourceExhausted"),
        "{stderr}"
    );
}

/// A `serve` process of the test model on a socket and a TCP port with an API key.
struct KeyedDaemon {
    serve: Running,
    socket: String,
    tcp: String,
    key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl KeyedDaemon {
    fn start() -> KeyedDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "right-key\n").expect("key");
        let socket = dir.path().join("d.sock");
        let mut serve = Cli::new()
            .args([
                "--test-model",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--socket",
            ])
            .arg(&socket)
            .arg("--api-key-file")
            .arg(&key_file)
            .spawn(Stdio::piped());
        let stderr = serve.child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let until = Instant::now() + DEADLINE;
        let tcp = loop {
            let line = rx
                .recv_timeout(until.saturating_duration_since(Instant::now()))
                .expect("a listening line");
            if let Some(tcp) = line.split("tcp:").nth(1) {
                break tcp.trim().to_owned();
            }
        };
        let daemon = KeyedDaemon {
            serve,
            socket: format!("unix:{}", socket.display()),
            tcp,
            key_file,
            _dir: dir,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&self) {
        let until = Instant::now() + DEADLINE;
        loop {
            let out = Cli::new().args(["status", "--connect", &self.socket]).run();
            if text(&out.stdout).contains("ready") {
                return;
            }
            assert!(
                Instant::now() < until,
                "the daemon's worker never got ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn daemon_clients_hear_what_happened_in_plain_words() {
    let daemon = KeyedDaemon::start();

    // A wrong key: the daemon is there, the key is not right (not "no daemon").
    let wrong = daemon.key_file.with_file_name("wrong");
    std::fs::write(&wrong, "wrong-key").expect("key");
    for command in [&["generate", "hi"][..], &["status"][..]] {
        let out = Cli::new()
            .args(command)
            .args(["--connect", &daemon.tcp, "--api-key-file"])
            .arg(&wrong)
            .run();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(
            stderr.contains("the daemon refused the API key"),
            "{command:?}: {stderr}"
        );
        assert_plain(&stderr);
    }

    // The daemon's worker killed mid-answer: the daemon is still there.
    let generate = || {
        Cli::new().args([
            "generate",
            "--connect",
            &daemon.socket,
            // The daemon would resume the stream: this is about the message when it ends.
            "--no-resume",
            "--max-tokens",
            "1900",
            "hi",
        ])
    };
    let (client, _out, _cli) = start_streaming(generate());
    let workers = children(daemon.serve.id());
    assert!(!workers.is_empty());
    workers.iter().for_each(|&pid| sigkill(pid));
    let out = finish(client);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the daemon's worker process died mid-answer, after"),
        "{stderr}"
    );
    assert_plain(&stderr);

    // The daemon itself killed mid-answer.
    daemon.wait_ready();
    let (client, _out, _cli) = start_streaming(generate());
    sigkill(daemon.serve.id());
    let out = finish(client);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the daemon stopped answering (it exited or was killed) mid-answer"),
        "{stderr}"
    );
    assert_plain(&stderr);
}
