//! `mlx-sidecar generate`: one prompt in, streamed text out.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::Context;
use mlx_sidecar::{ChatMessage, GenerateRequest};

use super::args::{GenerateArgs, GlobalArgs};
use super::exit::{INTERRUPTED, UsageError};
use super::progress::StderrProgress;
use super::request;
use super::session::Session;
use super::stream::{self, Ended, Format, Interrupts};

/// Runs `generate`.
pub(crate) async fn run(
    global: &GlobalArgs,
    args: &GenerateArgs,
    progress: &StderrProgress,
) -> anyhow::Result<ExitCode> {
    let prompt = read_prompt(args.prompt.as_deref())?;
    let req = if args.raw {
        GenerateRequest::text(prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::system(system.clone()));
        }
        messages.push(ChatMessage::user(prompt));
        GenerateRequest::chat(messages)
    };
    let mut req = request::apply(req, &args.sampling);
    if let Some(path) = &args.json_schema {
        let schema = std::fs::read_to_string(path)
            .with_context(|| format!("reading the JSON schema {}", path.display()))?;
        req = req.json_schema(schema);
    } else if args.json_object {
        req = req.json_object();
    }
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };

    let mut interrupts = Interrupts::new()?;
    // Ctrl-C while the environment or the worker starts: dropping the start-up future
    // drops the supervisor, which stops the worker.
    let session = tokio::select! {
        session = Session::start(global, &args.daemon, progress) => session?,
        () = interrupts.next() => return Ok(ExitCode::from(INTERRUPTED)),
    };
    let result = match generate(&session, req, format, &mut interrupts).await {
        Err(e) => Err(session.explain(e).await),
        ok => ok,
    };
    session.shutdown(&mut interrupts).await;
    match result? {
        Ended::Finished { finished, .. } => {
            tracing::info!("{}", stream::summary(&finished));
            Ok(ExitCode::SUCCESS)
        }
        Ended::Interrupted => {
            eprintln!("mlx-sidecar: interrupted");
            Ok(ExitCode::from(INTERRUPTED))
        }
    }
}

async fn generate(
    session: &Session,
    req: GenerateRequest,
    format: Format,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Ended> {
    let stream = tokio::select! {
        stream = session.client().generate(req) => stream.context("generating")?,
        () = interrupts.next() => return Ok(Ended::Interrupted),
    };
    stream::print(stream, format, interrupts).await
}

/// The prompt: the argument, or stdin when there is none or it is "-".
fn read_prompt(arg: Option<&str>) -> anyhow::Result<String> {
    let prompt = match arg {
        Some(p) if p != "-" => p.to_owned(),
        _ => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("mlx-sidecar: reading the prompt from stdin (end with Ctrl-D)");
            }
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .context("reading the prompt from stdin")?;
            text.trim_end_matches(['\n', '\r']).to_owned()
        }
    };
    if prompt.trim().is_empty() {
        return Err(UsageError(
            "the prompt is empty: give it as an argument or on stdin".to_owned(),
        )
        .into());
    }
    Ok(prompt)
}
