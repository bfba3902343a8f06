//! `llama-gpu chat`: an interactive conversation. `/reset` clears the history,
//! `/system TEXT` sets the system message, `/quit` (or Ctrl-D) leaves; Ctrl-C stops the
//! reply being written without quitting.

use super::{
    load, on_worker_thread, ContentTokensArg, ModelArgs, SamplingArgs, SpeculationArgs, ThreadsArg,
};
use anyhow::{Context, Result};
use engine::{GenerateOptions, Message, Sampler, Session};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// System message.
    #[arg(long)]
    system: Option<String>,
    /// Tokens per reply at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 1024)]
    n_predict: usize,
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

pub fn run(args: Args) -> Result<()> {
    let params = args.sampling.params()?;
    args.threads.apply()?;
    let loaded = load(&args.model)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    let draft = args.speculation.load_draft(&args.model, &loaded)?;
    let mut session = Session::new(&loaded.model, loaded.context)?;
    if let Some(draft) = &draft {
        session.set_drafter(args.speculation.drafter(draft, &loaded)?);
    }
    let mut sampler = Sampler::new(params)?;
    let mut system = args.system.clone();
    let mut history: Vec<Message> = Vec::new();
    let options = GenerateOptions {
        max_tokens: args.n_predict,
        speculation: args.speculation.speculation()?,
        ..Default::default()
    };
    eprintln!("chat: /reset clears the history, /system TEXT sets the system message, /quit leaves; Ctrl-C stops a reply.");
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        print!("> ");
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                history.clear();
                session.reset();
                eprintln!("(history cleared)");
                continue;
            }
            s if s.starts_with("/system") => {
                let text = s.trim_start_matches("/system").trim();
                system = (!text.is_empty()).then(|| text.to_owned());
                history.clear();
                session.reset();
                eprintln!("(system message set; history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        let mut messages: Vec<Message> = system.iter().map(|s| Message::new("system", s)).collect();
        messages.extend(history.iter().cloned());
        let ids = loaded.template.encode(
            &loaded.tokenizer,
            &messages,
            true,
            &Default::default(),
            args.content_tokens.rule(),
        )?;
        interrupted.store(false, Ordering::SeqCst);
        let result = on_worker_thread(|| {
            session.generate(&loaded.tokenizer, &ids, &mut sampler, &options, |piece| {
                print!("{piece}");
                let _ = std::io::stdout().flush();
                !interrupted.load(Ordering::SeqCst)
            })
        });
        println!();
        match result {
            Ok(reply) => history.push(Message::new("assistant", &reply.text)),
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
            }
        }
    }
}
