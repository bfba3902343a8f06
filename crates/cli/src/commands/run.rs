//! `llama-gpu run`: one generation, streamed to stdout.

use super::{
    load, on_worker_thread, usage, ContentTokensArg, ModelArgs, SamplingArgs, SpeculationArgs,
    ThreadsArg,
};
use anyhow::{Context, Result};
use engine::{Constraint, EngineError, GenerateOptions, Grammars, Message, Sampler, Session};
use serde::Serialize;
use std::io::{Read, Write};

#[derive(clap::Args)]
pub struct Args {
    /// The prompt (read from stdin when absent).
    prompt: Option<String>,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n_predict: usize,
    /// Use the prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// System message for the chat template.
    #[arg(long)]
    system: Option<String>,
    /// Stop string (repeatable); it is not printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// With --raw, treat control tokens such as <|im_start|> in the prompt as plain text.
    #[arg(long, requires = "raw")]
    no_parse_special: bool,
    /// Keep only the last tokens of a prompt longer than the context.
    #[arg(long)]
    truncate: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Constrain the output to this JSON Schema (a file).
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    json_schema: Option<std::path::PathBuf>,
    /// Constrain the output to this grammar (a file: GBNF, or llguidance's Lark when it
    /// has no `::=` rules).
    #[arg(long, value_name = "FILE")]
    grammar: Option<std::path::PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    threads: ThreadsArg,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    content_tokens: ContentTokensArg,
    #[command(flatten)]
    speculation: SpeculationArgs,
}

#[derive(Serialize)]
struct Timings {
    prompt_tokens: usize,
    prompt_seconds: f64,
    prompt_tokens_per_second: f64,
    generated_tokens: usize,
    generation_seconds: f64,
    generation_tokens_per_second: f64,
    /// With `--spec`: tokens proposed and kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    speculation: Option<engine::SpeculationStats>,
}

#[derive(Serialize)]
struct Output<'a> {
    prompt_ids: &'a [u32],
    gen_ids: &'a [u32],
    text: &'a str,
    finish_reason: engine::FinishReason,
    timings: Timings,
}

fn read_prompt(arg: Option<String>) -> Result<String> {
    if let Some(p) = arg {
        return Ok(p);
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("reading the prompt from stdin")?;
    String::from_utf8(bytes).map_err(|e| {
        usage(format!(
            "the prompt on stdin is not valid UTF-8 (bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// The constraint `--json-schema` or `--grammar` names, read from its file.
fn constraint(args: &Args) -> Result<Option<Constraint>> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    if let Some(path) = &args.json_schema {
        let schema = serde_json::from_str(&read(path)?)
            .map_err(|e| usage(format!("{} is not JSON: {e}", path.display())))?;
        return Ok(Some(Constraint::JsonSchema {
            schema,
            strict: false,
        }));
    }
    Ok(args.grammar.as_deref().map(read).transpose()?.map(|g| {
        if g.contains("::=") {
            Constraint::Gbnf(g)
        } else {
            Constraint::Lark(g)
        }
    }))
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.n_predict == 0 {
        return Err(usage("-n must be at least 1"));
    }
    let params = args.sampling.params()?;
    let constraint = constraint(&args)?;
    let prompt = read_prompt(args.prompt)?;
    if prompt.is_empty() {
        return Err(usage("the prompt is empty"));
    }
    args.threads.apply()?;
    let loaded = load(&args.model)?;
    let mut ids = if args.raw {
        loaded
            .tokenizer
            .encode_prompt(&prompt, !args.no_parse_special)?
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", &prompt));
        loaded.template.encode(
            &loaded.tokenizer,
            &messages,
            true,
            &Default::default(),
            args.content_tokens.rule(),
        )?
    };
    let context = loaded.context;
    if ids.len() >= context {
        if !args.truncate {
            return Err(usage(format!(
                "{} (use --truncate to keep the last tokens, or raise -c)",
                EngineError::ContextOverflow {
                    tokens: ids.len(),
                    context
                }
            )));
        }
        ids.drain(..ids.len() - (context - 1));
    }
    let draft = args.speculation.load_draft(&args.model, &loaded)?;
    let mut session = Session::new(&loaded.model, context)?;
    if let Some(draft) = &draft {
        session.set_drafter(args.speculation.drafter(draft, &loaded)?);
    }
    let mut sampler = Sampler::new(params)?;
    let grammar = match constraint {
        Some(c) => {
            let grammars = Grammars::new(loaded.tokenizer.clone(), loaded.model.config.vocab_size)?;
            Some(grammars.compile(&c).map_err(|e| usage(e.to_string()))?)
        }
        None => None,
    };
    let options = GenerateOptions {
        max_tokens: args.n_predict,
        stop: args.stop,
        ignore_eos: args.ignore_eos,
        grammar,
        speculation: args.speculation.speculation()?,
    };
    let json = args.json;
    let generated = on_worker_thread(|| {
        session.generate(&loaded.tokenizer, &ids, &mut sampler, &options, |piece| {
            if !json {
                let mut stdout = std::io::stdout();
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
            true
        })
    })?;
    let mut stdout = std::io::stdout().lock();
    let timings = Timings {
        prompt_tokens: generated.prompt_computed,
        prompt_seconds: generated.prompt_seconds,
        prompt_tokens_per_second: rate(generated.prompt_computed, generated.prompt_seconds),
        generated_tokens: generated.tokens.len(),
        generation_seconds: generated.generation_seconds,
        generation_tokens_per_second: rate(generated.tokens.len(), generated.generation_seconds),
        speculation: args.speculation.enabled().then_some(generated.speculation),
    };
    if json {
        let out = Output {
            prompt_ids: &ids,
            gen_ids: &generated.tokens,
            text: &generated.text,
            finish_reason: generated.finish,
            timings,
        };
        writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
    } else {
        writeln!(stdout)?;
        eprintln!(
            "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s",
            timings.prompt_tokens,
            timings.prompt_tokens_per_second,
            timings.generated_tokens,
            timings.generation_tokens_per_second
        );
        if let Some(s) = timings.speculation {
            eprintln!(
                "speculation: {} of {} proposed tokens kept ({:.0} %)",
                s.accepted,
                s.drafted,
                100.0 * s.acceptance()
            );
        }
    }
    Ok(())
}
