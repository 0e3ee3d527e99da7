//! `loraplex`: the command line. Configuration is parsed here, once, into plain structs that are
//! passed down; nothing below `main` reads the environment.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loraplex",
    version,
    about = "Serve one base model with many LoRA adapters"
)]
struct Cli {
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long, global = true, env = "LORAPLEX_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for one prompt.
    Generate(cli::generate::GenerateArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(Box<cli::serve::ServeArgs>),
    /// Manage a running server's adapters (upload, pull, list, show, delete).
    Adapters(cli::adapters::AdaptersArgs),
    /// Manage a running server's routes and experiments (create, list, show, update, stop,
    /// report).
    Experiments(cli::experiments::ExperimentsArgs),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,loraplex=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // candle's GEMM reads RAYON_NUM_THREADS; the quantized kernels use rayon's global pool.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    let hub = cli::hub_options_from_env();
    match cli.command {
        Command::Generate(args) => cli::generate::run(args, hub)?,
        Command::Serve(args) => cli::serve::run(*args, hub)?,
        Command::Adapters(args) => return Ok(cli::adapters::run(args)),
        Command::Experiments(args) => return Ok(cli::experiments::run(args)),
    }
    Ok(std::process::ExitCode::SUCCESS)
}
