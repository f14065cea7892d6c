//! Property tests for GGUF reading: random valid files parse back to what was written, and no
//! input (arbitrary bytes, or valid files with bytes flipped, fields overwritten or cut short)
//! makes the parser panic; whatever parses can be walked completely.

use edgellm_core::gguf::{ArrayValue, Gguf, Value, ValueType};
pub use edgellm_core::kernels::GgmlType;
use proptest::prelude::*;

#[path = "common/gguf_writer.rs"]
mod gguf_writer;

use gguf_writer::{Builder, W};

fn scalar_of(ty: u32) -> BoxedStrategy<W> {
    match ty {
        0 => any::<u8>().prop_map(W::U8).boxed(),
        1 => any::<i8>().prop_map(W::I8).boxed(),
        2 => any::<u16>().prop_map(W::U16).boxed(),
        3 => any::<i16>().prop_map(W::I16).boxed(),
        4 => any::<u32>().prop_map(W::U32).boxed(),
        5 => any::<i32>().prop_map(W::I32).boxed(),
        6 => any::<f32>().prop_map(W::F32).boxed(),
        7 => any::<bool>().prop_map(W::Bool).boxed(),
        8 => "\\PC{0,12}".prop_map(W::Str).boxed(),
        10 => any::<u64>().prop_map(W::U64).boxed(),
        11 => any::<i64>().prop_map(W::I64).boxed(),
        _ => any::<f64>().prop_map(W::F64).boxed(),
    }
}

fn scalar_type() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..=8, 10u32..=12]
}

fn array_of_scalars() -> impl Strategy<Value = W> {
    scalar_type().prop_flat_map(|t| {
        proptest::collection::vec(scalar_of(t), 0..6).prop_map(move |v| W::Array(t, v))
    })
}

fn value() -> impl Strategy<Value = W> {
    prop_oneof![
        4 => scalar_type().prop_flat_map(scalar_of),
        2 => array_of_scalars(),
        1 => proptest::collection::vec(array_of_scalars(), 0..4).prop_map(|v| W::Array(9, v)),
        1 => proptest::collection::vec(proptest::collection::vec(array_of_scalars(), 0..3)
                .prop_map(|v| W::Array(9, v)), 0..3).prop_map(|v| W::Array(9, v)),
    ]
}

const TYPES: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::I8,
];

fn tensor() -> impl Strategy<Value = (GgmlType, Vec<u64>)> {
    (
        0..TYPES.len(),
        1u64..3,
        proptest::collection::vec(1u64..4, 0..3),
    )
        .prop_map(|(t, blocks, rest)| {
            let ty = TYPES[t];
            let mut dims = vec![ty.block_len() as u64 * blocks];
            dims.extend(rest);
            (ty, dims)
        })
}

fn valid_file() -> impl Strategy<Value = (Builder, Vec<(String, W)>)> {
    (
        2u32..=3,
        proptest::option::of(0u32..9),
        proptest::collection::vec(value(), 0..8),
        proptest::collection::vec(tensor(), 0..5),
    )
        .prop_map(|(version, align_log2, values, tensors)| {
            let mut b = Builder::new(version);
            let mut kvs = Vec::new();
            if let Some(l) = align_log2 {
                b = b.alignment(1 << l);
                kvs.push(("general.alignment".to_string(), W::U32(1 << l)));
            }
            for (i, v) in values.into_iter().enumerate() {
                let key = format!("test.key{i}");
                b = b.kv(&key, v.clone());
                kvs.push((key, v));
            }
            for (i, (ty, dims)) in tensors.into_iter().enumerate() {
                b = b.tensor(&format!("blk.{i}.weight"), &dims, ty);
            }
            (b, kvs)
        })
}

/// Whether a parsed value is what the writer wrote.
fn same(v: &Value<'_>, w: &W) -> bool {
    match (v, w) {
        (Value::U8(a), W::U8(b)) => a == b,
        (Value::I8(a), W::I8(b)) => a == b,
        (Value::U16(a), W::U16(b)) => a == b,
        (Value::I16(a), W::I16(b)) => a == b,
        (Value::U32(a), W::U32(b)) => a == b,
        (Value::I32(a), W::I32(b)) => a == b,
        (Value::F32(a), W::F32(b)) => a.to_bits() == b.to_bits(),
        (Value::Bool(a), W::Bool(b)) => a == b,
        (Value::Str(a), W::Str(b)) => a == b,
        (Value::U64(a), W::U64(b)) => a == b,
        (Value::I64(a), W::I64(b)) => a == b,
        (Value::F64(a), W::F64(b)) => a.to_bits() == b.to_bits(),
        (Value::Array(a), W::Array(t, items)) => {
            a.elem_type().id() == *t
                && a.len() == items.len()
                && a.iter().zip(items).all(|(v, w)| same(&v, w))
                && items
                    .iter()
                    .enumerate()
                    .all(|(i, w)| same(&a.get(i).unwrap(), w))
        }
        _ => false,
    }
}

/// Touches everything a parsed file offers; returns a checksum so nothing is optimised away.
fn walk(g: &Gguf<'_>) -> u64 {
    fn array(a: &ArrayValue<'_>) -> u64 {
        let mut n = 0usize;
        let mut sum = 0u64;
        for v in a.iter() {
            assert_eq!(v.value_type(), a.elem_type());
            sum = sum.wrapping_add(value(&v));
            n += 1;
        }
        assert_eq!(n, a.len());
        if let Some(last) = n.checked_sub(1) {
            assert!(a.get(last).is_some());
        }
        assert!(a.get(n).is_none());
        if a.elem_type() == ValueType::Str {
            assert_eq!(a.strings().unwrap().count(), n);
        }
        sum
    }
    fn value(v: &Value<'_>) -> u64 {
        match v {
            Value::Array(a) => array(a),
            Value::Str(s) => s.len() as u64,
            v => v.as_u64().unwrap_or(7),
        }
    }
    let mut sum = 0u64;
    for (k, v) in g.metadata() {
        assert!(std::ptr::eq(g.get(k).unwrap(), v));
        sum = sum.wrapping_add(value(v));
    }
    for t in g.tensors() {
        assert!(std::ptr::eq(g.tensor(t.name).unwrap(), t));
        assert_eq!(Some(t.data.len() as u64), t.ty.tensor_bytes(t.n_elements()));
        assert_eq!(t.offset % g.alignment as u64, 0);
        sum = t
            .data
            .iter()
            .fold(sum, |s, &b| s.wrapping_mul(31).wrapping_add(b.into()));
    }
    sum
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(g) = Gguf::parse(&bytes) {
            walk(&g);
        }
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(
        version in 2u32..=3,
        n_tensors in prop_oneof![0u64..4, any::<u64>()],
        n_kv in prop_oneof![0u64..4, any::<u64>()],
        rest in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&n_tensors.to_le_bytes());
        bytes.extend_from_slice(&n_kv.to_le_bytes());
        bytes.extend_from_slice(&rest);
        if let Ok(g) = Gguf::parse(&bytes) {
            walk(&g);
        }
    }

    #[test]
    fn valid_files_round_trip((b, kvs) in valid_file()) {
        let (bytes, layout) = b.build_with_layout();
        let g = Gguf::parse(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(g.version, b.version);
        prop_assert_eq!(g.data_offset, layout.data_offset);
        prop_assert_eq!(g.metadata().len(), kvs.len());
        for ((k, v), (wk, wv)) in g.metadata().iter().zip(&kvs) {
            prop_assert_eq!(*k, wk.as_str());
            prop_assert!(same(v, wv), "{}: {:?} vs {:?}", k, v, wv);
        }
        prop_assert_eq!(g.tensors().len(), b.tensors.len());
        for ((t, spec), &(start, end)) in g.tensors().iter().zip(&b.tensors).zip(&layout.tensor_ranges) {
            prop_assert_eq!(t.name.as_bytes(), &spec.name[..]);
            prop_assert_eq!(t.shape(), &spec.dims[..]);
            prop_assert_eq!(t.ty.id(), spec.ty);
            prop_assert_eq!(t.data, &bytes[start..end]);
        }
        walk(&g);
    }

    #[test]
    fn damaged_valid_files_never_panic(
        (b, _) in valid_file(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        overwrite in proptest::option::of((any::<prop::sample::Index>(), prop_oneof![
            Just(0u64), Just(1), Just(u64::MAX), Just(u64::MAX / 2), Just(1 << 32), Just(9), any::<u64>(),
        ])),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = b.build();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= byte;
        }
        if let Some((at, v)) = overwrite {
            let i = at.index(bytes.len().saturating_sub(8).max(1));
            let n = 8.min(bytes.len() - i);
            bytes[i..i + n].copy_from_slice(&v.to_le_bytes()[..n]);
        }
        if let Some(at) = cut {
            let n = at.index(bytes.len() + 1);
            bytes.truncate(n);
        }
        if let Ok(g) = Gguf::parse(&bytes) {
            walk(&g);
        }
    }
}
