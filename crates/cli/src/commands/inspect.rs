//! `llama-gpu inspect MODEL`: what a GGUF file holds, without loading the weights.

use super::resolve_model;
use anyhow::{Context, Result};
use gguf::{GgufFile, Metadata};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF path, a store name (`default`) or a SHA-256 prefix.
    #[arg(default_value = "default")]
    model: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    path: String,
    file_size: u64,
    gguf_version: u32,
    architecture: String,
    name: Option<String>,
    parameters: u64,
    context_length: Option<u32>,
    layers: Option<u32>,
    embedding_length: Option<u32>,
    feed_forward_length: Option<u32>,
    heads: Option<u32>,
    kv_heads: Option<u32>,
    rope: Rope,
    /// The shape and family rules as the engine reads them...
    model: Option<Model>,
    /// ...or why it cannot run the file.
    unsupported: Option<String>,
    tensor_count: usize,
    tensor_types: BTreeMap<String, usize>,
    tokenizer: Tokenizer,
    chat_template: Option<String>,
}

#[derive(Serialize)]
struct Model {
    head_dim: usize,
    rope_neox: bool,
    qk_norm: bool,
    post_norms: bool,
    activation: &'static str,
    embedding_scale: Option<f32>,
    query_scale: Option<f32>,
    sliding_window: Option<usize>,
    /// Layers that attend through the window.
    windowed_layers: Vec<usize>,
    sliding_window_rope_base: Option<f32>,
    attention_softcap: Option<f32>,
    final_softcap: Option<f32>,
    /// Layers that attend without RoPE.
    no_rope_layers: Vec<usize>,
}

impl Model {
    fn of(c: &engine::Config) -> Model {
        let window = c.sliding_window.as_ref();
        Model {
            head_dim: c.head_dim,
            rope_neox: c.rope_neox,
            qk_norm: c.qk_norm,
            post_norms: c.post_norms,
            activation: match c.activation {
                engine::config::Activation::Silu => "silu",
                engine::config::Activation::GeluTanh => "gelu-tanh",
            },
            embedding_scale: c.embedding_scale,
            query_scale: c.query_scale,
            sliding_window: window.map(|w| w.size),
            windowed_layers: (0..c.n_layers).filter(|&l| c.is_windowed(l)).collect(),
            sliding_window_rope_base: window.map(|w| w.rope_base),
            attention_softcap: c.attention_softcap,
            final_softcap: c.final_softcap,
            no_rope_layers: (0..c.n_layers).filter(|&l| !c.uses_rope(l)).collect(),
        }
    }
}

#[derive(Serialize)]
struct Rope {
    freq_base: Option<f32>,
    dimension_count: Option<u32>,
    scaling_type: Option<String>,
    scaling_factor: Option<f32>,
}

#[derive(Serialize)]
struct Tokenizer {
    model: Option<String>,
    pre: Option<String>,
    vocab_size: Option<usize>,
    special_tokens: BTreeMap<String, SpecialToken>,
    add_bos_token: Option<bool>,
}

#[derive(Serialize)]
struct SpecialToken {
    id: u32,
    text: Option<String>,
}

fn report(file: &GgufFile) -> Result<Report> {
    let g = &file.gguf;
    let m = &g.metadata;
    let arch = g
        .architecture()
        .context("reading the architecture")?
        .to_owned();
    let key = |k: &str| format!("{arch}.{k}");
    let tokens = m.get_str_array("tokenizer.ggml.tokens").ok();
    let mut special_tokens = BTreeMap::new();
    for kind in ["bos", "eos", "eot", "unknown", "padding", "sep", "mask"] {
        if let Ok(id) = m.get_u32(&format!("tokenizer.ggml.{kind}_token_id")) {
            let text = tokens
                .as_ref()
                .and_then(|t| t.get(id as usize))
                .map(|s| s.to_string());
            special_tokens.insert(kind.to_owned(), SpecialToken { id, text });
        }
    }
    let config = engine::Config::from_metadata(m);
    let mut tensor_types = BTreeMap::new();
    for t in &g.tensors {
        *tensor_types.entry(t.ty.name().to_owned()).or_insert(0) += 1;
    }
    Ok(Report {
        path: file.path.display().to_string(),
        file_size: file.file_size(),
        gguf_version: g.version,
        name: m.get_str("general.name").ok().map(str::to_owned),
        parameters: g.tensors.iter().map(|t| t.n_elements()).sum(),
        context_length: m.get_u32(&key("context_length")).ok(),
        layers: m.get_u32(&key("block_count")).ok(),
        embedding_length: m.get_u32(&key("embedding_length")).ok(),
        feed_forward_length: m.get_u32(&key("feed_forward_length")).ok(),
        heads: m.get_u32(&key("attention.head_count")).ok(),
        kv_heads: m.get_u32(&key("attention.head_count_kv")).ok(),
        rope: Rope {
            freq_base: m.get_f32(&key("rope.freq_base")).ok(),
            dimension_count: m.get_u32(&key("rope.dimension_count")).ok(),
            scaling_type: m.get_str(&key("rope.scaling.type")).ok().map(str::to_owned),
            scaling_factor: m.get_f32(&key("rope.scaling.factor")).ok(),
        },
        model: config.as_ref().ok().map(Model::of),
        unsupported: config.as_ref().err().map(|e| e.to_string()),
        tensor_count: g.tensors.len(),
        tensor_types,
        tokenizer: Tokenizer {
            model: str_of(m, "tokenizer.ggml.model"),
            pre: str_of(m, "tokenizer.ggml.pre"),
            vocab_size: tokens.as_ref().map(|t| t.len()),
            special_tokens,
            add_bos_token: m.get_bool("tokenizer.ggml.add_bos_token").ok(),
        },
        chat_template: str_of(m, "tokenizer.chat_template"),
        architecture: arch,
    })
}

fn str_of(m: &Metadata, key: &str) -> Option<String> {
    m.get_str(key).ok().map(str::to_owned)
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), T::to_string)
}

fn print_text(r: &Report) {
    println!(
        "file          {} ({:.1} MB, GGUF v{})",
        r.path,
        r.file_size as f64 / 1e6,
        r.gguf_version
    );
    println!(
        "architecture  {}{}",
        r.architecture,
        r.name
            .as_ref()
            .map(|n| format!("  ({n})"))
            .unwrap_or_default()
    );
    println!("parameters    {:.1}M", r.parameters as f64 / 1e6);
    println!("context       {}", opt(&r.context_length));
    println!("layers        {}", opt(&r.layers));
    println!(
        "embedding     {}   feed-forward {}",
        opt(&r.embedding_length),
        opt(&r.feed_forward_length)
    );
    let head_dim = r
        .model
        .as_ref()
        .map_or("-".into(), |m| m.head_dim.to_string());
    println!(
        "heads         {} (kv {}), head dim {head_dim}",
        opt(&r.heads),
        opt(&r.kv_heads)
    );
    if let Some(why) = &r.unsupported {
        println!("runs          no: {why}");
    }
    if let Some(m) = &r.model {
        let mut rules = vec![m.activation.to_string()];
        rules.extend(m.qk_norm.then(|| "qk-norm".to_string()));
        rules.extend(m.post_norms.then(|| "post-norms".to_string()));
        rules.extend(m.embedding_scale.map(|s| format!("embeddings x{s:.3}")));
        rules.extend(m.query_scale.map(|s| format!("queries x{s:.4}")));
        rules.extend(m.attention_softcap.map(|c| format!("scores capped at {c}")));
        rules.extend(m.final_softcap.map(|c| format!("logits capped at {c}")));
        if !m.no_rope_layers.is_empty() {
            let n = m.no_rope_layers.len();
            rules.push(format!("no RoPE on {n} of {} layers", opt(&r.layers)));
        }
        println!("family        {}", rules.join(", "));
        if let (Some(size), Some(base)) = (m.sliding_window, m.sliding_window_rope_base) {
            println!(
                "window        {size} positions on {} of {} layers (rope base {base})",
                m.windowed_layers.len(),
                opt(&r.layers)
            );
        }
    }
    println!(
        "rope          freq_base {}, dims {}, scaling {}{}{}",
        opt(&r.rope.freq_base),
        opt(&r.rope.dimension_count),
        r.rope.scaling_type.as_deref().unwrap_or("none"),
        r.rope
            .scaling_factor
            .map(|f| format!(" x{f}"))
            .unwrap_or_default(),
        match &r.model {
            Some(m) if m.rope_neox => ", neox",
            _ => "",
        }
    );
    let mut types: Vec<_> = r.tensor_types.iter().collect();
    types.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let types: Vec<String> = types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
    println!("tensors       {}: {}", r.tensor_count, types.join(", "));
    let t = &r.tokenizer;
    println!(
        "tokenizer     {} / {}, vocab {}, add_bos {}",
        opt(&t.model),
        opt(&t.pre),
        opt(&t.vocab_size),
        opt(&t.add_bos_token)
    );
    for (kind, tok) in &t.special_tokens {
        println!(
            "  {kind:<11} {} {:?}",
            tok.id,
            tok.text.as_deref().unwrap_or("")
        );
    }
    match &r.chat_template {
        None => println!("chat template none (ChatML is used)"),
        Some(tpl) => {
            println!("chat template ({} chars)", tpl.len());
            for line in tpl.lines().take(3) {
                let short: String = line.chars().take(100).collect();
                println!(
                    "  {short}{}",
                    if line.chars().count() > 100 {
                        "…"
                    } else {
                        ""
                    }
                );
            }
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let path = resolve_model(&args.model)?;
    let file = GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let r = report(&file)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&r);
    }
    Ok(())
}
