//! One module per subcommand.

pub mod inspect;
pub mod models;

use anyhow::Context;
use std::path::PathBuf;

/// Resolves a model argument to a file, pulling known models on first use.
pub fn resolve_model(model: &str) -> anyhow::Result<PathBuf> {
    let store = store::Store::open_default().context("opening the model store")?;
    store
        .resolve(model)
        .with_context(|| format!("resolving model {model:?}"))
}
