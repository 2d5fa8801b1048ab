//! The `mlx-sidecar` binary, run for real: it starts the real worker (with the repository's
//! `.venv` through `--python`, the fast path) on the tiny test model, or once on the default
//! model, and is checked from the outside: stdout, stderr, exit codes, signals.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, python as repo_python};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_mlx-sidecar");
pub(crate) const DEADLINE: Duration = Duration::from_secs(120);

/// The tiny random-weight model, written once per test run.
pub(crate) fn tiny_model() -> PathBuf {
    support::tiny_model().to_path_buf()
}

fn skip_default_model() -> bool {
    std::env::var_os("MLX_SIDECAR_SKIP_DEFAULT_MODEL").is_some()
}

/// A command for the binary with its own environment directory and cache, using the
/// repository's interpreter; variables that would change its behaviour are cleared.
pub(crate) struct Cli {
    pub(crate) cmd: Command,
    _scratch: tempfile::TempDir,
}

impl Cli {
    /// With the repository's interpreter (`--python`).
    pub(crate) fn new() -> Self {
        Cli::bare().arg("--python").arg(repo_python())
    }

    /// Without `--python`.
    fn bare() -> Self {
        let scratch = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(BIN);
        for var in [
            "MLX_SIDECAR_ENV_DIR",
            "MLX_SIDECAR_PYTHON",
            "MLX_SIDECAR_VARIANT",
            "MLX_SIDECAR_MODEL",
            "MLX_SIDECAR_SOCKET_DIR",
            "MLX_SIDECAR_SOCKET",
            "MLX_SIDECAR_CONNECT",
            "MLX_SIDECAR_API_KEY_FILE",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        // The default daemon socket lives here: never the user's daemon.
        cmd.env("XDG_RUNTIME_DIR", scratch.path());
        // Conversions of the default model are shared between tests when the test script
        // names a cache; otherwise each test converts into its own.
        if std::env::var_os("MLX_SIDECAR_CACHE_DIR").is_none() {
            cmd.env("MLX_SIDECAR_CACHE_DIR", scratch.path().join("cache"));
        }
        cmd.arg("--env-dir").arg(scratch.path().join("env"));
        Cli {
            cmd,
            _scratch: scratch,
        }
    }

    pub(crate) fn tiny() -> Self {
        let mut cli = Cli::new();
        cli.cmd.arg("--model").arg(tiny_model());
        cli
    }

    pub(crate) fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub(crate) fn run(self) -> Output {
        self.run_with_stdin("")
    }

    /// Starts the command in the background (a `serve`), stdin and stdout closed, stderr as
    /// given; see [`Running`].
    pub(crate) fn spawn(mut self, stderr: Stdio) -> Running {
        let child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn mlx-sidecar");
        Running {
            child,
            _scratch: self._scratch,
        }
    }

    fn run_with_stdin(mut self, input: &str) -> Output {
        let mut child = self
            .cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mlx-sidecar");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
        drop(stdin);
        wait_output(child, DEADLINE)
    }
}

/// A background `mlx-sidecar` and its [`Cli`]'s scratch dir, whose environment directory
/// holds the worker's source (imported lazily, and by every restarted worker): the dir
/// lives as long as the process, which is killed and reaped when this is dropped (also
/// when a test panics), before the dir is removed.
pub(crate) struct Running {
    pub(crate) child: Child,
    _scratch: tempfile::TempDir,
}

impl Running {
    /// The process id.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a child with a deadline (killing it if it passes) and collects its output.
fn wait_output(mut child: Child, deadline: Duration) -> Output {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stdout {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stderr {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(deadline) {
        Ok(status) => status.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("mlx-sidecar (pid {pid}) did not finish within {deadline:?}");
        }
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn finished_events(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["type"] == "finished").collect()
}

#[test]
fn generate_streams_json_events_on_the_tiny_model() {
    let out = Cli::tiny()
        .args([
            "generate",
            "Hello there",
            "--json",
            "--max-tokens",
            "12",
            "--ignore-eos",
        ])
        .run();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let events = json_lines(&out);
    let (last, chunks) = events.split_last().expect("events");
    assert_eq!(last["type"], "finished", "{last}");
    assert_eq!(last["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 12);
    assert!(
        last["usage"]["prompt_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    assert!(last["timings"]["time_to_first_token_ms"].as_f64().is_some());
    assert!(!chunks.is_empty());
    let mut tokens = 0;
    for c in chunks {
        assert_eq!(c["type"], "chunk", "{c}");
        assert!(c["text"].is_string());
        tokens += c["token_ids"].as_array().expect("token_ids").len();
    }
    assert_eq!(tokens, 12, "every generated token is in a chunk");
}

#[test]
fn generate_prints_text_and_reads_the_prompt_from_stdin() {
    // The same prompt as an argument, from stdin, and from stdin via "-": same tokens.
    let base = [
        "generate",
        "--raw",
        "--json",
        "--max-tokens",
        "3",
        "--ignore-eos",
    ];
    let from_arg = Cli::tiny().args(base).arg("Once upon a time").run();
    let from_stdin = Cli::tiny().args(base).run_with_stdin("Once upon a time\n");
    let from_dash = Cli::tiny()
        .args(base)
        .args(["-"])
        .run_with_stdin("Once upon a time");
    for out in [&from_arg, &from_stdin, &from_dash] {
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    }
    let prompt_tokens =
        |out: &Output| finished_events(&json_lines(out))[0]["usage"]["prompt_tokens"].as_u64();
    assert!(prompt_tokens(&from_arg).is_some());
    assert_eq!(prompt_tokens(&from_arg), prompt_tokens(&from_stdin));
    assert_eq!(prompt_tokens(&from_arg), prompt_tokens(&from_dash));

    // Text mode: exactly the chunks' text, then a newline.
    let out = Cli::tiny()
        .args([
            "generate",
            "Hi",
            "--max-tokens",
            "5",
            "--ignore-eos",
            "--seed",
            "7",
        ])
        .run();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let json = Cli::tiny()
        .args([
            "generate",
            "Hi",
            "--max-tokens",
            "5",
            "--ignore-eos",
            "--seed",
            "7",
            "--json",
        ])
        .run();
    let streamed: String = json_lines(&json)
        .iter()
        .filter_map(|e| e["text"].as_str().map(str::to_owned))
        .collect();
    let printed = text(&out.stdout);
    assert_eq!(
        printed.trim_end_matches('\n'),
        streamed.trim_end_matches('\n')
    );
    assert!(printed.ends_with('\n'));

    // An empty prompt is a usage error.
    let out = Cli::tiny().args(["generate"]).run_with_stdin("  \n");
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("prompt is empty"));
}

#[test]
fn bad_option_values_exit_2_and_name_the_option() {
    for (args, option) in [
        (
            vec!["generate", "hi", "--max-tokens", "lots"],
            "--max-tokens",
        ),
        (
            vec!["generate", "hi", "--temperature", "warm"],
            "--temperature",
        ),
        (vec!["--variant", "rocm", "doctor"], "--variant"),
        (
            vec!["generate", "hi", "--no-such-option"],
            "--no-such-option",
        ),
    ] {
        let out = Cli::tiny().args(&args).run();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(option),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn invalid_argument_from_the_worker_exits_2_naming_the_field() {
    let out = Cli::tiny().args(["generate", "hi", "--top-p", "1.5"]).run();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("top_p"), "{stderr}");
    assert!(stderr.contains("--top-p"), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = Cli::tiny()
        .args(["generate", "hi", "--max-tokens", "0"])
        .run();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("max_tokens") && stderr.contains("--max-tokens"),
        "{stderr}"
    );
}

#[test]
fn json_schema_constrains_the_answer_and_a_refused_one_names_the_option() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"n": {"type": "integer", "minimum": 1,
            "maximum": 9}, "ok": {"type": "boolean"}}, "required": ["n", "ok"],
            "additionalProperties": false}"#,
    )
    .expect("write the schema");
    let schema_arg = schema.to_str().expect("utf-8 path");
    let out = Cli::tiny()
        .args([
            "generate",
            "JSON:",
            "--raw",
            "--max-tokens",
            "500",
            "--json-schema",
            schema_arg,
        ])
        .run();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let answer: Value = serde_json::from_str(text(&out.stdout).trim()).expect("JSON on stdout");
    assert!(answer["ok"].is_boolean(), "{answer}");
    assert!(
        answer["n"].as_i64().is_some_and(|n| (1..=9).contains(&n)),
        "{answer}"
    );

    std::fs::write(&schema, r#"{"type": "array", "uniqueItems": true}"#).expect("write");
    let out = Cli::tiny()
        .args(["generate", "JSON:", "--raw", "--json-schema", schema_arg])
        .run();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("response_format.json_schema") && stderr.contains("--json-schema"),
        "{stderr}"
    );
}

#[test]
fn a_missing_interpreter_fails_with_exit_1_and_says_which() {
    let out = Cli::bare()
        .args(["--python", "/nonexistent/python3", "generate", "hi"])
        .run();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/python3"), "{stderr}");
}

#[test]
fn doctor_reports_ok_for_a_good_interpreter_and_fails_for_a_broken_one() {
    let out = Cli::new().args(["doctor"]).run();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    for name in ["python", "environment", "mlx", "model", "socket dir"] {
        let line = stdout
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join(" ")
                    .starts_with(name)
            })
            .unwrap_or_else(|| panic!("no {name} line in:\n{stdout}"));
        assert!(line.starts_with("ok"), "{line}");
    }
    assert!(stdout.contains("mlx 0.32.4"), "{stdout}");

    let out = Cli::new().args(["doctor", "--json"]).run();
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().expect("checks");
    assert!(checks.iter().all(|c| c["status"] != "fail"), "{report}");

    // An interpreter that does not exist: the python check fails with a fix; exit 1.
    let out = Cli::bare()
        .args(["--python", "/nonexistent/python3", "doctor", "--json"])
        .run();
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    assert_eq!(report["ok"], false);
    let python = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "python"))
        .expect("python check");
    assert_eq!(python["status"], "fail");
    assert!(
        python["fix"]
            .as_str()
            .is_some_and(|f| f.contains("--python"))
    );

    // A socket directory whose paths are too long for a Unix socket.
    let long = std::env::temp_dir().join("d".repeat(90));
    std::fs::create_dir_all(&long).expect("mkdir");
    let out = Cli::new()
        .args(["--socket-dir"])
        .arg(&long)
        .args(["doctor"])
        .run();
    let _ = std::fs::remove_dir(&long);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FAIL  socket dir") && stdout.contains("too long"),
        "{stdout}"
    );
}

#[test]
fn doctor_shows_the_workers_checks_and_fails_on_a_missing_model() {
    let out = Cli::new().args(["doctor", "--json"]).run();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    let checks = report["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    let check = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {report}"))
    };
    // The worker's checks come between the environment's and the socket directory's, and
    // its own python check is not repeated when it is ok.
    let mut expected = vec!["python", "environment", "mlx", "packages"];
    let cpu_backend = check("mlx")["message"]
        .as_str()
        .is_some_and(|m| m.contains("backend cpu"));
    if cfg!(target_os = "linux") && cpu_backend {
        expected.push("cpu blas");
    }
    expected.extend(["model", "cache", "socket dir"]);
    assert_eq!(names, expected, "{report}");
    assert!(
        check("packages")["message"]
            .as_str()
            .is_some_and(|m| m.contains("packages import")),
        "{report}"
    );
    assert!(
        check("model")["message"]
            .as_str()
            .is_some_and(|m| m.contains(".gguf")),
        "the default model is named: {report}"
    );

    // A model that does not exist: the worker's model check fails and names it; exit 1.
    let scratch = tempfile::tempdir().expect("tempdir");
    let missing = scratch.path().join("no-such-model.gguf");
    let out = Cli::new()
        .arg("--model")
        .arg(&missing)
        .args(["doctor"])
        .run();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("FAIL  model"))
        .unwrap_or_else(|| panic!("no failing model line in:\n{stdout}"));
    assert!(
        line.contains(&*missing.to_string_lossy()) && line.contains("does not exist"),
        "{line}"
    );
    assert!(stdout.contains("fix: pass --model"), "{stdout}");
}

#[test]
fn chat_keeps_the_conversation_and_resets_it() {
    let cli = Cli::tiny().args(["chat", "--json", "--max-tokens", "4", "--ignore-eos"]);
    let out = cli.run_with_stdin("Hello\nWhat did I say?\n/reset\nHello\n");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let events = json_lines(&out);
    let finished = finished_events(&events);
    assert_eq!(finished.len(), 3, "{events:?}");
    let prompt = |i: usize| {
        finished[i]["usage"]["prompt_tokens"]
            .as_u64()
            .expect("prompt_tokens")
    };
    // The second turn carries the first question and answer: its prompt is longer than
    // the first prompt plus the first reply.
    assert!(prompt(1) > prompt(0) + 4, "{} vs {}", prompt(1), prompt(0));
    // After /reset the conversation starts over.
    assert_eq!(prompt(2), prompt(0));
    assert!(text(&out.stderr).contains("conversation cleared"));
}

/// Sends SIGINT to a process.
fn interrupt(pid: u32) {
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// The worker's pid, from the supervisor's "worker starting" log line (-v).
fn worker_pid(stderr_line: &str) -> Option<u32> {
    if !stderr_line.contains("worker starting") {
        return None;
    }
    stderr_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
}

#[test]
fn ctrl_c_cancels_generation_exits_130_and_leaves_no_worker() {
    let mut cli = Cli::tiny().args([
        "-v",
        "generate",
        "Tell me a long story",
        "--json",
        "--max-tokens",
        "2000",
        "--ignore-eos",
    ]);
    let mut child = cli
        .cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    // Read stderr on a thread, picking out the worker's pid.
    let stderr = child.stderr.take().expect("stderr");
    let (pid_tx, pid_rx) = mpsc::channel();
    let err_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(p) = worker_pid(&line) {
                let _ = pid_tx.send(p);
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // Wait for the first streamed chunk, then press Ctrl-C.
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    assert!(first.contains("\"chunk\""), "first line: {first:?}");
    let worker = pid_rx
        .recv_timeout(DEADLINE)
        .expect("worker pid in the -v log");
    interrupt(pid);
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let status = {
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no exit after SIGINT"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let stderr = err_reader.join().expect("stderr reader");
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    assert!(
        !rest.contains("\"finished\""),
        "the generation was cut short: {rest}"
    );
    // The worker went with it.
    let started = Instant::now();
    while process_exists(worker) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "worker {worker} still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn default_model_knows_the_capital_of_france() {
    if skip_default_model() {
        eprintln!("MLX_SIDECAR_SKIP_DEFAULT_MODEL is set: skipping");
        return;
    }
    let mut cli = Cli::new().args([
        "generate",
        "What is the capital of France?",
        "--max-tokens",
        "24",
    ]);
    let started = Instant::now();
    let mut child = cli
        .cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 1];
    let n = stdout.read(&mut first).expect("read");
    let first_byte = started.elapsed();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("read");
    let out = wait_output(child, DEADLINE);
    let answer = format!("{}{}", text(&first[..n]), text(&rest));
    eprintln!(
        "first output after {first_byte:?} (process start, worker start, prefill); answer: {answer:?}"
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(answer.contains("Paris"), "{answer:?}");
}

#[test]
fn ctrl_c_in_chat_stops_the_reply_and_keeps_the_session() {
    let mut cli = Cli::tiny().args(["chat", "--json", "--max-tokens", "2000", "--ignore-eos"]);
    let mut child = cli
        .cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let stderr = child.stderr.take().expect("stderr");
    let (line_tx, line_rx) = mpsc::channel::<String>();
    let err_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });

    writeln!(stdin, "Tell me a long story").expect("write");
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first chunk");
    assert!(first.contains("\"chunk\""), "{first:?}");
    interrupt(pid);
    // The reply stops (no finished event for it) and the session says so.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = line_rx
            .recv_timeout(left)
            .expect("\"reply stopped\" on stderr");
        if line.contains("reply stopped") {
            break;
        }
    }
    // The same session answers the next question, then ends at EOF with exit 0.
    writeln!(stdin, "Hello").expect("write");
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("rest");
    let out = wait_output(child, DEADLINE);
    let _ = err_reader.join();
    assert!(out.status.success(), "{:?}", out.status);
    let finished: Vec<Value> = rest
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "finished")
        .collect();
    assert_eq!(finished.len(), 1, "only the second reply finished: {rest}");
    assert_eq!(finished[0]["usage"]["completion_tokens"], 2000);
}

#[test]
fn a_closed_stdout_ends_generation_quietly() {
    let mut cli = Cli::tiny().args([
        "generate",
        "hi",
        "--json",
        "--max-tokens",
        "2000",
        "--ignore-eos",
    ]);
    let mut child = cli
        .cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    drop(stdout);
    let out = wait_output(child, DEADLINE);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "stderr: {stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn a_model_that_does_not_load_fails_at_once_with_the_workers_reason() {
    let scratch = tempfile::tempdir().expect("tempdir");
    std::fs::write(scratch.path().join("config.json"), "{}").expect("write");
    let started = Instant::now();
    let out = Cli::new()
        .arg("--model")
        .arg(scratch.path())
        .args(["generate", "hi"])
        .run();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exited while starting"), "{stderr}");
    assert!(
        stderr.contains("model_type"),
        "the worker's own reason: {stderr}"
    );
    // Not after a series of restarts.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    let out = Cli::new()
        .args(["--model", "/nonexistent/model.gguf", "generate", "hi"])
        .run();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--model /nonexistent/model.gguf"));
}
