//! Property tests: random valid files read back identically, and no truncation parses.

use gguf::{Array, GgmlType, Gguf, GgufWriter, Value, ValueType};
use proptest::prelude::*;

fn scalar_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        (-1e6f32..1e6).prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        ".{0,12}".prop_map(Value::String),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        (-1e6f64..1e6).prop_map(Value::F64),
    ]
}

fn array_of(element: Value, len: usize) -> Value {
    Value::Array(Array {
        element_type: element.value_type(),
        values: vec![element; len],
    })
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar_value(),
        1 => (scalar_value(), 0usize..5).prop_map(|(v, n)| array_of(v, n)),
        1 => (scalar_value(), 1usize..3, 0usize..3)
            .prop_map(|(v, inner, outer)| {
                let nested = array_of(v, inner);
                Value::Array(Array { element_type: ValueType::Array, values: vec![nested; outer] })
            }),
    ]
}

const TENSOR_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
];

fn tensor() -> impl Strategy<Value = (Vec<u64>, GgmlType, u8)> {
    (0..TENSOR_TYPES.len(), 1u64..3, 1u64..4, any::<u8>()).prop_map(|(t, blocks, rows, fill)| {
        let ty = TENSOR_TYPES[t];
        (vec![blocks * ty.block_size() as u64, rows], ty, fill)
    })
}

fn build(
    kvs: &[(String, Value)],
    tensors: &[(Vec<u64>, GgmlType, u8)],
    alignment: Option<u32>,
) -> Vec<u8> {
    let mut w = GgufWriter::new();
    if let Some(a) = alignment {
        w.add_metadata("general.alignment", Value::U32(a));
    }
    for (k, v) in kvs {
        w.add_metadata(k.clone(), v.clone());
    }
    for (i, (dims, ty, fill)) in tensors.iter().enumerate() {
        let n: u64 = dims.iter().product();
        let size = ty.bytes_for(n).unwrap() as usize;
        let data = (0..size).map(|j| fill.wrapping_add(j as u8)).collect();
        w.add_tensor(format!("t{i}"), dims, *ty, data).unwrap();
    }
    w.to_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn written_files_read_back_identically(
        kvs in proptest::collection::btree_map("[a-z.]{1,10}", value(), 0..6),
        tensors in proptest::collection::vec(tensor(), 0..4),
        alignment in prop_oneof![Just(None), Just(Some(8u32)), Just(Some(64u32))],
    ) {
        let kvs: Vec<(String, Value)> = kvs.into_iter().filter(|(k, _)| k != "general.alignment").collect();
        let bytes = build(&kvs, &tensors, alignment);
        let parsed = Gguf::parse(&bytes).unwrap();
        let offset = usize::from(alignment.is_some());
        prop_assert_eq!(parsed.metadata.len(), kvs.len() + offset);
        for (k, v) in &kvs {
            prop_assert_eq!(parsed.metadata.get(k), Some(v));
        }
        prop_assert_eq!(parsed.tensors.len(), tensors.len());
        for (i, (info, (dims, ty, fill))) in parsed.tensors.iter().zip(&tensors).enumerate() {
            prop_assert_eq!(&info.name, &format!("t{i}"));
            prop_assert_eq!(&info.dims, dims);
            prop_assert_eq!(info.ty, *ty);
            let start = (parsed.data_offset + info.offset) as usize;
            let data = &bytes[start..start + info.size as usize];
            prop_assert!(data.iter().enumerate().all(|(j, b)| *b == fill.wrapping_add(j as u8)));
        }
    }

    #[test]
    fn every_truncation_is_an_error(
        kvs in proptest::collection::btree_map("[a-z]{1,6}", value(), 0..4),
        tensors in proptest::collection::vec(tensor(), 0..3),
    ) {
        let kvs: Vec<(String, Value)> = kvs.into_iter().collect();
        let bytes = build(&kvs, &tensors, None);
        for len in 0..bytes.len() {
            prop_assert!(Gguf::parse(&bytes[..len]).is_err(), "prefix of {} of {} bytes parsed", len, bytes.len());
        }
    }
}
