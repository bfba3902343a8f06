//! A model's KV cache in two groups when some layers attend through a sliding window and
//! others see everything (Gemma 2 and 3): the full-attention layers' keys and values in
//! one pool, the windowed layers' in another, each with its own block tables. A
//! windowed layer never looks further back than its window, so a sequence can give its
//! windowed blocks back as it moves on, and that pool needs only the blocks in sight of
//! the running sequences, however long they grow. A model without windowed layers (or
//! with nothing but) keeps one pool, as before.

use crate::backend::KvShape;
use crate::config::Config;

/// The pools of one KV cache: `windowed` holds the windowed layers' keys and values
/// when the model keeps them apart (`KvLayout::is_split`).
pub struct KvPools<P> {
    pub full: P,
    pub windowed: Option<P>,
}

/// Which pool each layer's keys and values live in, and at which layer index there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// Per model layer: in the windowed pool, and the layer's index in its pool.
    places: Vec<(bool, usize)>,
    full_layers: usize,
    windowed_layers: usize,
    /// The window, when the pools are split.
    window: Option<usize>,
}

impl KvLayout {
    pub fn of(c: &Config) -> KvLayout {
        let windowed = (0..c.n_layers).filter(|&l| c.is_windowed(l)).count();
        let split = windowed > 0 && windowed < c.n_layers;
        let (mut full_layers, mut windowed_layers) = (0, 0);
        let places = (0..c.n_layers)
            .map(|l| {
                let in_window_pool = split && c.is_windowed(l);
                let counter = match in_window_pool {
                    true => &mut windowed_layers,
                    false => &mut full_layers,
                };
                *counter += 1;
                (in_window_pool, *counter - 1)
            })
            .collect();
        KvLayout {
            places,
            full_layers,
            windowed_layers,
            window: split
                .then(|| c.sliding_window.as_ref().map(|w| w.size))
                .flatten(),
        }
    }

    /// Whether the windowed layers have a pool of their own.
    pub fn is_split(&self) -> bool {
        self.window.is_some()
    }

    /// The window of the windowed pool's layers, when there is such a pool.
    pub fn window(&self) -> Option<usize> {
        self.window
    }

    /// Layer `l`'s pool (true: the windowed one) and its index there.
    pub fn place(&self, l: usize) -> (bool, usize) {
        self.places[l]
    }

    /// The shape of the full pool and of the windowed pool (if any), given the shape
    /// of one pool holding every layer.
    pub fn shapes(&self, all: KvShape) -> (KvShape, Option<KvShape>) {
        let full = KvShape {
            layers: self.full_layers,
            ..all
        };
        let windowed = self.is_split().then_some(KvShape {
            layers: self.windowed_layers,
            ..all
        });
        (full, windowed)
    }
}
