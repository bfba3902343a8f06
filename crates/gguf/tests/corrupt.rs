//! Hand-made corrupt files: each gives a typed error that names the offset and field.

use gguf::{GgmlType, Gguf, GgufError, GgufWriter, Value};

/// Writes GGUF headers field by field, so tests can put any value anywhere.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, tensors: u64, kvs: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(tensors).u64(kvs);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for d in dims {
            self.u64(*d);
        }
        self.u32(ty).u64(offset)
    }
    fn data(&mut self, len: usize) -> Vec<u8> {
        let mut out = self.0.clone();
        out.resize(out.len().next_multiple_of(32), 0);
        out.resize(out.len() + len, 0);
        out
    }
}

fn err(bytes: &[u8]) -> GgufError {
    Gguf::parse(bytes).expect_err("corrupt file parsed")
}

fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("llama".into()));
    w.add_tensor("a", &[32, 2], GgmlType::Q8_0, vec![0; 68])
        .unwrap();
    w.to_bytes()
}

#[test]
fn wrong_magic() {
    let mut bytes = valid_file();
    bytes[0] = b'X';
    assert!(matches!(err(&bytes), GgufError::BadMagic { .. }));
}

#[test]
fn wrong_version() {
    for version in [0, 1, 4, 99] {
        let bytes = Raw::header(version, 0, 0).data(0);
        let e = err(&bytes);
        assert!(matches!(e, GgufError::UnsupportedVersion { version: v } if v == version));
        assert!(e.to_string().contains("offset 4"));
    }
}

#[test]
fn truncated_names_offset_and_field() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("llama".into()));
    let bytes = w.to_bytes();
    let e = err(&bytes[..40]);
    let msg = e.to_string();
    assert!(
        matches!(e, GgufError::Truncated { offset: 32, .. }),
        "{msg}"
    );
    assert!(msg.contains("metadata key #0"), "{msg}");
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    let e = err(&Raw::header(3, u64::MAX, 0).data(0));
    assert!(
        matches!(&e, GgufError::ImplausibleCount { offset: 8, field, .. } if field == "tensor_count"),
        "{e}"
    );
    let e = err(&Raw::header(3, 0, 1 << 40).data(0));
    assert!(
        matches!(e, GgufError::ImplausibleCount { offset: 16, .. }),
        "{e}"
    );

    let mut r = Raw::header(3, 0, 1);
    r.str("big").u32(9).u32(4).u64(1 << 50);
    let e = err(&r.data(0));
    assert!(e.to_string().contains("array length"), "{e}");
}

#[test]
fn string_length_past_the_end() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8).u64(1_000_000);
    let e = err(&r.0);
    assert!(
        matches!(
            e,
            GgufError::Truncated {
                offset: 45,
                needed: 1_000_000,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("metadata value \"k\""), "{e}");
}

#[test]
fn unknown_value_type() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(13);
    let e = err(&r.data(0));
    assert!(
        matches!(
            e,
            GgufError::UnknownValueType {
                type_id: 13,
                offset: 33,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unknown_tensor_type() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[32], 4, 0);
    let e = err(&r.data(64));
    assert!(
        matches!(e, GgufError::UnknownTensorType { type_id: 4, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("\"w\""), "{e}");
}

#[test]
fn bad_dimensions() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[1, 1, 1, 1, 1], 0, 0);
    assert!(err(&r.data(4)).to_string().contains("n_dims is 5"));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[1 << 40, 1 << 40], 0, 0);
    assert!(err(&r.data(4)).to_string().contains("overflow"));

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[33], GgmlType::Q4_0.id(), 0);
    assert!(err(&r.data(64)).to_string().contains("not a multiple"));
}

#[test]
fn tensor_out_of_range() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[64], 0, 0);
    let e = err(&r.data(100));
    assert!(
        matches!(e, GgufError::TensorOutOfRange { ref tensor, .. } if tensor == "w"),
        "{e}"
    );

    let mut r = Raw::header(3, 1, 0);
    r.tensor("w", &[8], 0, u64::MAX - 31);
    assert!(matches!(
        err(&r.data(64)),
        GgufError::TensorOutOfRange { .. }
    ));
}

#[test]
fn overlapping_tensors() {
    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[32], 0, 0).tensor("b", &[32], 0, 64);
    let e = err(&r.data(256));
    assert!(matches!(e, GgufError::TensorsOverlap { .. }), "{e}");
}

#[test]
fn misaligned_offset_and_duplicates() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("a", &[8], 0, 4);
    assert!(err(&r.data(64)).to_string().contains("alignment"));

    let mut r = Raw::header(3, 2, 0);
    r.tensor("a", &[8], 0, 0).tensor("a", &[8], 0, 32);
    assert!(matches!(
        err(&r.data(64)),
        GgufError::DuplicateTensor { .. }
    ));

    let mut r = Raw::header(3, 0, 2);
    r.str("k").u32(4).u32(1).str("k").u32(4).u32(2);
    assert!(matches!(err(&r.0), GgufError::DuplicateKey { .. }));
}

#[test]
fn version_2_is_read() {
    let mut bytes = valid_file();
    bytes[4] = 2;
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version, 2);
    assert_eq!(g.architecture().unwrap(), "llama");
}

#[test]
fn empty_tensor_past_the_end_of_the_file() {
    // Found by the fuzzer: a zero-sized tensor and a file that ends before the data section.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("z", &[0], 0, 0);
    assert!(matches!(err(&r.0), GgufError::Truncated { .. }));
}
