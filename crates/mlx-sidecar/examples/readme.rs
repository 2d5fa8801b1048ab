//! The README's library example ("Using the library"), compiled and checked against the
//! README by `tests/it/readme.rs`: keep the two alike.
//!
//! `cargo run --release -p mlx-sidecar --example readme`

use mlx_sidecar::env::{self, EnvOptions, NoProgress};
use mlx_sidecar::{
    ChatMessage, GenerateEvent, GenerateRequest, Supervisor, SupervisorConfig, WorkerCommand,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // README: begin
    // The managed Python environment (made on first use, reused after), or your own interpreter.
    let py = env::ensure(&EnvOptions::default(), &NoProgress).await?;
    let worker = WorkerCommand::new(py.python, py.worker_dir); // .with_model("model.gguf")
    let supervisor = Supervisor::spawn(SupervisorConfig::new(worker)).await?;
    supervisor
        .wait_ready(std::time::Duration::from_secs(300))
        .await?;

    let client = supervisor.client(); // Clone it freely.
    let request = GenerateRequest::chat(vec![ChatMessage::user("Name three rivers.")])
        .max_tokens(64)
        .temperature(0.7)
        .seed(1)
        .deadline(std::time::Duration::from_secs(30));
    let mut stream = client.generate(request).await?;
    while let Some(event) = stream.next_event().await {
        match event? {
            GenerateEvent::Token { text, .. } => print!("{text}"),
            GenerateEvent::Finished(done) => {
                println!("\n[{:?}, {:?}]", done.finish_reason, done.usage)
            }
        }
    }
    supervisor.shutdown().await?; // Drains, then stops.
    // README: end
    Ok(())
}
