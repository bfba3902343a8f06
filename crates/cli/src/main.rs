//! The `llama-gpu` command line: parses arguments and calls the library crates.

mod commands;

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "llama-gpu",
    version,
    about = "Run LLaMA-family models fast on CUDA or CPU"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command accepts.
#[derive(clap::Args, Clone)]
struct Common {
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, sizes, quant types, tokenizer and chat template.
    Inspect(commands::inspect::Args),
    /// Manage the content-addressed model store.
    Models(commands::models::Args),
    /// Generate text from a prompt (chat template applied unless --raw).
    Run(commands::run::Args),
    /// Chat interactively.
    Chat(commands::chat::Args),
    /// Print the token ids of a text as a JSON array.
    Tokenize(commands::tokenize::TokenizeArgs),
    /// Print the text of token ids.
    Detokenize(commands::tokenize::DetokenizeArgs),
    /// Measure perplexity on a text file (llama-perplexity compatible).
    Perplexity(commands::perplexity::Args),
    /// Measure prompt and generation speed (llama-bench compatible tests).
    Bench(commands::bench::Args),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(commands::serve::Args),
    /// Rewrite a GGUF model with its weights in another quant type.
    Quantize(commands::quantize::Args),
    /// Show the CPU, GPUs, CUDA libraries and cloud instance, and what --device auto picks.
    Doctor(commands::doctor::Args),
}

/// `serve` logs its requests by default; other commands only warnings.
fn init_logging(common: &Common, serving: bool) {
    let level = match common.verbose.max(serving as u8) {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LLAMA_GPU_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match common.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.common, matches!(cli.command, Command::Serve(_)));
    let result = match cli.command {
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Models(args) => commands::models::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Tokenize(args) => commands::tokenize::tokenize(args),
        Command::Detokenize(args) => commands::tokenize::detokenize(args),
        Command::Perplexity(args) => commands::perplexity::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Quantize(args) => commands::quantize::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Doctor(args) => commands::doctor::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let usage = e.downcast_ref::<commands::UsageError>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
