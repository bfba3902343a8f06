//! The serving engine: many requests share one model through continuous batching over
//! a paged KV cache with prefix caching. The engine runs on its own thread; `submit`
//! hands it a request and returns the stream of that request's events. Dropping the
//! stream cancels the request.

mod blocks;
mod draft;
mod kv_tables;
mod metrics;
mod pacing;
mod request;
mod scheduler;
mod sequence;

pub use draft::DraftModel;
pub use metrics::{Histogram, Metrics, LATENCY_BUCKETS};
pub use request::{Event, PromptLogprob, Request, Usage};

use crate::backend::{Backend, KV_BLOCK_SIZE};
use crate::config::Config;
use crate::constraint::Grammars;
use crate::error::{EngineError, Result};
use crate::model::Llama;
use crate::session::FinishReason;
use crate::speculate::NgramSpeculation;
use crate::tokenizer::Tokenizer;
use scheduler::Scheduler;
use sequence::Sequence;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// How much KV cache the engine keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvBudget {
    Tokens(usize),
    Bytes(usize),
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences decoding at once.
    pub max_seqs: usize,
    /// Tokens per model step (decodes plus prompt chunks).
    pub max_batch_tokens: usize,
    /// Requests waiting for admission; beyond it `submit` answers `Overloaded`.
    pub max_waiting: usize,
    pub kv_budget: KvBudget,
    /// Most positions of one sequence (prompt and generated).
    pub context: usize,
    pub prefix_caching: bool,
    /// Worker threads of the engine's own pool (default: all cores).
    pub threads: Option<usize>,
    /// While sequences decode, prompt chunks are sized so that a step takes about this
    /// long (adapted from measured steps; `pacing.rs`). None: chunks fill the budget.
    pub step_target: Option<std::time::Duration>,
    /// Speculative decoding by n-gram lookup: in steps where every sequence decodes,
    /// proposals are checked as extra rows while the measured cost of a pass says they
    /// pay (`speculate::share_checks`). The tokens are the same as without it.
    pub speculation: Option<NgramSpeculation>,
    /// Filled in by `Engine::start` from `kv_budget`: blocks of the full pool, and of
    /// the windowed layers' pool (`kv_groups`), sized for what the running sequences'
    /// windows can show.
    pub kv_blocks: usize,
    pub kv_window_blocks: usize,
}

impl EngineConfig {
    /// `parallel` sequences of `context` positions each (whole blocks each).
    pub fn new(context: usize, parallel: usize) -> EngineConfig {
        let per_sequence = context.div_ceil(KV_BLOCK_SIZE) * KV_BLOCK_SIZE;
        EngineConfig {
            max_seqs: parallel.max(1),
            max_batch_tokens: 512,
            max_waiting: 256,
            kv_budget: KvBudget::Tokens(per_sequence * parallel.max(1)),
            context,
            prefix_caching: true,
            threads: None,
            step_target: Some(std::time::Duration::from_millis(150)),
            speculation: None,
            kv_blocks: 0,
            kv_window_blocks: 0,
        }
    }
}

enum Command {
    Submit(Box<Sequence>),
    Shutdown { drain: bool },
}

pub struct Engine {
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
    tokenizer: Arc<Tokenizer>,
    model_config: Config,
    config: EngineConfig,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Mutex<Metrics>>,
    grammars: OnceLock<std::result::Result<Arc<Grammars>, String>>,
}

impl Engine {
    /// Allocates the KV pool and starts the engine thread.
    pub fn start<B: Backend + 'static>(
        model: Llama<B>,
        tokenizer: impl Into<Arc<Tokenizer>>,
        config: EngineConfig,
    ) -> Result<Engine> {
        Engine::launch(model, tokenizer, config, None)
    }

    /// The same, speculating with a draft model: it has a KV pool of its own, of as
    /// many positions as the model's, and drafts for the decoding sequences while that
    /// pays (`speculate::share_checks`). The tokens are the same as without it.
    pub fn start_with_draft<B: Backend + 'static>(
        model: Llama<B>,
        draft: DraftModel<B>,
        tokenizer: impl Into<Arc<Tokenizer>>,
        config: EngineConfig,
    ) -> Result<Engine> {
        if config.speculation.is_some() {
            return Err(EngineError::Config(
                "speculate with n-gram lookup or with a draft model, not both".into(),
            ));
        }
        Engine::launch(model, tokenizer, config, Some(draft))
    }

    fn launch<B: Backend + 'static>(
        model: Llama<B>,
        tokenizer: impl Into<Arc<Tokenizer>>,
        mut config: EngineConfig,
        draft: Option<DraftModel<B>>,
    ) -> Result<Engine> {
        if config.max_seqs == 0 || config.max_batch_tokens == 0 || config.context == 0 {
            return Err(EngineError::Config(
                "max_seqs, max_batch_tokens and context must be positive".into(),
            ));
        }
        let (block_bytes, window_block_bytes) = model.kv_block_bytes();
        // A step shows each sequence its window and its chunk; one more block each for
        // a copy-on-write and for the next step.
        let window_blocks = model.kv_layout.window().map_or(0, |w| {
            config.max_seqs * (w.div_ceil(KV_BLOCK_SIZE) + 3)
                + config.max_batch_tokens.div_ceil(KV_BLOCK_SIZE)
        });
        config.kv_blocks = match config.kv_budget {
            KvBudget::Tokens(t) => t.div_ceil(KV_BLOCK_SIZE),
            KvBudget::Bytes(b) => {
                b.saturating_sub(window_blocks * window_block_bytes) / block_bytes
            }
        };
        if config.kv_blocks == 0 {
            return Err(EngineError::Config(format!(
                "the KV cache budget holds no block of {KV_BLOCK_SIZE} tokens ({block_bytes} bytes each{})",
                match window_blocks {
                    0 => String::new(),
                    n => format!(", after {n} blocks of the windowed layers"),
                }
            )));
        }
        // A windowed table is never longer than the full one.
        config.kv_window_blocks = window_blocks.min(config.kv_blocks);
        let mut pools = model.new_kv_pools(config.kv_blocks, config.kv_window_blocks)?;
        // The server takes its budget's memory at start, not in its first steps.
        model.commit_kv_pools(&mut pools);
        let drafting = draft
            .map(|d| draft::Drafting::new(d, model.config.vocab_size, config.kv_blocks))
            .transpose()?;
        tracing::info!(
            blocks = config.kv_blocks,
            tokens = config.kv_blocks * KV_BLOCK_SIZE,
            window_blocks = config.kv_window_blocks,
            mib = (config.kv_blocks * block_bytes + config.kv_window_blocks * window_block_bytes)
                >> 20,
            "KV cache"
        );
        let tokenizer = tokenizer.into();
        let queued = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(Mutex::new(Metrics::default()));
        let model_config = model.config.clone();
        let (commands, inbox) = mpsc::channel();
        let scheduler = Scheduler::new(
            model,
            pools,
            tokenizer.clone(),
            config.clone(),
            queued.clone(),
            metrics.clone(),
            drafting,
        );
        let workers = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads.unwrap_or(0))
            .thread_name(|i| format!("engine-{i}"))
            .build()
            .map_err(|e| EngineError::Config(format!("cannot start the engine's threads: {e}")))?;
        // The loop runs on a worker of the pool, so the kernels' parallel loops start
        // there without handing work across threads on every operation.
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || workers.install(|| engine_loop(scheduler, inbox)))
            .map_err(|e| EngineError::Config(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            commands,
            thread: Some(thread),
            tokenizer,
            model_config,
            config,
            queued,
            metrics,
            grammars: OnceLock::new(),
        })
    }

    /// The constraint compiler for this model's vocabulary, built on first use.
    pub fn grammars(&self) -> Result<Arc<Grammars>> {
        self.grammars
            .get_or_init(|| {
                let started = std::time::Instant::now();
                let g = Grammars::new(self.tokenizer.clone(), self.model_config.vocab_size);
                tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    "grammar vocabulary ready"
                );
                g.map(Arc::new).map_err(|e| e.to_string())
            })
            .clone()
            .map_err(EngineError::Constraint)
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn model_config(&self) -> &Config {
        &self.model_config
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Queues a request; refuses at once what could never run or what the queue has
    /// no room for.
    pub fn submit(&self, request: Request) -> Result<RequestStream> {
        let refused = |e: EngineError| {
            self.metrics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .requests_refused += 1;
            Err(e)
        };
        if let Err(e) = self.validate(&request) {
            return refused(e);
        }
        let limit = self.config.max_waiting;
        let admitted = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < limit).then_some(q + 1)
            });
        if let Err(waiting) = admitted {
            return refused(EngineError::Overloaded { waiting, limit });
        }
        let n = request.n;
        let (events, receiver) = unbounded_channel();
        let seq = match Sequence::new(request, events) {
            Ok(s) => s,
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                return refused(e);
            }
        };
        if self.commands.send(Command::Submit(Box::new(seq))).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::Stopped);
        }
        Ok(RequestStream {
            events: receiver,
            open: n,
        })
    }

    fn validate(&self, r: &Request) -> Result<()> {
        let c = &self.config;
        if r.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if let Some(&id) = r
            .prompt
            .iter()
            .find(|&&id| id as usize >= self.model_config.vocab_size)
        {
            return Err(EngineError::BadToken {
                id,
                vocab: self.model_config.vocab_size,
            });
        }
        if r.n == 0 || r.n > c.max_seqs {
            return Err(EngineError::InvalidRequest(format!(
                "n must be between 1 and {} (the engine's max_seqs), got {}",
                c.max_seqs, r.n
            )));
        }
        if r.max_tokens == 0 {
            return Err(EngineError::InvalidRequest(
                "max_tokens must be at least 1".into(),
            ));
        }
        if r.prompt.len() >= c.context {
            return Err(EngineError::ContextOverflow {
                tokens: r.prompt.len(),
                context: c.context,
            });
        }
        let capacity = c.kv_blocks * KV_BLOCK_SIZE;
        if r.prompt.len() + 1 > capacity {
            return Err(EngineError::KvBudget {
                tokens: r.prompt.len(),
                capacity,
            });
        }
        crate::sampler::Sampler::new(r.sampling.clone()).map(|_| ())
    }

    /// Stops the engine: `drain` lets queued and running requests finish first, else
    /// they end now as cancelled.
    pub fn shutdown(mut self, drain: bool) {
        self.stop(drain);
    }

    fn stop(&mut self, drain: bool) {
        let _ = self.commands.send(Command::Shutdown { drain });
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop(false);
    }
}

fn engine_loop<B: Backend>(mut scheduler: Scheduler<B>, inbox: mpsc::Receiver<Command>) {
    let mut draining = false;
    loop {
        let next = if scheduler.is_idle() {
            if draining {
                return;
            }
            match inbox.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        } else {
            inbox.try_recv().ok()
        };
        for command in next
            .into_iter()
            .chain(std::iter::from_fn(|| inbox.try_recv().ok()))
        {
            match command {
                Command::Submit(seq) if draining => {
                    let mut seq = *seq;
                    seq.finish(
                        FinishReason::Error,
                        Some("the engine is shutting down".into()),
                    );
                }
                Command::Submit(seq) => scheduler.enqueue(*seq),
                Command::Shutdown { drain: true } => draining = true,
                Command::Shutdown { drain: false } => {
                    scheduler.finish_all(FinishReason::Cancelled, None);
                    return;
                }
            }
        }
        scheduler.step();
    }
}

/// The events of one request: each sample's tokens, then its `Finished`. Ends after
/// the last sample finishes. Dropping it cancels what is left of the request.
pub struct RequestStream {
    events: UnboundedReceiver<Event>,
    open: usize,
}

impl RequestStream {
    fn track(&mut self, e: Option<Event>) -> Option<Event> {
        match &e {
            Some(Event::Finished { .. }) => self.open -= 1,
            None => self.open = 0,
            _ => {}
        }
        e
    }

    /// The next event, waiting for it (async callers).
    pub async fn recv(&mut self) -> Option<Event> {
        if self.open == 0 {
            return None;
        }
        let e = self.events.recv().await;
        self.track(e)
    }
}

impl Iterator for RequestStream {
    type Item = Event;

    /// The next event, blocking the thread until it comes.
    fn next(&mut self) -> Option<Event> {
        if self.open == 0 {
            return None;
        }
        let e = self.events.blocking_recv();
        self.track(e)
    }
}
