//! Feeds arbitrary bytes to the GGUF parser: it must return an error or a header whose
//! tensor ranges all lie inside the input, and never panic or over-allocate.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = gguf::Gguf::parse(data) {
        for t in &g.tensors {
            let end = g.data_offset + t.offset + t.size;
            assert!(end <= data.len() as u64);
        }
    }
});
