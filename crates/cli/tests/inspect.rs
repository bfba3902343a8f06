//! `llama-gpu inspect` on the default model and on corrupt files.

use crate::common;
use common::{llama_gpu, stderr, stdout};
use gguf::{GgmlType, GgufWriter, Value};

#[test]
fn inspect_default_model() {
    let out = llama_gpu(&["inspect", "default", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["architecture"], "llama");
    assert_eq!(r["layers"], 30);
    assert_eq!(r["embedding_length"], 576);
    assert_eq!(r["heads"], 9);
    assert_eq!(r["kv_heads"], 3);
    assert_eq!(r["tensor_types"]["Q4_1"], 210);
    assert_eq!(r["tensor_types"]["Q8_0"], 1);
    assert_eq!(r["tensor_types"]["F32"], 61);
    assert_eq!(r["tokenizer"]["model"], "gpt2");
    assert_eq!(r["tokenizer"]["pre"], "smollm");
    assert_eq!(r["tokenizer"]["vocab_size"], 49152);

    let text = stdout(&llama_gpu(&["inspect", "default"]));
    assert!(text.contains("layers        30"), "{text}");
    let list = stdout(&llama_gpu(&["models", "list"]));
    assert!(
        list.contains("smollm2-135m-instruct") && list.contains("b179c9523d0e"),
        "{list}"
    );
}

fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("llama".into()));
    w.add_metadata("llama.block_count", Value::U32(1));
    w.add_tensor("w", &[32, 2], GgmlType::Q8_0, vec![0; 68])
        .unwrap();
    w.to_bytes()
}

#[test]
fn corrupt_files_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let valid = valid_file();
    let path = dir.path().join("ok.gguf");
    std::fs::write(&path, &valid).unwrap();
    assert!(llama_gpu(&["inspect", path.to_str().unwrap()])
        .status
        .success());

    let data_offset = gguf::Gguf::parse(&valid).unwrap().data_offset as usize;
    let type_and_offset = [8u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let tensor_type_at = valid[..data_offset]
        .windows(12)
        .rposition(|w| w == type_and_offset)
        .unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "magic",
            b"GGUX".iter().chain(&valid[4..]).copied().collect(),
        ),
        (
            "version",
            [&valid[..4], &9u32.to_le_bytes(), &valid[8..]].concat(),
        ),
        ("truncated", valid[..valid.len() - 50].to_vec()),
        ("empty", Vec::new()),
        (
            "tensor count",
            [&valid[..8], &u64::MAX.to_le_bytes(), &valid[16..]].concat(),
        ),
    ];
    let mut bad_type = valid.clone();
    bad_type[tensor_type_at..tensor_type_at + 4].copy_from_slice(&77u32.to_le_bytes());
    cases.push(("tensor type", bad_type));
    let mut bad_offset = valid.clone();
    bad_offset[tensor_type_at + 4..tensor_type_at + 12].copy_from_slice(&4096u64.to_le_bytes());
    cases.push(("offset", bad_offset));

    for (what, bytes) in cases {
        let path = dir.path().join(format!("{what}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        let out = llama_gpu(&["inspect", path.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
        assert!(
            err.starts_with("error: ") && !err.contains("panick"),
            "{what}: {err}"
        );
    }
}

#[test]
fn unknown_model_and_bad_flags() {
    let out = llama_gpu(&["inspect", "no-such-model"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no-such-model"));
    let out = llama_gpu(&["inspect", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn every_tiny_family_preset_is_written_and_inspected_with_its_rules() {
    let dir = tempfile::tempdir().unwrap();
    for (family, rule) in [
        ("qwen3", "qk-norm"),
        ("gemma3", "post-norms"),
        ("gemma2", "scores capped at 2"),
        ("phi3", "queries x"),
        ("smollm3", "no RoPE on 1 of 4 layers"),
    ] {
        let path = dir.path().join(format!("{family}.gguf"));
        let path = path.to_str().unwrap();
        let shape = format!("{family}-tiny");
        let out = llama_gpu(&["quantize", "--synthetic", &shape, "Q8_0", path]);
        assert!(out.status.success(), "{family}: {}", stderr(&out));
        let text = stdout(&llama_gpu(&["inspect", path]));
        assert!(text.contains(&format!("architecture  {family}")), "{text}");
        assert!(text.contains(rule), "{family}: {text}");
    }
    let out = llama_gpu(&["quantize", "--synthetic", "mamba-tiny", "Q8_0", "x.gguf"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("smollm3-tiny"), "{}", stderr(&out));
}
