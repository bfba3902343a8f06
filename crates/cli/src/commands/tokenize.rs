//! `llama-gpu tokenize` and `detokenize`.

use super::{resolve_model, usage};
use anyhow::{Context, Result};
use engine::Tokenizer;
use gguf::GgufFile;
use std::io::Read;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// Text to tokenize (or -f FILE, or stdin).
    text: Option<String>,
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Treat control tokens such as <|im_start|> as plain text.
    #[arg(long)]
    no_parse_special: bool,
    #[arg(short, long, env = "LLAMA_GPU_MODEL", default_value = "default")]
    model: String,
}

#[derive(clap::Args)]
pub struct DetokenizeArgs {
    /// Token ids: a JSON array or numbers separated by spaces/commas (or stdin).
    ids: Option<String>,
    #[arg(short, long, env = "LLAMA_GPU_MODEL", default_value = "default")]
    model: String,
}

fn tokenizer(model: &str) -> Result<Tokenizer> {
    let path = resolve_model(model)?;
    let file = GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Tokenizer::from_metadata(&file.gguf.metadata)?)
}

fn stdin_text() -> Result<String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("reading stdin")?;
    String::from_utf8(bytes).map_err(|_| usage("stdin is not valid UTF-8"))
}

pub fn tokenize(args: TokenizeArgs) -> Result<()> {
    let text = match (args.text, args.file) {
        (Some(_), Some(_)) => return Err(usage("give TEXT or -f FILE, not both")),
        (Some(t), None) => t,
        (None, Some(f)) => {
            let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            String::from_utf8(bytes)
                .map_err(|_| usage(format!("{} is not valid UTF-8", f.display())))?
        }
        (None, None) => stdin_text()?,
    };
    let tok = tokenizer(&args.model)?;
    let ids = tok.encode_prompt(&text, !args.no_parse_special)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

pub fn detokenize(args: DetokenizeArgs) -> Result<()> {
    let raw = match args.ids {
        Some(s) => s,
        None => stdin_text()?,
    };
    let ids = raw
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| usage(format!("{s:?} is not a token id")))
        })
        .collect::<Result<Vec<u32>>>()?;
    let tok = tokenizer(&args.model)?;
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= tok.vocab_size()) {
        return Err(usage(format!(
            "token id {bad} is outside the vocabulary of {}",
            tok.vocab_size()
        )));
    }
    println!("{}", tok.decode(&ids));
    Ok(())
}
