//! The LLaMA transformer, written once for every backend.

use crate::backend::{
    kv_slot, AttentionOrder, AttentionSpec, Backend, KvShape, KvTypes, Rope, SeqRows, KV_BLOCK_SIZE,
};
use crate::config::{yarn_magnitude, Activation, Config, RopeOverrides};
use crate::error::{EngineError, Result};
use crate::kv_groups::{KvLayout, KvPools};
use crate::window_ring::{WindowRing, RING_CALL};
use gguf::GgufFile;
use quant::TokenOrder;
use std::sync::Arc;

struct Layer<B: Backend> {
    attn_norm: B::Weight,
    wq: B::Weight,
    wk: B::Weight,
    wv: B::Weight,
    /// Q/K/V biases (qwen2).
    bias: Option<[B::Weight; 3]>,
    /// Per-head norms of Q and K (qwen3, gemma3).
    qk_norm: Option<[B::Weight; 2]>,
    wo: B::Weight,
    /// Norm of the attention output before its residual add (gemma3).
    post_attention_norm: Option<B::Weight>,
    ffn_norm: B::Weight,
    w_gate: B::Weight,
    w_up: B::Weight,
    w_down: B::Weight,
    /// Norm of the FFN output before its residual add (gemma3).
    post_ffn_norm: Option<B::Weight>,
}

pub struct Llama<B: Backend> {
    pub config: Config,
    pub backend: B,
    token_embedding: B::Weight,
    layers: Vec<Layer<B>>,
    output_norm: B::Weight,
    /// The output projection; the token embedding when the model ties them.
    output: B::Weight,
    /// The tokens (the first ones of the vocabulary) whose logits a forward pass
    /// computes: all of them, unless `limit_logits` made the model a shorter-sighted draft.
    logit_width: usize,
    /// Where the weights come from (`limit_logits` reads the output rows again).
    file: Arc<GgufFile>,
    rope: Rope,
    /// LongRoPE's long factors (phi3), for contexts beyond the original one.
    rope_long: Option<Rope>,
    /// The RoPE of sliding-window layers, when they have a base of their own.
    rope_windowed: Rope,
    /// Which of llama.cpp's attention orders the CPU follows (`Matmul` unless set).
    pub attention_order: AttentionOrder,
    /// How new KV caches store keys and values (f16 unless set).
    pub kv_types: KvTypes,
    /// Which KV pool each layer uses.
    pub kv_layout: KvLayout,
}

/// Which positions of a forward call need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's (prompt scoring).
    All,
    /// Tokens from this index of the call on (perplexity scores the second half).
    From(usize),
    /// None (a prompt chunk that is not the prompt's last).
    None,
}

/// One sequence's part of a batched forward call.
#[derive(Clone, Copy, Debug)]
pub struct SeqBatch<'a> {
    /// The tokens to run, at positions `start..start + tokens.len()`.
    pub tokens: &'a [u32],
    pub start: usize,
    /// KV blocks covering at least positions `0..start + tokens.len()`.
    pub blocks: &'a [u32],
    /// The windowed pool's block table, when it is not `blocks` (the serving engine
    /// gives windowed blocks back once out of sight): it must cover the positions the
    /// window shows these tokens.
    pub window_blocks: Option<&'a [u32]>,
    pub logits: Logits,
    /// `first_one_token_position` of the sequence's prompt.
    pub generated_from: usize,
}

/// The first position of a sequence whose attention is summed in llama.cpp's one-token
/// order rather than its batched one. llama.cpp's CPU backend sums attention in one
/// order for a batch of several tokens and in another for a single token; it reads a
/// prompt in batches and generates one token at a time. We follow the token's role
/// instead of the batch it happens to be in — prompt tokens batched, generated tokens
/// (and a one-token prompt, which llama.cpp also evaluates alone) one at a time — so
/// our numbers match llama.cpp's bit for bit and still never depend on how a prompt
/// is chunked or which other sequences share a step.
pub fn first_one_token_position(prompt_len: usize) -> usize {
    if prompt_len > 1 {
        prompt_len
    } else {
        0
    }
}

/// How many prompt tokens llama.cpp reads in one batch (its default `n_ubatch`).
const LLAMA_CPP_BATCH: usize = 512;

/// The order of the products of the token at `pos` in a sequence whose generated tokens
/// start at `generated_from` (`first_one_token_position`), for the weight types that
/// llama.cpp's CPU backend sums in one order for a batch of 8 tokens or more and in
/// another for fewer (`quant::TokenOrder`). As for attention, the token's role decides,
/// not its batch: a prompt token gets the batched order when llama.cpp would have read
/// it in a batch of 8 or more (it reads a prompt 512 tokens at a time), a generated one
/// the one-token order. A full KV block of a prompt never holds a token of the other
/// order, so the prefix cache can share it between prompts of any length.
pub fn matmul_order(pos: usize, generated_from: usize) -> TokenOrder {
    let batch_start = pos - pos % LLAMA_CPP_BATCH;
    let batch_len = generated_from
        .saturating_sub(batch_start)
        .min(LLAMA_CPP_BATCH);
    if pos < generated_from && batch_len >= 8 {
        TokenOrder::Batched
    } else {
        TokenOrder::OneToken
    }
}

/// The KV cache of a single sequence: pools of its own, used through a fixed block table,
/// and for windowed layers kept apart, a ring (`window_ring`) when the window is shorter
/// than the context.
pub struct KvCache<B: Backend> {
    pools: KvPools<B::KvPool>,
    blocks: Vec<u32>,
    ring: Option<WindowRing>,
}

impl<B: Backend> KvCache<B> {
    /// Positions it can hold.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * KV_BLOCK_SIZE
    }

    /// Positions the windowed layers keep, when they keep a ring rather than the context.
    pub fn window_kept(&self) -> Option<usize> {
        self.ring.as_ref().map(WindowRing::kept)
    }

    /// Whether a call can start at `start` (the positions before it that it needs are
    /// still held): always, but where a windowed ring has overwritten them since.
    pub fn resumable(&self, start: usize) -> bool {
        self.ring.as_ref().is_none_or(|r| r.resumable(start, 1))
    }
}

fn check_shape(file: &GgufFile, name: &str, expected: &[usize]) -> Result<()> {
    let info = file
        .gguf
        .tensor_info(name)
        .ok_or_else(|| EngineError::MissingTensor(name.into()))?;
    let expected: Vec<u64> = expected.iter().map(|&d| d as u64).collect();
    if info.dims != expected {
        return Err(EngineError::TensorShape {
            name: name.into(),
            expected,
            actual: info.dims.clone(),
        });
    }
    Ok(())
}

impl<B: Backend> Llama<B> {
    pub fn load(backend: B, file: Arc<GgufFile>) -> Result<Llama<B>> {
        let c = Config::from_metadata(&file.gguf.metadata)?;
        let weight = |name: &str, shape: &[usize]| -> Result<B::Weight> {
            check_shape(&file, name, shape)?;
            backend.upload_weight(&file, name)
        };
        // A fused tensor (phi3's `attn_qkv`, and its `ffn_up` holding gate then up) is
        // split into the matrices the forward pass reads, row ranges of one tensor.
        let parts = |name: &str, cols: usize, sizes: &[usize]| -> Result<Vec<B::Weight>> {
            check_shape(&file, name, &[cols, sizes.iter().sum()])?;
            let mut start = 0;
            sizes
                .iter()
                .map(|&rows| {
                    start += rows;
                    backend.upload_weight_rows(&file, name, start - rows..start)
                })
                .collect()
        };
        let has = |name: &str| file.gguf.tensor_info(name).is_some();
        let (d, q, kv, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |t: &str| format!("blk.{i}.{t}");
            let bias = if file.gguf.tensor_info(&n("attn_q.bias")).is_some() {
                Some([
                    weight(&n("attn_q.bias"), &[q])?,
                    weight(&n("attn_k.bias"), &[kv])?,
                    weight(&n("attn_v.bias"), &[kv])?,
                ])
            } else {
                None
            };
            let qk_norm = match c.qk_norm {
                true => Some([
                    weight(&n("attn_q_norm.weight"), &[c.head_dim])?,
                    weight(&n("attn_k_norm.weight"), &[c.head_dim])?,
                ]),
                false => None,
            };
            let post_norm = |t: &str| -> Result<Option<B::Weight>> {
                c.post_norms.then(|| weight(&n(t), &[d])).transpose()
            };
            let [wq, wk, wv] = match has(&n("attn_qkv.weight")) {
                true => vec_to_array(parts(&n("attn_qkv.weight"), d, &[q, kv, kv])?),
                false => [
                    weight(&n("attn_q.weight"), &[d, q])?,
                    weight(&n("attn_k.weight"), &[d, kv])?,
                    weight(&n("attn_v.weight"), &[d, kv])?,
                ],
            };
            let [w_gate, w_up] = match has(&n("ffn_gate.weight")) {
                true => [
                    weight(&n("ffn_gate.weight"), &[d, ffn])?,
                    weight(&n("ffn_up.weight"), &[d, ffn])?,
                ],
                false => vec_to_array(parts(&n("ffn_up.weight"), d, &[ffn, ffn])?),
            };
            layers.push(Layer {
                attn_norm: weight(&n("attn_norm.weight"), &[d])?,
                wq,
                wk,
                wv,
                bias,
                qk_norm,
                wo: weight(&n("attn_output.weight"), &[q, d])?,
                post_attention_norm: post_norm("post_attention_norm.weight")?,
                ffn_norm: weight(&n("ffn_norm.weight"), &[d])?,
                w_gate,
                w_up,
                w_down: weight(&n("ffn_down.weight"), &[ffn, d])?,
                post_ffn_norm: post_norm("post_ffw_norm.weight")?,
            });
        }
        let vocab = [d, c.vocab_size];
        let output = weight(output_tensor(&file), &vocab)?;
        let rope_long = match has("rope_factors_long.weight") {
            true => Some(rope(&c, rope_factors(&c, &file, true)?)),
            false => None,
        };
        let rope = rope(&c, rope_factors(&c, &file, false)?);
        let rope_windowed = windowed_rope(&c, &rope);
        Ok(Llama {
            token_embedding: weight("token_embd.weight", &vocab)?,
            output_norm: weight("output_norm.weight", &[d])?,
            output,
            logit_width: c.vocab_size,
            file: file.clone(),
            layers,
            rope,
            rope_long,
            rope_windowed,
            attention_order: AttentionOrder::default(),
            kv_types: KvTypes::default(),
            kv_layout: KvLayout::of(&c),
            config: c,
            backend,
        })
    }

    /// Makes every forward pass compute the logits of the vocabulary's first `tokens`
    /// tokens only (`logit_width`), for a draft model: its output matrix is a fifth of
    /// the default model's weights, and in a byte-pair vocabulary (ids in the order the
    /// merges were learnt) the tokens past the first half are rare. A draft then never
    /// proposes those, which costs only proposals, never correctness: the target checks
    /// every token (FR-Spec, Zhao et al. 2025, ranks by measured frequency instead).
    pub fn limit_logits(&mut self, tokens: usize) -> Result<()> {
        let vocab = self.config.vocab_size;
        if tokens == 0 || tokens > vocab {
            return Err(EngineError::Config(format!(
                "logits of {tokens} tokens asked of a vocabulary of {vocab}: give 1 to {vocab}"
            )));
        }
        if tokens == self.logit_width {
            return Ok(());
        }
        self.output =
            self.backend
                .upload_weight_rows(&self.file, output_tensor(&self.file), 0..tokens)?;
        self.logit_width = tokens;
        Ok(())
    }

    /// How many logits a forward pass gives per row: the vocabulary's first tokens (all
    /// of them unless `limit_logits` says fewer).
    pub fn logit_width(&self) -> usize {
        self.logit_width
    }

    /// Applies a user's RoPE settings over the file's (see `Config::override_rope`).
    pub fn override_rope(&mut self, overrides: &RopeOverrides) -> Result<()> {
        self.config.override_rope(overrides)?;
        let c = &self.config;
        self.rope = rope(c, std::mem::take(&mut self.rope.factors));
        if let Some(long) = &mut self.rope_long {
            *long = rope(c, std::mem::take(&mut long.factors));
        }
        self.rope_windowed = windowed_rope(c, &self.rope);
        Ok(())
    }

    /// Picks the RoPE factors for sequences of up to `context` positions, as llama.cpp
    /// does: LongRoPE's long factors when `context` exceeds the original training context.
    pub fn fit_rope_to_context(&mut self, context: usize) {
        if let (Some(long), Some(original)) = (&self.rope_long, self.config.rope_original_context) {
            if context > original {
                self.rope = long.clone();
            }
        }
    }

    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    /// KV pools of `blocks` blocks each, for every layer of this model.
    pub fn new_kv_pool(&self, blocks: usize) -> Result<KvPools<B::KvPool>> {
        self.new_kv_pools(blocks, blocks)
    }

    /// KV pools of `full` blocks for the full-attention layers and `windowed` blocks
    /// for the windowed layers, when they are kept apart (see `kv_groups`).
    pub fn new_kv_pools(&self, full: usize, windowed: usize) -> Result<KvPools<B::KvPool>> {
        let (full_shape, windowed_shape) = self.kv_layout.shapes(self.kv_shape());
        let pool = |shape, blocks| self.backend.new_kv_pool(shape, blocks, self.kv_types);
        Ok(KvPools {
            full: pool(full_shape, full)?,
            windowed: windowed_shape.map(|s| pool(s, windowed)).transpose()?,
        })
    }

    /// Takes all of the pools' memory now (see `Backend::commit_kv_pool`).
    pub fn commit_kv_pools(&self, pools: &mut KvPools<B::KvPool>) {
        let started = std::time::Instant::now();
        self.backend.commit_kv_pool(&mut pools.full);
        if let Some(windowed) = &mut pools.windowed {
            self.backend.commit_kv_pool(windowed);
        }
        tracing::info!(
            ms = started.elapsed().as_secs_f64() * 1e3,
            "KV cache memory taken"
        );
    }

    pub fn kv_shape(&self) -> KvShape {
        let c = &self.config;
        KvShape {
            layers: c.n_layers,
            kv_dim: c.kv_dim(),
            head_dim: c.head_dim,
        }
    }

    /// Bytes of KV cache one position takes (keys and values, every layer) as `types`.
    pub fn kv_bytes_per_token(&self, types: KvTypes) -> usize {
        self.kv_bytes(self.config.n_layers, types)
    }

    /// Bytes of one block of the full pool and of the windowed pool (0 when there is
    /// none): keys and values of each pool's layers.
    pub fn kv_block_bytes(&self) -> (usize, usize) {
        let (full, windowed) = self.kv_layout.shapes(self.kv_shape());
        let block = |layers| KV_BLOCK_SIZE * self.kv_bytes(layers, self.kv_types);
        (block(full.layers), windowed.map_or(0, |w| block(w.layers)))
    }

    /// Bytes one position's keys and values take in `layers` layers, as `types`.
    fn kv_bytes(&self, layers: usize, types: KvTypes) -> usize {
        let kv_dim = self.config.kv_dim();
        layers * (types.k.bytes(kv_dim) + types.v.bytes(kv_dim))
    }

    /// A cache for one sequence of up to `context` positions; its windowed layers (when
    /// kept apart) hold only the blocks of `WindowRing::blocks`.
    pub fn new_kv_cache(&self, context: usize) -> Result<KvCache<B>> {
        let blocks = context.div_ceil(KV_BLOCK_SIZE);
        let ring = self
            .kv_layout
            .window()
            .map(|w| (w, WindowRing::blocks(w)))
            .filter(|&(_, ring_blocks)| ring_blocks < blocks);
        Ok(KvCache {
            pools: self.new_kv_pools(blocks, ring.map_or(blocks, |(_, r)| r))?,
            blocks: (0..blocks as u32).collect(),
            ring: ring.map(|(window, ring_blocks)| WindowRing::new(window, blocks, ring_blocks)),
        })
    }

    /// Runs prompt `tokens` at positions `start..start + n` of one sequence whose earlier
    /// positions are already in `cache`, the prompt ending with them; returns logits
    /// (`vocab` per requested row).
    pub fn forward(
        &self,
        tokens: &[u32],
        start: usize,
        cache: &mut KvCache<B>,
        logits: Logits,
    ) -> Result<Vec<f32>> {
        self.forward_prompt(tokens, start, start + tokens.len(), cache, logits)
    }

    /// `forward` for part of a prompt of `prompt_len` tokens read in chunks: a token's
    /// products depend on the prompt's length (`matmul_order`), never on the chunks.
    pub fn forward_prompt(
        &self,
        tokens: &[u32],
        start: usize,
        prompt_len: usize,
        cache: &mut KvCache<B>,
        logits: Logits,
    ) -> Result<Vec<f32>> {
        self.forward_sequence(tokens, start, cache, logits, prompt_len)
    }

    /// Runs one generated token at `position`; returns its logits.
    pub fn decode(&self, token: u32, position: usize, cache: &mut KvCache<B>) -> Result<Vec<f32>> {
        self.forward_sequence(&[token], position, cache, Logits::Last, position)
    }

    /// Runs generated `tokens` at `start..` in one pass (speculative decoding checks
    /// proposed tokens this way) and returns every row's logits: each the logits `decode`
    /// would give that token, because each row is summed in the one-token order of its
    /// role, not in the batched order of a prompt.
    pub fn verify(&self, tokens: &[u32], start: usize, cache: &mut KvCache<B>) -> Result<Vec<f32>> {
        self.forward_sequence(tokens, start, cache, Logits::All, start)
    }

    /// `forward`, `decode` and `verify`: one sequence's tokens, through `forward_batch`.
    fn forward_sequence(
        &self,
        tokens: &[u32],
        start: usize,
        cache: &mut KvCache<B>,
        logits: Logits,
        generated_from: usize,
    ) -> Result<Vec<f32>> {
        if start + tokens.len() > cache.capacity() {
            return Err(EngineError::ContextOverflow {
                tokens: start + tokens.len(),
                context: cache.capacity(),
            });
        }
        // Through a ring, in calls short enough that what one writes never overwrites
        // what it sees.
        let pieces: Vec<&[u32]> = match cache.ring {
            Some(_) if !tokens.is_empty() => tokens.chunks(RING_CALL).collect(),
            _ => vec![tokens],
        };
        let mut out = Vec::new();
        for (i, piece) in pieces.into_iter().enumerate() {
            let at = start + i * RING_CALL;
            if let Some(ring) = cache
                .ring
                .as_ref()
                .filter(|r| !r.resumable(at, piece.len()))
            {
                return Err(EngineError::WindowGone {
                    position: at,
                    kept: ring.kept(),
                });
            }
            let wanted = match logits {
                Logits::Last if at + piece.len() < start + tokens.len() => Logits::None,
                Logits::From(first) => Logits::From(first.saturating_sub(i * RING_CALL)),
                other => other,
            };
            let seq = SeqBatch {
                tokens: piece,
                start: at,
                blocks: &cache.blocks,
                window_blocks: cache.ring.as_ref().map(WindowRing::table),
                logits: wanted,
                generated_from,
            };
            let piece_logits = self.forward_batch(&[seq], &mut cache.pools)?;
            if let Some(ring) = &mut cache.ring {
                ring.wrote(at, at + piece.len());
            }
            // The one piece of most calls keeps its buffer (a vocabulary of logits).
            match out.is_empty() {
                true => out = piece_logits,
                false => out.extend(piece_logits),
            }
        }
        Ok(out)
    }

    /// One step for several sequences at once: their tokens are the rows of one batch,
    /// so every weight matrix is read once for all of them. Returns the requested logits
    /// (`logit_width` per row), sequence after sequence. A row's result does not depend on the
    /// other rows of the batch.
    pub fn forward_batch(
        &self,
        seqs: &[SeqBatch],
        pools: &mut KvPools<B::KvPool>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let b = &self.backend;
        let mut tokens = Vec::new();
        let mut slots = Vec::new();
        let mut rows = Vec::with_capacity(seqs.len());
        // The same for the windowed pool (its own block tables), when there is one.
        let mut window_slots = Vec::new();
        let mut window_rows = Vec::new();
        let mut logit_rows = Vec::new();
        let mut logit_orders = Vec::new();
        for s in seqs {
            let end = s.start + s.tokens.len();
            if s.tokens.is_empty() || end > s.blocks.len() * KV_BLOCK_SIZE {
                return Err(EngineError::ContextOverflow {
                    tokens: end,
                    context: s.blocks.len() * KV_BLOCK_SIZE,
                });
            }
            let first = tokens.len();
            tokens.extend_from_slice(s.tokens);
            slots.extend((s.start..end).map(|p| kv_slot(s.blocks, p)));
            let seq_rows = SeqRows {
                rows: first..tokens.len(),
                start: s.start,
                blocks: s.blocks,
                generated_from: s.generated_from,
            };
            if self.kv_layout.is_split() {
                let window_blocks = s.window_blocks.unwrap_or(s.blocks);
                if end > window_blocks.len() * KV_BLOCK_SIZE {
                    return Err(EngineError::ContextOverflow {
                        tokens: end,
                        context: window_blocks.len() * KV_BLOCK_SIZE,
                    });
                }
                window_slots.extend((s.start..end).map(|p| kv_slot(window_blocks, p)));
                window_rows.push(SeqRows {
                    blocks: window_blocks,
                    ..seq_rows.clone()
                });
            }
            rows.push(seq_rows);
            let wanted = match s.logits {
                Logits::Last => s.tokens.len() - 1..s.tokens.len(),
                Logits::All => 0..s.tokens.len(),
                Logits::From(i) => i.min(s.tokens.len())..s.tokens.len(),
                Logits::None => 0..0,
            };
            // llama.cpp multiplies the output matrix for the rows whose logits it was
            // asked for: one row (the last) is a batch of one, whatever the prompt.
            logit_orders.extend(wanted.clone().map(|r| match s.logits {
                Logits::Last => TokenOrder::OneToken,
                _ => matmul_order(s.start + r, s.generated_from),
            }));
            logit_rows.extend(wanted.map(|r| first + r));
        }
        let positions: Vec<usize> = seqs
            .iter()
            .flat_map(|s| s.start..s.start + s.tokens.len())
            .collect();
        let orders: Vec<TokenOrder> = seqs
            .iter()
            .flat_map(|s| {
                (s.start..s.start + s.tokens.len()).map(|p| matmul_order(p, s.generated_from))
            })
            .collect();
        let n = tokens.len();
        let _polling = b.begin_pass();

        let mut x = b.alloc(n, c.dim)?;
        let mut h = b.alloc(n, c.dim)?;
        let mut q = b.alloc(n, c.q_dim())?;
        let mut k = b.alloc(n, c.kv_dim())?;
        let mut v = b.alloc(n, c.kv_dim())?;
        let mut att = b.alloc(n, c.q_dim())?;
        let mut gate = b.alloc(n, c.ffn_dim)?;
        let mut up = b.alloc(n, c.ffn_dim)?;
        let mut post_normed = b.alloc(if c.post_norms { n } else { 0 }, c.dim)?;

        b.embed(&self.token_embedding, &tokens, &mut x)?;
        if let Some(factor) = c.embedding_scale {
            b.scale(&mut x, factor);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention block.
            b.rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut h);
            b.matmul_many(
                &[&layer.wq, &layer.wk, &layer.wv],
                &h,
                &mut [&mut q, &mut k, &mut v],
                &orders,
            );
            if let Some([bq, bk, bv]) = &layer.bias {
                b.add_bias(&mut q, bq);
                b.add_bias(&mut k, bk);
                b.add_bias(&mut v, bv);
            }
            if let Some([q_norm, k_norm]) = &layer.qk_norm {
                b.rms_norm_heads(&mut q, q_norm, c.rms_eps);
                b.rms_norm_heads(&mut k, k_norm, c.rms_eps);
            }
            let windowed = c.is_windowed(l);
            let rope = if windowed {
                &self.rope_windowed
            } else {
                &self.rope
            };
            if c.uses_rope(l) {
                b.rope(&mut q, &positions, rope);
                b.rope(&mut k, &positions, rope);
            }
            if let Some(factor) = c.query_scale {
                b.scale(&mut q, factor);
            }
            let spec = AttentionSpec {
                n_kv_heads: c.n_kv_heads,
                scale: match c.query_scale {
                    Some(_) => 1.0,
                    None => 1.0 / (c.head_dim as f32).sqrt(),
                },
                window: c
                    .sliding_window
                    .as_ref()
                    .filter(|_| windowed)
                    .map(|w| w.size),
                softcap: c.attention_softcap,
                order: self.attention_order,
            };
            let (pool, pool_layer, slots, rows) =
                match (self.kv_layout.place(l), &mut pools.windowed) {
                    ((true, i), Some(windowed)) => (windowed, i, &window_slots, &window_rows),
                    ((_, i), _) => (&mut pools.full, i, &slots, &rows),
                };
            b.kv_store(pool, pool_layer, &k, &v, slots);
            b.attention(&q, pool, pool_layer, rows, &spec, &mut att);
            b.matmul(&layer.wo, &att, &mut h, &orders);
            if let Some(norm) = &layer.post_attention_norm {
                b.rms_norm(&h, norm, c.rms_eps, &mut post_normed);
                std::mem::swap(&mut h, &mut post_normed);
            }
            b.add(&mut x, &h);

            // Feed-forward block (SwiGLU or GeGLU).
            b.rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut h);
            b.matmul_many(
                &[&layer.w_gate, &layer.w_up],
                &h,
                &mut [&mut gate, &mut up],
                &orders,
            );
            match c.activation {
                Activation::Silu => b.silu_mul(&mut gate, &up),
                Activation::GeluTanh => b.gelu_mul(&mut gate, &up),
            }
            b.matmul(&layer.w_down, &gate, &mut h, &orders);
            if let Some(norm) = &layer.post_ffn_norm {
                b.rms_norm(&h, norm, c.rms_eps, &mut post_normed);
                std::mem::swap(&mut h, &mut post_normed);
            }
            b.add(&mut x, &h);
        }

        if logit_rows.is_empty() {
            b.finish()?;
            return Ok(Vec::new());
        }
        b.rms_norm(&x, &self.output_norm, c.rms_eps, &mut h);
        let h = if logit_rows.len() == n {
            h
        } else {
            b.gather_rows(&h, &logit_rows)?
        };
        let mut out = b.alloc(logit_rows.len(), self.logit_width)?;
        b.matmul(&self.output, &h, &mut out, &logit_orders);
        let mut logits = b.to_host(&out, 0..logit_rows.len());
        if let Some(cap) = c.final_softcap {
            quant::softcap(&mut logits, cap);
        }
        b.finish()?;
        Ok(logits)
    }
}

/// The output projection's tensor: the token embedding when the model ties them.
fn output_tensor(file: &GgufFile) -> &'static str {
    match file.gguf.tensor_info("output.weight") {
        Some(_) => "output.weight",
        None => "token_embd.weight",
    }
}

/// The per-pair divisors of a `rope_freqs.weight` tensor when the model ships one (Llama
/// 3.1-style long-context scaling), or of LongRoPE's `rope_factors_short/long.weight`
/// (phi3; `long` picks which); ones otherwise.
fn rope_factors(c: &Config, file: &GgufFile, long: bool) -> Result<Vec<f32>> {
    let pairs = c.rope_dims / 2;
    let name = [
        "rope_freqs.weight",
        if long {
            "rope_factors_long.weight"
        } else {
            "rope_factors_short.weight"
        },
    ]
    .into_iter()
    .find(|n| file.gguf.tensor_info(n).is_some());
    match name.map(|n| (n, file.tensor(n))) {
        Some((name, Ok(view))) => {
            let mut f = vec![0.0; view.info.n_elements() as usize];
            quant::dequantize(view.info.ty, view.data, &mut f)?;
            if f.len() != pairs {
                return Err(EngineError::TensorShape {
                    name: name.into(),
                    expected: vec![pairs as u64],
                    actual: view.info.dims.clone(),
                });
            }
            Ok(f)
        }
        _ => Ok(vec![1.0; pairs]),
    }
}

/// The RoPE of the model's global layers, with per-pair divisors `factors`.
fn rope(c: &Config, factors: Vec<f32>) -> Rope {
    rope_at(c, c.rope_base, c.rope_freq_scale(), factors)
}

/// The RoPE of sliding-window layers: their own base, and no frequency scaling of their
/// own (as llama.cpp gives them).
fn windowed_rope(c: &Config, global: &Rope) -> Rope {
    match &c.sliding_window {
        Some(w) => rope_at(c, w.rope_base, 1.0, global.factors.clone()),
        None => global.clone(),
    }
}

/// RoPE with frequency base `base` and scale `freq_scale`, and `c`'s YaRN settings, with
/// cos and sin scaled as llama.cpp scales them: its attention factor (YaRN's magnitude
/// correction cancelled, then `rope.scaling.attn_factor`), times YaRN's correction for
/// this `freq_scale` where YaRN is on.
fn rope_at(c: &Config, base: f32, freq_scale: f32, factors: Vec<f32>) -> Rope {
    let ext_factor = c.yarn_ext_factor();
    let yarn = (ext_factor != 0.0).then(|| {
        let original = c.rope_original_context.unwrap_or(c.context_length);
        let betas = [c.yarn.beta_fast, c.yarn.beta_slow];
        quant::YarnRamp::new(c.rope_dims, original, base, betas, ext_factor)
    });
    let magnitude = match yarn {
        Some(_) => yarn_magnitude(1.0 / freq_scale),
        None => 1.0,
    };
    Rope {
        theta_scale: quant::rope_theta_scale(base, c.rope_dims),
        mscale: c.rope_attention_factor() * magnitude,
        factors,
        freq_scale,
        yarn,
        neox: c.rope_neox,
        head_dim: c.head_dim,
    }
}

/// A fused tensor's parts as an array (`parts` in `Llama::load` makes one per size).
fn vec_to_array<W, const N: usize>(parts: Vec<W>) -> [W; N] {
    match parts.try_into() {
        Ok(array) => array,
        Err(_) => unreachable!("`parts` returns one weight per size"),
    }
}
