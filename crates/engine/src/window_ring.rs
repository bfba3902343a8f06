//! One sequence's windowed KV blocks kept as a ring. A windowed layer never looks further
//! back than its window, so `KvCache` (behind `run`, `chat`, `bench` and `perplexity`)
//! keeps the windowed layers' keys and values in a pool of a few blocks used in turn:
//! the sequence's block b lives in ring block b mod the ring's size. Their memory is then
//! bounded by the window however long the sequence grows, as the serving engine's is by
//! giving windowed blocks back (`serving::kv_tables`).
//!
//! What a ring cannot do is go back further than it keeps: positions the window of a
//! resumed sequence needs may have been overwritten since. `resumable` says whether they
//! are still there, and `forward_sequence` refuses a call whose window is gone rather
//! than read other positions' keys.

use crate::backend::KV_BLOCK_SIZE;

/// The most tokens one forward call writes through a ring; `Llama::forward_sequence`
/// cuts longer calls into pieces this long (the logits are the same: a sequence's
/// results never depend on how it is chunked).
pub const RING_CALL: usize = 512;

/// Positions a sequence can go back and resume from, beyond one call: a speculative
/// check's rejected tokens, a chat's re-rendered last turn, `bench`'s repetitions from the
/// same depth.
const RING_GO_BACK: usize = 1024;

pub struct WindowRing {
    window: usize,
    /// The windowed pool's block table: the sequence's block b is ring block b mod len.
    table: Vec<u32>,
    /// Per ring block, the sequence block whose positions it holds.
    holds: Vec<Option<usize>>,
}

impl WindowRing {
    /// Ring blocks for `window`: what a call of `RING_CALL` tokens sees and writes, and
    /// `RING_GO_BACK` positions more.
    pub fn blocks(window: usize) -> usize {
        (window + RING_CALL + RING_GO_BACK).div_ceil(KV_BLOCK_SIZE) + 1
    }

    /// A ring of `ring_blocks` blocks for a sequence of up to `context_blocks` blocks.
    pub fn new(window: usize, context_blocks: usize, ring_blocks: usize) -> WindowRing {
        WindowRing {
            window,
            table: (0..context_blocks)
                .map(|b| (b % ring_blocks) as u32)
                .collect(),
            holds: vec![None; ring_blocks],
        }
    }

    /// Positions it holds.
    pub fn kept(&self) -> usize {
        self.holds.len() * KV_BLOCK_SIZE
    }

    /// Positions a ring for `window` holds.
    pub fn kept_for(window: usize) -> usize {
        WindowRing::blocks(window) * KV_BLOCK_SIZE
    }

    /// The block table to run the windowed layers through.
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// Whether a call starting at `start` finds every position before it that its
    /// window shows, and has room for `tokens` more without overwriting them.
    pub fn resumable(&self, start: usize, tokens: usize) -> bool {
        let ring = self.holds.len();
        let first = (start + 1).saturating_sub(self.window) / KV_BLOCK_SIZE;
        let last = (start + tokens.max(1) - 1) / KV_BLOCK_SIZE;
        last - first < ring
            && (first..start.div_ceil(KV_BLOCK_SIZE)).all(|b| self.holds[b % ring] == Some(b))
    }

    /// Records that positions `start..end` were written.
    pub fn wrote(&mut self, start: usize, end: usize) {
        let ring = self.holds.len();
        for b in start / KV_BLOCK_SIZE..end.div_ceil(KV_BLOCK_SIZE) {
            self.holds[b % ring] = Some(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_resumes_only_where_the_window_is_still_held() {
        let window = 64;
        let blocks = WindowRing::blocks(window);
        let mut ring = WindowRing::new(window, 1000, blocks);
        assert!(ring.resumable(0, RING_CALL));
        let end = 8 * RING_CALL;
        for start in (0..end).step_by(RING_CALL) {
            assert!(ring.resumable(start, RING_CALL), "at {start}");
            ring.wrote(start, start + RING_CALL);
        }
        // Going back RING_GO_BACK positions is fine, further is not.
        assert!(ring.resumable(end - RING_GO_BACK, RING_CALL));
        let kept = blocks * KV_BLOCK_SIZE;
        assert!(!ring.resumable(end - kept, 1));
        // A call longer than the ring's room is refused whatever it finds.
        assert!(!ring.resumable(end, kept));
        // Every ring block is one of the table's entries, in turn.
        assert_eq!(ring.table()[blocks], 0);
        assert_eq!(ring.table()[blocks + 3], 3);
    }

    #[test]
    fn a_partly_written_block_must_still_be_the_sequences() {
        let mut ring = WindowRing::new(32, 100, 4);
        ring.wrote(0, 40);
        assert!(ring.resumable(40, 8));
        // Blocks 3, 4 and 5 go to ring blocks 3, 0 and 1; resuming at 40 would need
        // positions 9..40 of blocks 0, 1 and 2, and only block 2 is still there.
        ring.wrote(48, 96);
        assert!(!ring.resumable(40, 8));
        assert!(ring.resumable(96, 8));
    }
}
