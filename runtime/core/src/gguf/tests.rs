//! Unit tests: files built by the test writer parse back to what was written.

extern crate std;

use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use super::*;

#[path = "../../tests/common/gguf_writer.rs"]
mod writer;

use writer::{Builder, TensorSpec, W};

fn all_scalars(b: Builder) -> Builder {
    b.kv("general.architecture", W::str("llama"))
        .kv("t.u8", W::U8(200))
        .kv("t.i8", W::I8(-5))
        .kv("t.u16", W::U16(65000))
        .kv("t.i16", W::I16(-30000))
        .kv("t.u32", W::U32(4_000_000_000))
        .kv("t.i32", W::I32(-2_000_000_000))
        .kv("t.f32", W::F32(1.5))
        .kv("t.bool", W::Bool(true))
        .kv("t.str", W::str("héllo ✓"))
        .kv("t.arr", W::Array(4, vec![W::U32(1), W::U32(2), W::U32(3)]))
        .kv("t.u64", W::U64(u64::MAX))
        .kv("t.i64", W::I64(i64::MIN))
        .kv("t.f64", W::F64(-0.25))
}

#[test]
fn all_value_types_round_trip_v2_and_v3() {
    for version in [2, 3] {
        let bytes = all_scalars(Builder::new(version)).build();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.version, version);
        assert_eq!(g.alignment, DEFAULT_ALIGNMENT);
        assert_eq!(g.metadata().len(), 14);
        assert_eq!(g.metadata()[1].0, "t.u8");
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.get("t.u8"), Some(&Value::U8(200)));
        assert_eq!(g.get("t.i8"), Some(&Value::I8(-5)));
        assert_eq!(g.get("t.u16"), Some(&Value::U16(65000)));
        assert_eq!(g.get("t.i16"), Some(&Value::I16(-30000)));
        assert_eq!(g.get("t.u32"), Some(&Value::U32(4_000_000_000)));
        assert_eq!(g.get("t.i32"), Some(&Value::I32(-2_000_000_000)));
        assert_eq!(g.get("t.f32"), Some(&Value::F32(1.5)));
        assert_eq!(g.get("t.bool"), Some(&Value::Bool(true)));
        assert_eq!(g.get("t.str"), Some(&Value::Str("héllo ✓")));
        assert_eq!(g.get("t.u64"), Some(&Value::U64(u64::MAX)));
        assert_eq!(g.get("t.i64"), Some(&Value::I64(i64::MIN)));
        assert_eq!(g.get("t.f64"), Some(&Value::F64(-0.25)));
        assert_eq!(g.get("missing"), None);

        assert_eq!(g.get_u64("t.u8"), Some(200));
        assert_eq!(g.get_u64("t.u64"), Some(u64::MAX));
        assert_eq!(g.get_u32("t.u64"), None);
        assert_eq!(g.get_u32("t.u32"), Some(4_000_000_000));
        assert_eq!(g.get_u64("t.i8"), None);
        assert_eq!(g.get_u64("t.f32"), None);
        assert_eq!(g.get_f32("t.f32"), Some(1.5));
        assert_eq!(g.get_f32("t.f64"), Some(-0.25));
        assert_eq!(g.get_f32("t.u8"), None);
        assert_eq!(g.get_bool("t.bool"), Some(true));
        assert_eq!(g.get_str("t.str"), Some("héllo ✓"));
        assert_eq!(g.get_str("t.u8"), None);
        let arr = g.get_array("t.arr").unwrap();
        assert_eq!(arr.elem_type(), ValueType::U32);
        assert_eq!(arr.u32s().unwrap().collect::<Vec<_>>(), [1, 2, 3]);
        assert!(arr.f32s().is_none());
        assert!(g.tensors().is_empty());
        assert_eq!(g.data_offset % 32, 0);
    }
}

#[test]
fn signed_non_negative_integers_read_as_unsigned() {
    let bytes = Builder::new(3)
        .kv("a", W::I32(7))
        .kv("b", W::I64(1 << 40))
        .kv("c", W::I16(-1))
        .build();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.get_u32("a"), Some(7));
    assert_eq!(g.get_u64("b"), Some(1 << 40));
    assert_eq!(g.get_u32("b"), None);
    assert_eq!(g.get_u64("c"), None);
}

#[test]
fn arrays_of_every_type_and_nested_arrays() {
    let strings: Vec<W> = ["a", "", "ü", "longer token"]
        .iter()
        .map(|s| W::str(s))
        .collect();
    let nested = W::Array(
        9,
        vec![
            W::Array(8, vec![W::str("x"), W::str("yz")]),
            W::Array(6, vec![W::F32(1.0), W::F32(-2.0)]),
            W::Array(9, vec![W::Array(0, vec![W::U8(9)])]),
            W::Array(4, vec![]),
        ],
    );
    let bytes = Builder::new(3)
        .kv("s", W::Array(8, strings))
        .kv("f", W::Array(6, vec![W::F32(0.5), W::F32(-1.0)]))
        .kv("i", W::Array(5, vec![W::I32(-3), W::I32(4)]))
        .kv("b", W::Array(7, vec![W::Bool(false), W::Bool(true)]))
        .kv("u8", W::Array(0, vec![W::U8(1), W::U8(255)]))
        .kv("i8", W::Array(1, vec![W::I8(-1)]))
        .kv("u16", W::Array(2, vec![W::U16(513)]))
        .kv("i16", W::Array(3, vec![W::I16(-513)]))
        .kv("u64", W::Array(10, vec![W::U64(1), W::U64(2)]))
        .kv("i64", W::Array(11, vec![W::I64(-1)]))
        .kv("f64", W::Array(12, vec![W::F64(2.5)]))
        .kv("nested", nested)
        .kv("empty", W::Array(8, vec![]))
        .build();
    let g = Gguf::parse(&bytes).unwrap();

    let s = g.get_array("s").unwrap();
    assert_eq!(s.len(), 4);
    assert_eq!(
        s.strings().unwrap().collect::<Vec<_>>(),
        ["a", "", "ü", "longer token"]
    );
    assert_eq!(s.get(2), Some(Value::Str("ü")));
    assert_eq!(s.get(4), None);
    assert!(g.get_array("f").unwrap().strings().is_none());
    assert_eq!(
        g.get_array("f")
            .unwrap()
            .f32s()
            .unwrap()
            .collect::<Vec<_>>(),
        [0.5, -1.0]
    );
    assert_eq!(g.get_array("f").unwrap().get(1), Some(Value::F32(-1.0)));
    assert_eq!(
        g.get_array("i")
            .unwrap()
            .i32s()
            .unwrap()
            .collect::<Vec<_>>(),
        [-3, 4]
    );
    assert_eq!(
        g.get_array("b").unwrap().iter().collect::<Vec<_>>(),
        [Value::Bool(false), Value::Bool(true)]
    );
    assert_eq!(g.get_array("u8").unwrap().get(1), Some(Value::U8(255)));
    assert_eq!(g.get_array("i8").unwrap().get(0), Some(Value::I8(-1)));
    assert_eq!(g.get_array("u16").unwrap().get(0), Some(Value::U16(513)));
    assert_eq!(g.get_array("i16").unwrap().get(0), Some(Value::I16(-513)));
    assert_eq!(g.get_array("u64").unwrap().get(1), Some(Value::U64(2)));
    assert_eq!(
        g.get_array("u64")
            .unwrap()
            .u64s()
            .unwrap()
            .collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    assert_eq!(g.get_array("i64").unwrap().get(0), Some(Value::I64(-1)));
    assert_eq!(g.get_array("f64").unwrap().get(0), Some(Value::F64(2.5)));
    assert!(g.get_array("empty").unwrap().is_empty());
    assert_eq!(g.get_array("empty").unwrap().strings().unwrap().count(), 0);

    let n = g.get_array("nested").unwrap();
    assert_eq!(n.elem_type(), ValueType::Array);
    assert_eq!(n.len(), 4);
    let inner: Vec<Value> = n.iter().collect();
    assert_eq!(inner.len(), 4);
    let a0 = inner[0].as_array().unwrap();
    assert_eq!(a0.strings().unwrap().collect::<Vec<_>>(), ["x", "yz"]);
    let a1 = n.get(1).unwrap();
    assert_eq!(
        a1.as_array().unwrap().f32s().unwrap().collect::<Vec<_>>(),
        [1.0, -2.0]
    );
    let a2 = n.get(2).unwrap();
    let a2 = a2.as_array().unwrap();
    assert_eq!(a2.elem_type(), ValueType::Array);
    let deepest = a2.get(0).unwrap();
    assert_eq!(deepest.as_array().unwrap().get(0), Some(Value::U8(9)));
    assert!(n.get(3).unwrap().as_array().unwrap().is_empty());
    assert_eq!(n.get(4), None);
}

#[test]
fn tensors_of_several_types_with_custom_alignment() {
    for (version, align) in [(3, 64u32), (2, 32), (3, 1), (3, 4096)] {
        let b = Builder::new(version)
            .kv("general.architecture", W::str("llama"))
            .alignment(align)
            .tensor("a.f32", &[8, 3], GgmlType::F32)
            .tensor("b.q4_1", &[64, 2], GgmlType::Q4_1)
            .tensor("c.q8_0", &[32], GgmlType::Q8_0)
            .tensor("d.f16", &[4, 2, 3, 2], GgmlType::F16)
            .tensor("e.q4_k", &[256, 2], GgmlType::Q4_K)
            // Rows of 576 are not whole I2_S blocks of 128, the tensor is (288 of them).
            .tensor("f.i2_s", &[576, 64], GgmlType::I2_S);
        let (bytes, layout) = b.build_with_layout();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.alignment, align as usize);
        assert_eq!(g.data_offset, layout.data_offset);
        assert_eq!(g.data_offset % align as usize, 0);
        assert_eq!(g.tensors().len(), 6);
        let names: Vec<&str> = g.tensors().iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            ["a.f32", "b.q4_1", "c.q8_0", "d.f16", "e.q4_k", "f.i2_s"]
        );
        for (t, &(start, end)) in g.tensors().iter().zip(&layout.tensor_ranges) {
            assert_eq!(t.data, &bytes[start..end], "{}", t.name);
            assert_eq!(t.offset % align as u64, 0);
            assert_eq!(
                t.data.len() as u64,
                t.ty.tensor_bytes(t.n_elements()).unwrap()
            );
        }
        let d = g.tensor("d.f16").unwrap();
        assert_eq!(d.dims, [4, 2, 3, 2]);
        assert_eq!(d.n_dims, 4);
        assert_eq!(d.shape(), [4, 2, 3, 2]);
        assert_eq!(d.n_elements(), 48);
        assert_eq!(d.row_len(), 4);
        assert_eq!(d.n_rows(), 12);
        let c = g.tensor("c.q8_0").unwrap();
        assert_eq!((c.dims, c.n_dims, c.ty), ([32, 1, 1, 1], 1, GgmlType::Q8_0));
        assert_eq!(c.data.len(), 34);
        assert_eq!(g.tensor("b.q4_1").unwrap().data.len(), 2 * 2 * 20);
        assert_eq!(g.tensor("e.q4_k").unwrap().data.len(), 2 * 144);
        // Two bits per weight, then the 32-byte trailer that holds the scale.
        assert_eq!(g.tensor("f.i2_s").unwrap().data.len(), 576 * 64 / 4 + 32);
        assert!(g.tensor("nope").is_none());
        assert_eq!(g.data().len(), bytes.len() - g.data_offset);
    }
}

#[test]
fn vocabulary_only_file_without_padding_parses() {
    let mut b = Builder::new(3).kv(
        "tokenizer.ggml.tokens",
        W::Array(8, vec![W::str("a"), W::str("bc")]),
    );
    b.write_data = false;
    let bytes = b.build();
    assert_ne!(bytes.len() % 32, 0);
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.data_offset, bytes.len());
    assert!(g.tensors().is_empty());
}

#[test]
fn tensors_in_any_order_of_offsets() {
    let mut b =
        Builder::new(3)
            .tensor("late", &[8], GgmlType::F32)
            .tensor("early", &[8], GgmlType::F32);
    b.tensors[0].offset = Some(64);
    b.tensors[1].offset = Some(0);
    let bytes = b.build();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.tensor("late").unwrap().offset, 64);
    assert_eq!(g.tensor("early").unwrap().offset, 0);
}

fn err(b: Builder) -> GgufError {
    Gguf::parse(&b.build()).unwrap_err()
}

#[test]
fn errors_name_what_where_and_which() {
    let e = err(Builder::new(3).kv("general.alignment", W::U64(32)));
    assert_eq!(
        e,
        GgufError::AlignmentWrongType {
            found: ValueType::U64
        }
    );
    assert!(
        e.to_string().contains("expected type u32, found u64"),
        "{e}"
    );

    let e = err(Builder::new(3).alignment(48));
    assert_eq!(e, GgufError::InvalidAlignment { found: 48 });
    let e = err(Builder::new(3).alignment(0));
    assert_eq!(e, GgufError::InvalidAlignment { found: 0 });

    let e = err(Builder::new(1));
    assert_eq!(e, GgufError::UnsupportedVersion { found: 1 });
    assert!(e.to_string().contains("expected 2 or 3, found 1"), "{e}");
    let e = err(Builder::new(3u32.swap_bytes()));
    assert!(e.to_string().contains("big-endian"), "{e}");

    let e = err(Builder::new(3).kv("k", W::Raw(13, vec![0; 8])));
    assert!(
        matches!(e, GgufError::UnknownValueType { id: 13, ref key, offset: 33 } if key == "k"),
        "{e:?}"
    );
    assert!(e.to_string().contains("key `k`"), "{e}");

    let e = err(Builder::new(3).kv("flag", W::Raw(7, vec![2])));
    assert!(
        matches!(e, GgufError::InvalidBool { found: 2, .. }),
        "{e:?}"
    );
    let e = err(Builder::new(3).kv("flags", W::Array(7, vec![W::U8(1), W::U8(3)])));
    assert!(
        matches!(e, GgufError::InvalidBool { found: 3, .. }),
        "{e:?}"
    );

    let e = err(Builder::new(3).kv("k", W::U8(1)).kv("k", W::U8(2)));
    assert!(
        matches!(e, GgufError::DuplicateKey { ref key, .. } if key == "k"),
        "{e:?}"
    );

    let e = err(Builder::new(3).kv("k", W::StrBytes(vec![0xff, 0xfe])));
    assert!(
        matches!(
            e,
            GgufError::InvalidUtf8 {
                what: "string value",
                ..
            }
        ),
        "{e:?}"
    );

    let e = err(Builder::new(3).tensor("w", &[33], GgmlType::Q4_0));
    assert!(
        matches!(
            e,
            GgufError::RowNotWholeBlocks {
                row_len: 33,
                block_len: 32,
                ty: GgmlType::Q4_0,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("tensor `w`"), "{e}");

    let mut b = Builder::new(3).tensor("w", &[8], GgmlType::F32);
    b.tensors[0].offset = Some(8);
    let e = err(b);
    assert_eq!(
        e,
        GgufError::MisalignedTensor {
            tensor: "w".to_string(),
            offset: 8,
            alignment: 32
        }
    );

    let mut b = Builder::new(3)
        .tensor("a", &[16], GgmlType::F32)
        .tensor("b", &[16], GgmlType::F32);
    b.tensors[1].offset = Some(32);
    let e = err(b);
    assert_eq!(
        e,
        GgufError::TensorOverlap {
            first: "a".to_string(),
            second: "b".to_string(),
            offset: 32
        }
    );

    let e = err(Builder::new(3).tensor("big", &[1 << 32, 1 << 32], GgmlType::F32));
    assert!(matches!(e, GgufError::TensorTooLarge { .. }), "{e:?}");
    let e = err(Builder::new(3).tensor("big", &[1 << 62], GgmlType::F32));
    assert!(matches!(e, GgufError::TensorTooLarge { .. }), "{e:?}");
}

#[test]
fn long_names_are_shortened_in_errors() {
    let long: String = "k".repeat(10_000);
    let e = err(Builder::new(3).kv(&long, W::U8(1)).kv(&long, W::U8(1)));
    let GgufError::DuplicateKey { key, .. } = e else {
        panic!("{e:?}")
    };
    assert!(key.len() < 120 && key.ends_with("..."));
}

#[test]
fn nesting_limit_is_exact() {
    fn nest(levels: usize) -> W {
        let mut v = W::Array(0, vec![W::U8(1)]);
        for _ in 1..levels {
            v = W::Array(9, vec![v]);
        }
        v
    }
    let ok = Builder::new(3).kv("n", nest(MAX_ARRAY_DEPTH)).build();
    let g = Gguf::parse(&ok).unwrap();
    let mut v = *g.get("n").unwrap();
    for _ in 1..MAX_ARRAY_DEPTH {
        v = v.as_array().unwrap().get(0).unwrap();
    }
    assert_eq!(v.as_array().unwrap().get(0), Some(Value::U8(1)));
    let e = err(Builder::new(3).kv("n", nest(MAX_ARRAY_DEPTH + 1)));
    assert!(
        matches!(
            e,
            GgufError::NestingTooDeep {
                max: MAX_ARRAY_DEPTH,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let b = all_scalars(Builder::new(3))
        .kv("nested", W::Array(9, vec![W::Array(8, vec![W::str("x")])]))
        .tensor("a", &[8, 2], GgmlType::F32)
        .tensor("b", &[32], GgmlType::Q8_0);
    let bytes = b.build();
    Gguf::parse(&bytes).unwrap();
    let last = Gguf::parse(&bytes)
        .unwrap()
        .tensors()
        .iter()
        .map(|t| t.offset as usize + t.data.len())
        .max();
    let needed = Gguf::parse(&bytes).unwrap().data_offset + last.unwrap();
    for n in 0..needed {
        assert!(
            Gguf::parse(&bytes[..n]).is_err(),
            "prefix of {n} bytes parsed"
        );
    }
}

#[test]
fn tensor_spec_with_unknown_type_is_rejected() {
    let mut b = Builder::new(3);
    b.tensors.push(TensorSpec {
        name: b"t".to_vec(),
        dims: vec![4],
        ty: 4,
        offset: None,
        data: Some(vec![0; 16]),
    });
    let e = err(b);
    assert!(
        matches!(e, GgufError::UnknownGgmlType { id: 4, .. }),
        "{e:?}"
    );
}

#[test]
fn table_sizes_are_limited() {
    // Enough bytes that the counts pass the size check; the limit must still refuse them.
    let mut b = Builder::new(3);
    b.n_kv = Some(MAX_METADATA_ENTRIES as u64 + 1);
    let mut bytes = b.build();
    bytes.resize(bytes.len() + (MAX_METADATA_ENTRIES + 1) * 13, 0);
    let e = Gguf::parse(&bytes).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::LimitExceeded {
                what: "metadata entries",
                ..
            }
        ),
        "{e:?}"
    );

    let mut b = Builder::new(3);
    b.n_tensors = Some(MAX_TENSORS as u64 + 1);
    let mut bytes = b.build();
    bytes.resize(bytes.len() + (MAX_TENSORS + 1) * 32, 0);
    let e = Gguf::parse(&bytes).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::LimitExceeded {
                what: "tensor infos",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("more than the 65536"), "{e}");
}

#[test]
fn an_i2_s_tensor_must_be_whole_blocks_of_128() {
    let bytes = Builder::new(3)
        .tensor("w", &[96, 3], GgmlType::I2_S)
        .build();
    let e = Gguf::parse(&bytes).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::RowNotWholeBlocks {
                row_len: 288,
                block_len: 128,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("element count 288"), "{e}");
}
