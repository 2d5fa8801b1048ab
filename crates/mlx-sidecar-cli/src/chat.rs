//! `mlx-sidecar chat`: an interactive conversation. Lines are read with rustyline (line
//! editing and history on a terminal, plain lines from a pipe) on a blocking thread; each
//! turn sends the whole conversation, rendered with the model's chat template.
//!
//! `/reset` forgets the conversation (the system message stays), `/exit` or Ctrl-D ends it.
//! Ctrl-C while a reply is written stops that reply (it is left out of the history) and
//! keeps the session; Ctrl-C at the prompt clears the line.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use mlx_sidecar::{ChatMessage, GenerateRequest};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use super::args::{ChatArgs, GlobalArgs};
use super::exit::{INTERRUPTED, StdoutClosed};
use super::explain;
use super::progress::StderrProgress;
use super::request;
use super::session::Session;
use super::stream::{self, Ended, Format, Interrupts};

const PROMPT: &str = "> ";

/// What a line typed at the prompt asks for.
#[derive(Debug, PartialEq, Eq)]
enum Input {
    Say(String),
    Reset,
    Exit,
    Nothing,
    Unknown(String),
}

fn parse(line: &str) -> Input {
    let t = line.trim();
    match t {
        "" => Input::Nothing,
        "/exit" | "/quit" => Input::Exit,
        "/reset" => Input::Reset,
        _ if t.starts_with('/') => Input::Unknown(t.to_owned()),
        _ => Input::Say(t.to_owned()),
    }
}

/// Runs `chat`.
pub(crate) async fn run(
    global: &GlobalArgs,
    args: &ChatArgs,
    progress: &StderrProgress,
) -> anyhow::Result<ExitCode> {
    let mut interrupts = Interrupts::new()?;
    let session = tokio::select! {
        session = Session::start(global, &args.daemon, progress) => session?,
        () = interrupts.next() => return Ok(ExitCode::from(INTERRUPTED)),
    };
    let result = converse(&session, args, &mut interrupts).await;
    session.shutdown(&mut interrupts).await;
    result
}

async fn converse(
    session: &Session,
    args: &ChatArgs,
    interrupts: &mut Interrupts,
) -> anyhow::Result<ExitCode> {
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "Chatting with the model. /reset forgets the conversation, /exit or Ctrl-D quits, \
             Ctrl-C stops a reply."
        );
    }
    let opening: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::system(s.clone()))
        .collect();
    let mut history = opening.clone();
    let mut editor = Some(DefaultEditor::new().context("starting the line editor")?);
    loop {
        let Some(mut ed) = editor.take() else {
            break;
        };
        let read = tokio::task::spawn_blocking(move || {
            let line = ed.readline(PROMPT);
            (ed, line)
        });
        // Ctrl-C while waiting for a line that is not typed on a terminal (a pipe) ends the
        // chat; on a terminal rustyline sees Ctrl-C itself, as a key.
        let (ed, line) = tokio::select! {
            read = read => read.context("reading a line")?,
            () = interrupts.next(), if !interactive => return Ok(ExitCode::from(INTERRUPTED)),
        };
        editor = Some(ed);
        let line = match line {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading a line"),
        };
        match parse(&line) {
            Input::Nothing => continue,
            Input::Exit => break,
            Input::Reset => {
                history.clone_from(&opening);
                eprintln!("(conversation cleared)");
                continue;
            }
            Input::Unknown(cmd) => {
                eprintln!("unknown command {cmd}: try /reset or /exit");
                continue;
            }
            Input::Say(text) => {
                if let Some(ed) = editor.as_mut() {
                    let _ = ed.add_history_entry(text.as_str());
                }
                history.push(ChatMessage::user(text));
            }
        }
        let req = request::apply(GenerateRequest::chat(history.clone()), &args.sampling);
        match reply(session, req, format, interrupts).await {
            Ok(Ended::Finished { finished, text }) => {
                tracing::info!("{}", stream::summary(&finished));
                history.push(ChatMessage::assistant(text));
            }
            Ok(Ended::Interrupted) => {
                history.pop();
                eprintln!("(reply stopped)");
            }
            Err(e) if is_fatal(&e) => return Err(session.explain(e).await),
            Err(e) => {
                let e = session.explain(e).await;
                history.pop();
                eprintln!("mlx-sidecar: error: {}", explain::describe_now(&e));
                if code_of(&e) == Some(tonic::Code::ResourceExhausted) {
                    eprintln!("(the conversation may be too long for the model: try /reset)");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn reply(
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

fn code_of(err: &anyhow::Error) -> Option<tonic::Code> {
    err.chain()
        .find_map(|c| c.downcast_ref::<mlx_sidecar::Error>())
        .map(mlx_sidecar::Error::code)
}

/// Errors that every following turn would hit too: bad options, a worker that is gone for
/// good, or nobody reading stdout any more.
fn is_fatal(err: &anyhow::Error) -> bool {
    let gave_up = err.chain().any(|c| {
        matches!(
            c.downcast_ref::<mlx_sidecar::Error>(),
            Some(mlx_sidecar::Error::GaveUp { .. } | mlx_sidecar::Error::Stopped)
        )
    });
    let closed = err
        .chain()
        .any(|c| c.downcast_ref::<StdoutClosed>().is_some());
    gave_up || closed || code_of(err) == Some(tonic::Code::InvalidArgument)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse("  /exit "), Input::Exit);
        assert_eq!(parse("/reset"), Input::Reset);
        assert_eq!(parse("/nope"), Input::Unknown("/nope".into()));
        assert_eq!(parse("   "), Input::Nothing);
        assert_eq!(parse(" hi there "), Input::Say("hi there".into()));
    }
}
