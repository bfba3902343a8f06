//! The KV-cache block manager: which blocks of the pool are free, who holds each block
//! (reference counts, so forks and shared prefixes use one copy), and the prefix cache —
//! full blocks are named by a chained hash of their tokens so that a later request with
//! the same prefix reuses them. Blocks nobody holds stay cached until space is needed,
//! then the least recently used one is evicted.

use crate::backend::KV_BLOCK_SIZE;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The hash of the empty prefix: the parent of a sequence's first block.
pub const ROOT_HASH: u64 = 0;

/// The chained hash of a full block: its tokens and the hash of everything before it.
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same tokens hash the same way in every run.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

pub struct BlockManager {
    ref_count: Vec<u32>,
    /// Blocks holding nothing worth keeping.
    free: Vec<u32>,
    /// The prefix hash a full block is cached under.
    hash_of: Vec<Option<u64>>,
    cached: HashMap<u64, u32>,
    /// Cached blocks nobody holds, by when they were last released (oldest first).
    evictable: BTreeMap<u64, u32>,
    released_at: Vec<u64>,
    clock: u64,
    caching: bool,
}

impl BlockManager {
    pub fn new(blocks: usize, prefix_caching: bool) -> BlockManager {
        BlockManager {
            ref_count: vec![0; blocks],
            free: (0..blocks as u32).rev().collect(),
            hash_of: vec![None; blocks],
            cached: HashMap::new(),
            evictable: BTreeMap::new(),
            released_at: vec![0; blocks],
            clock: 0,
            caching: prefix_caching,
        }
    }

    pub fn total(&self) -> usize {
        self.ref_count.len()
    }

    /// Blocks some sequence holds.
    pub fn used(&self) -> usize {
        self.total() - self.free.len() - self.evictable.len()
    }

    /// Blocks an allocation could get now (free, or cached and evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Full blocks kept for prefix reuse (held or not).
    pub fn cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// A block for one holder, or `None` when every block is held.
    pub fn allocate(&mut self) -> Option<u32> {
        let block = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.evictable.pop_first()?;
                if let Some(h) = self.hash_of[b as usize].take() {
                    self.cached.remove(&h);
                }
                b
            }
        };
        self.ref_count[block as usize] = 1;
        Some(block)
    }

    /// Allocates blocks onto `table` until it has `blocks`; false when none is left.
    pub fn grow(&mut self, table: &mut Vec<u32>, blocks: usize) -> bool {
        while table.len() < blocks {
            match self.allocate() {
                Some(b) => table.push(b),
                None => return false,
            }
        }
        true
    }

    /// Releases the blocks of `table` past its first `blocks`, newest first (so that
    /// the free list is back in its order).
    pub fn shrink(&mut self, table: &mut Vec<u32>, blocks: usize) {
        while table.len() > blocks {
            let b = table.pop().unwrap_or_default();
            self.release(&[b]);
        }
    }

    /// One more holder of `block` (a fork sharing it).
    pub fn share(&mut self, block: u32) {
        self.ref_count[block as usize] += 1;
    }

    pub fn holders(&self, block: u32) -> u32 {
        self.ref_count[block as usize]
    }

    /// Gives up one hold of each block.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks {
            let i = b as usize;
            debug_assert!(self.ref_count[i] > 0, "block {b} released twice");
            self.ref_count[i] = self.ref_count[i].saturating_sub(1);
            if self.ref_count[i] > 0 {
                continue;
            }
            if self.hash_of[i].is_some() {
                self.clock += 1;
                self.released_at[i] = self.clock;
                self.evictable.insert(self.clock, b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// The cached blocks of the longest prefix of `tokens` made of full blocks, at most
    /// `max_blocks` of them, each now held once more; with their chained hashes.
    pub fn lookup_prefix(&mut self, tokens: &[u32], max_blocks: usize) -> (Vec<u32>, Vec<u64>) {
        let mut blocks = Vec::new();
        let mut hashes = Vec::new();
        if !self.caching {
            return (blocks, hashes);
        }
        let mut parent = ROOT_HASH;
        for chunk in tokens.chunks_exact(KV_BLOCK_SIZE).take(max_blocks) {
            let h = block_hash(parent, chunk);
            let Some(b) = self.hold_cached(h) else { break };
            blocks.push(b);
            hashes.push(h);
            parent = h;
        }
        (blocks, hashes)
    }

    /// Whether a block is cached under `hash`.
    pub fn is_cached(&self, hash: u64) -> bool {
        self.cached.contains_key(&hash)
    }

    /// The block cached under `hash`, now held once more.
    pub fn hold_cached(&mut self, hash: u64) -> Option<u32> {
        let &b = self.cached.get(&hash)?;
        if self.ref_count[b as usize] == 0 {
            self.evictable.remove(&self.released_at[b as usize]);
        }
        self.ref_count[b as usize] += 1;
        Some(b)
    }

    /// Offers a block that has just become full to the prefix cache under `hash`.
    /// When another block already holds that content, this one stays private.
    pub fn register(&mut self, block: u32, hash: u64) {
        if !self.caching || self.hash_of[block as usize].is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(block);
            self.hash_of[block as usize] = Some(hash);
        }
    }

    /// Every block is exactly one of: held, free, cached and evictable.
    #[cfg(test)]
    fn check_accounting(&self) {
        let held = self.ref_count.iter().filter(|&&r| r > 0).count();
        assert_eq!(held + self.free.len() + self.evictable.len(), self.total());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn allocation_runs_out_and_release_returns_blocks() {
        let mut m = BlockManager::new(3, true);
        let got: Vec<u32> = (0..3).map(|_| m.allocate().unwrap()).collect();
        assert_eq!(m.allocate(), None);
        assert_eq!(m.used(), 3);
        m.release(&got);
        assert_eq!(m.used(), 0);
        assert_eq!(m.available(), 3);
        m.check_accounting();
    }

    #[test]
    fn shared_blocks_are_freed_by_the_last_holder() {
        let mut m = BlockManager::new(2, true);
        let b = m.allocate().unwrap();
        m.share(b);
        m.release(&[b]);
        assert_eq!(m.holders(b), 1);
        assert_eq!(m.used(), 1);
        m.release(&[b]);
        assert_eq!(m.used(), 0);
        m.check_accounting();
    }

    #[test]
    fn a_cached_prefix_is_found_and_only_whole_blocks_match() {
        let mut m = BlockManager::new(8, true);
        let t = tokens(3 * KV_BLOCK_SIZE + 5, 1);
        let mut parent = ROOT_HASH;
        let mut blocks = Vec::new();
        for chunk in t.chunks_exact(KV_BLOCK_SIZE) {
            let b = m.allocate().unwrap();
            parent = block_hash(parent, chunk);
            m.register(b, parent);
            blocks.push(b);
        }
        m.release(&blocks);
        assert_eq!(m.used(), 0);

        let (found, _) = m.lookup_prefix(&t, usize::MAX);
        assert_eq!(found, blocks);
        assert_eq!(m.used(), 3);
        m.release(&found);

        // The same second block after a different first block is another prefix.
        let mut other = tokens(KV_BLOCK_SIZE, 99);
        other.extend_from_slice(&t[KV_BLOCK_SIZE..]);
        assert!(m.lookup_prefix(&other, usize::MAX).0.is_empty());
        // At most `max_blocks`.
        let (two, _) = m.lookup_prefix(&t, 2);
        assert_eq!(two, blocks[..2]);
        m.release(&two);
        m.check_accounting();
    }

    #[test]
    fn eviction_takes_the_least_recently_released_block() {
        let mut m = BlockManager::new(2, true);
        let a = m.allocate().unwrap();
        let b = m.allocate().unwrap();
        m.register(a, 1);
        m.register(b, 2);
        m.release(&[b]);
        m.release(&[a]);
        assert_eq!(m.cached_blocks(), 2);
        assert_eq!(m.allocate(), Some(b));
        assert_eq!(m.cached_blocks(), 1);
        m.check_accounting();
    }

    #[test]
    fn without_caching_nothing_is_kept() {
        let mut m = BlockManager::new(2, false);
        let a = m.allocate().unwrap();
        m.register(a, 5);
        m.release(&[a]);
        assert_eq!(m.cached_blocks(), 0);
        assert!(m.lookup_prefix(&tokens(KV_BLOCK_SIZE, 0), 1).0.is_empty());
    }
}
