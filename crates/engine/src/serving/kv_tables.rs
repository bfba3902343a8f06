//! The sequences' block tables over the model's KV pools (`kv_groups`): one table into
//! the full pool, and for a model with windowed layers kept apart, a second one into the
//! windowed pool whose blocks are given back as soon as the window has moved past them.
//! Both are named by the same chained prefix hashes, so a prompt found in the cache
//! brings its windowed blocks too — those its window still shows.

use super::blocks::{block_hash, BlockManager, ROOT_HASH};
use super::sequence::Sequence;
use crate::backend::KV_BLOCK_SIZE;
use crate::model::first_one_token_position;

/// A windowed table's entry for a block given back.
pub(super) const GIVEN_BACK: u32 = u32::MAX;

/// A block to copy before a sequence writes into it (it shared it with a fork).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BlockCopy {
    pub windowed: bool,
    pub from: u32,
    pub to: u32,
}

pub(super) struct KvTables {
    full: BlockManager,
    /// The windowed pool's blocks and the window.
    windowed: Option<(BlockManager, usize)>,
}

/// The first block a sequence's next position (`computed`) sees through `window`.
fn first_in_sight(computed: usize, window: usize) -> usize {
    (computed + 1).saturating_sub(window) / KV_BLOCK_SIZE
}

impl KvTables {
    pub fn new(full: usize, windowed: Option<(usize, usize)>, caching: bool) -> KvTables {
        KvTables {
            full: BlockManager::new(full, caching),
            windowed: windowed.map(|(blocks, window)| (BlockManager::new(blocks, caching), window)),
        }
    }

    /// Gives back every block of `s` (it starts again from nothing).
    pub fn release(&mut self, s: &mut Sequence) {
        self.full.release(&s.blocks);
        if let Some((windowed, _)) = &mut self.windowed {
            let held: Vec<u32> = s
                .window_blocks
                .iter()
                .copied()
                .filter(|&b| b != GIVEN_BACK)
                .collect();
            windowed.release(&held);
        }
        s.blocks.clear();
        s.window_blocks.clear();
        s.hashes.clear();
        s.computed = 0;
    }

    /// Starts `s` from the longest cached prefix of at most `max_blocks` full blocks
    /// whose windowed blocks in sight are cached too.
    pub fn lookup_prefix(&mut self, s: &mut Sequence, max_blocks: usize) {
        let (mut blocks, mut hashes) = self.full.lookup_prefix(&s.tokens, max_blocks);
        if let Some((windowed, window)) = &mut self.windowed {
            let mut n = blocks.len();
            while !(first_in_sight(n * KV_BLOCK_SIZE, *window)..n)
                .all(|j| windowed.is_cached(hashes[j]))
            {
                n -= 1;
            }
            self.full.release(&blocks[n..]);
            blocks.truncate(n);
            hashes.truncate(n);
            let first = first_in_sight(n * KV_BLOCK_SIZE, *window);
            s.window_blocks = (0..n)
                .map(|j| match j < first {
                    true => GIVEN_BACK,
                    false => windowed.hold_cached(hashes[j]).unwrap_or(GIVEN_BACK),
                })
                .collect();
        }
        s.computed = blocks.len() * KV_BLOCK_SIZE;
        s.blocks = blocks;
        s.hashes = hashes;
    }

    /// Whether `s` can have blocks for its next `take` positions with `headroom` blocks
    /// of each pool left over.
    pub fn fits(&self, s: &Sequence, take: usize, headroom: usize) -> bool {
        let need = Sequence::blocks_for(s.computed + take).saturating_sub(s.blocks.len());
        need + headroom <= self.full.available()
            && self
                .windowed
                .as_ref()
                .is_none_or(|(w, _)| need + headroom <= w.available())
    }

    /// Gives `s` blocks for its next `take` positions, gives back the windowed blocks
    /// out of sight, and lists in `copies` the blocks it shared and must copy before
    /// writing (done whatever the answer). False when a pool has no block left.
    pub fn reserve(&mut self, s: &mut Sequence, take: usize, copies: &mut Vec<BlockCopy>) -> bool {
        let first = s.computed / KV_BLOCK_SIZE;
        let end = Sequence::blocks_for(s.computed + take);
        if !own_block(&mut self.full, &mut s.blocks, first, false, copies) {
            return false;
        }
        if let Some((windowed, window)) = &mut self.windowed {
            let out_of_sight = first_in_sight(s.computed, *window).min(s.window_blocks.len());
            for entry in &mut s.window_blocks[..out_of_sight] {
                if *entry != GIVEN_BACK {
                    windowed.release(&[*entry]);
                    *entry = GIVEN_BACK;
                }
            }
            if !own_block(windowed, &mut s.window_blocks, first, true, copies) {
                return false;
            }
            if !windowed.grow(&mut s.window_blocks, end) {
                return false;
            }
        }
        self.full.grow(&mut s.blocks, end)
    }

    /// Gives back the blocks of `s` past its first `positions` positions: those a check
    /// of proposals took for tokens that were not kept, or a reservation that failed
    /// half-way. Its tables are then those of a sequence that never asked for them.
    pub fn trim(&mut self, s: &mut Sequence, positions: usize) {
        // Newest first, so that the free lists are back in their order too.
        let keep = Sequence::blocks_for(positions);
        self.full.shrink(&mut s.blocks, keep);
        if let Some((windowed, _)) = &mut self.windowed {
            while s.window_blocks.len() > keep {
                match s.window_blocks.pop() {
                    Some(b) if b != GIVEN_BACK => windowed.release(&[b]),
                    _ => {}
                }
            }
        }
    }

    /// A fork of a sequence holds its blocks too.
    pub fn share(&mut self, s: &Sequence) {
        for &b in &s.blocks {
            self.full.share(b);
        }
        if let Some((windowed, _)) = &mut self.windowed {
            for &b in s.window_blocks.iter().filter(|&&b| b != GIVEN_BACK) {
                windowed.share(b);
            }
        }
    }

    /// Offers the sequence's newly filled prompt blocks to the prefix cache. Blocks
    /// holding generated tokens are not offered: their attention was summed in the
    /// one-token order (`first_one_token_position`), so a later prompt that contains
    /// those tokens must compute them afresh to get the same numbers as without the
    /// cache.
    pub fn offer_full_blocks(&mut self, s: &mut Sequence) {
        let full = s.computed.min(first_one_token_position(s.prompt_len)) / KV_BLOCK_SIZE;
        while s.hashes.len() < full {
            let k = s.hashes.len();
            let parent = s.hashes.last().copied().unwrap_or(ROOT_HASH);
            let h = block_hash(
                parent,
                &s.tokens[k * KV_BLOCK_SIZE..(k + 1) * KV_BLOCK_SIZE],
            );
            self.full.register(s.blocks[k], h);
            if let Some((windowed, _)) = &mut self.windowed {
                if let Some(&b) = s.window_blocks.get(k).filter(|&&b| b != GIVEN_BACK) {
                    windowed.register(b, h);
                }
            }
            s.hashes.push(h);
        }
    }

    /// (held, total, cached) blocks of the full pool.
    pub fn full_gauges(&self) -> (usize, usize, usize) {
        gauges(&self.full)
    }

    /// The same for the windowed pool (zeros without one).
    pub fn windowed_gauges(&self) -> (usize, usize, usize) {
        self.windowed.as_ref().map_or((0, 0, 0), |(w, _)| gauges(w))
    }
}

fn gauges(m: &BlockManager) -> (usize, usize, usize) {
    (m.used(), m.total(), m.cached_blocks())
}

/// Makes entry `i` of `table` (if any) a block held by this sequence alone, copying a
/// shared one. False when the pool has no block for the copy.
fn own_block(
    blocks: &mut BlockManager,
    table: &mut [u32],
    i: usize,
    windowed: bool,
    copies: &mut Vec<BlockCopy>,
) -> bool {
    let Some(&shared) = table.get(i).filter(|&&b| b != GIVEN_BACK) else {
        return true;
    };
    if blocks.holders(shared) <= 1 {
        return true;
    }
    let Some(own) = blocks.allocate() else {
        return false;
    };
    copies.push(BlockCopy {
        windowed,
        from: shared,
        to: own,
    });
    blocks.release(&[shared]);
    table[i] = own;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::request::Request;

    fn sequence(prompt_len: usize) -> Sequence {
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        Sequence::new(Request::greedy(vec![7; prompt_len], 64), events).unwrap()
    }

    /// A sequence that reads a prompt and decodes `steps` tokens one by one, or checking
    /// `proposals` extra tokens each step of which none is kept; its tables after.
    fn decode(tables: &mut KvTables, proposals: usize, steps: usize) -> Sequence {
        let mut s = sequence(40);
        let mut copies = Vec::new();
        assert!(tables.reserve(&mut s, 40, &mut copies));
        s.computed = 40;
        tables.offer_full_blocks(&mut s);
        for _ in 0..steps {
            s.tokens.push(3);
            assert!(tables.reserve(&mut s, 1 + proposals, &mut copies));
            s.computed += 1;
            let positions = s.computed;
            tables.trim(&mut s, positions);
        }
        s
    }

    #[test]
    fn rejected_proposals_leave_the_tables_of_a_plain_run() {
        for window in [None, Some((64, 24))] {
            let mut plain = KvTables::new(64, window, true);
            let mut checking = KvTables::new(64, window, true);
            let a = decode(&mut plain, 0, 30);
            let b = decode(&mut checking, 20, 30);
            assert_eq!(a.blocks, b.blocks);
            assert_eq!(a.window_blocks, b.window_blocks);
            assert_eq!(a.hashes, b.hashes);
            assert_eq!(plain.full_gauges(), checking.full_gauges());
            assert_eq!(plain.windowed_gauges(), checking.windowed_gauges());
            // The next allocation takes the same block both ways.
            assert_eq!(plain.full.allocate(), checking.full.allocate());
        }
    }
}
