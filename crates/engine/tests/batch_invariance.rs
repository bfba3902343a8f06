//! A sequence's logits do not depend on how its prompt is chunked, on what else is in
//! the batch, or on where its KV blocks sit in the pool: every row is reduced in the
//! same order whatever the batch.

use crate::common;
use engine::model::SeqBatch;
use engine::{Logits, Tokenizer};

fn text_tokens(tok: &Tokenizer, n: usize, skip: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(common::refs("ppl_text.txt")).unwrap();
    tok.encode(&text, true).unwrap()[skip..skip + n].to_vec()
}

#[test]
fn prompt_chunks_of_1_7_and_64_tokens_give_bit_identical_logits() {
    let (m, tok) = common::model_and_tokenizer();
    let ids = text_tokens(&tok, 150, 0);
    let mut cache = m.new_kv_cache(160).unwrap();
    let whole = m.forward(&ids, 0, &mut cache, Logits::All).unwrap();
    for chunk in [1, 7, 64] {
        let mut cache = m.new_kv_cache(160).unwrap();
        let mut pieces = Vec::new();
        for (c, part) in ids.chunks(chunk).enumerate() {
            pieces.extend(
                m.forward_prompt(part, c * chunk, ids.len(), &mut cache, Logits::All)
                    .unwrap(),
            );
        }
        assert!(pieces == whole, "chunks of {chunk} differ from one call");
    }
}

#[test]
fn logits_do_not_depend_on_the_rest_of_the_batch_or_on_block_placement() {
    let (m, tok) = common::model_and_tokenizer();
    let a = text_tokens(&tok, 40, 0);
    let b = text_tokens(&tok, 70, 300);
    let c = text_tokens(&tok, 9, 900);
    let vocab = m.config.vocab_size;

    let mut alone = m.new_kv_cache(64).unwrap();
    let a_alone = m.forward(&a, 0, &mut alone, Logits::All).unwrap();

    // The three sequences share one pool, their blocks interleaved and out of order.
    let mut pool = m.new_kv_pool(16).unwrap();
    let a_blocks = [9, 2, 14];
    let b_blocks = [0, 11, 5, 7, 3];
    let c_blocks = [12];
    let batch = [
        SeqBatch {
            tokens: &b,
            start: 0,
            blocks: &b_blocks,
            window_blocks: None,
            logits: Logits::Last,
            generated_from: b.len(),
        },
        SeqBatch {
            tokens: &a,
            start: 0,
            blocks: &a_blocks,
            window_blocks: None,
            logits: Logits::All,
            generated_from: a.len(),
        },
        SeqBatch {
            tokens: &c,
            start: 0,
            blocks: &c_blocks,
            window_blocks: None,
            logits: Logits::None,
            generated_from: c.len(),
        },
    ];
    let out = m.forward_batch(&batch, &mut pool).unwrap();
    assert_eq!(out.len(), (1 + a.len()) * vocab);
    assert!(out[vocab..] == a_alone[..], "a's logits changed in a batch");

    // Decoding the next token of each together equals decoding `a` alone.
    let next = [42u32];
    let a_next_alone = m.decode(next[0], a.len(), &mut alone).unwrap();
    let batch = [
        SeqBatch {
            tokens: &next,
            start: c.len(),
            blocks: &c_blocks,
            window_blocks: None,
            logits: Logits::Last,
            generated_from: c.len(),
        },
        SeqBatch {
            tokens: &next,
            start: a.len(),
            blocks: &a_blocks,
            window_blocks: None,
            logits: Logits::Last,
            generated_from: a.len(),
        },
    ];
    let out = m.forward_batch(&batch, &mut pool).unwrap();
    assert!(
        out[vocab..] == a_next_alone[..],
        "a's decode changed in a batch"
    );
}

#[test]
fn a_batch_whose_blocks_do_not_cover_its_tokens_is_an_error() {
    let (m, _) = common::model_and_tokenizer();
    let mut pool = m.new_kv_pool(2).unwrap();
    let tokens = vec![1u32; 20];
    let batch = [SeqBatch {
        tokens: &tokens,
        start: 0,
        blocks: &[0],
        window_blocks: None,
        logits: Logits::Last,
        generated_from: tokens.len(),
    }];
    assert!(m.forward_batch(&batch, &mut pool).is_err());
}
