//! `llama-gpu models pull|list|rm|verify|import`.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use store::Store;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Fetch a model: `default`, `hf:OWNER/REPO/FILE.gguf`, an https URL, or a file.
    Pull {
        source: String,
        /// Refuse the download unless its SHA-256 is this.
        #[arg(long)]
        sha256: Option<String>,
    },
    /// List installed models.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a model (its blob too, when nothing else refers to it).
    Rm { name: String },
    /// Re-hash every blob and report any that no longer match.
    Verify,
    /// Copy a local GGUF file into the store.
    Import {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

pub fn run(args: Args) -> Result<()> {
    let store = Store::open_default().context("opening the model store")?;
    match args.command {
        Command::Pull { source, sha256 } => {
            let m = store
                .pull(&source, sha256.as_deref())
                .with_context(|| format!("pulling {source}"))?;
            println!("{} sha256:{} {}", m.name, m.digest, human_size(m.size));
        }
        Command::List { json } => {
            let models = store.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&models)?);
            } else {
                println!("{:<32} {:<12} {:>10}  SOURCE", "NAME", "DIGEST", "SIZE");
                for m in models {
                    println!(
                        "{:<32} {:<12} {:>10}  {}",
                        m.name,
                        &m.digest[..12.min(m.digest.len())],
                        human_size(m.size),
                        m.source
                    );
                }
            }
        }
        Command::Rm { name } => {
            let m = store
                .remove(&name)
                .with_context(|| format!("removing {name}"))?;
            println!(
                "removed {} ({})",
                m.name,
                &m.digest[..12.min(m.digest.len())]
            );
        }
        Command::Verify => {
            let checks = store.verify()?;
            let bad = checks.iter().filter(|c| !c.ok).count();
            for c in &checks {
                let status = if c.ok { "ok" } else { "CORRUPT" };
                println!(
                    "{status:<8} {} {}",
                    &c.digest[..12.min(c.digest.len())],
                    c.names.join(",")
                );
            }
            if bad > 0 {
                bail!(
                    "{bad} of {} blobs failed verification: `models rm` them and pull again",
                    checks.len()
                );
            }
        }
        Command::Import { file, name } => {
            let m = store
                .import(&file, name.as_deref())
                .with_context(|| format!("importing {}", file.display()))?;
            println!("{} sha256:{} {}", m.name, m.digest, human_size(m.size));
        }
    }
    Ok(())
}
