//! Streams one chat answer for the prompt given on the command line (`readme.rs` is the
//! README's example as it is written there).
//!
//! `cargo run --release -p mlx-sidecar --example generate -- "Name three rivers."`

use std::time::Duration;

use mlx_sidecar::env::{self, EnvOptions, NoProgress};
use mlx_sidecar::{
    ChatMessage, GenerateEvent, GenerateRequest, Supervisor, SupervisorConfig, WorkerCommand,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What is the capital of France?".to_owned());

    // The managed Python environment (made on first use, reused after), or your own interpreter.
    let py = env::ensure(&EnvOptions::default(), &NoProgress).await?;
    let worker = WorkerCommand::new(py.python, py.worker_dir);
    let supervisor = Supervisor::spawn(SupervisorConfig::new(worker)).await?;
    supervisor.wait_ready(Duration::from_secs(120)).await?;

    let client = supervisor.client();
    let request = GenerateRequest::chat(vec![ChatMessage::user(prompt)])
        .max_tokens(64)
        .deadline(Duration::from_secs(60));
    let mut stream = client.generate(request).await?;
    while let Some(event) = stream.next_event().await {
        match event? {
            GenerateEvent::Token { text, .. } => print!("{text}"),
            GenerateEvent::Finished(done) => {
                println!("\n[{:?}, {:?}]", done.finish_reason, done.usage)
            }
        }
    }
    supervisor.shutdown().await?;
    Ok(())
}
