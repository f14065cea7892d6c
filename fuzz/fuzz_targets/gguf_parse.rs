//! Fuzz target: `Gguf::parse` on arbitrary bytes never panics, and on success everything it
//! returns can be walked: every metadata value (nested arrays included), every tensor's bytes.
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use edgellm_core::gguf::{ArrayValue, Gguf, Value, ValueType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else { return };
    assert!(g.version == 2 || g.version == 3);
    assert!(g.alignment.is_power_of_two());
    assert!(g.data_offset <= data.len());
    let mut sum = 0u64;
    for (key, value) in g.metadata() {
        assert!(core::ptr::eq(g.get(key).unwrap(), value), "lookup of {key:?}");
        sum = sum.wrapping_add(walk(value));
    }
    let _ = (g.architecture(), g.get_u64("general.alignment"), g.get_f32("x"), g.get_bool("x"));
    let mut ends = Vec::new();
    for t in g.tensors() {
        assert!(core::ptr::eq(g.tensor(t.name).unwrap(), t));
        assert!((1..=4).contains(&t.n_dims));
        assert_eq!(Some(t.data.len() as u64), t.ty.bytes_for(t.n_elements()));
        assert_eq!(t.n_elements(), t.row_len() * t.n_rows());
        assert_eq!(t.offset as usize % g.alignment, 0);
        let start = t.data.as_ptr() as usize - data.as_ptr() as usize;
        assert_eq!(start, g.data_offset + t.offset as usize);
        ends.push((start, start + t.data.len()));
        sum = t.data.iter().fold(sum, |s, &b| s.wrapping_mul(31).wrapping_add(b.into()));
    }
    ends.sort_unstable();
    assert!(ends.windows(2).all(|w| w[0].1 <= w[1].0), "tensors overlap");
    std::hint::black_box(sum);
});

fn walk(v: &Value<'_>) -> u64 {
    match v {
        Value::Array(a) => walk_array(a),
        Value::Str(s) => s.len() as u64,
        other => other.as_u64().unwrap_or(1),
    }
}

fn walk_array(a: &ArrayValue<'_>) -> u64 {
    let mut n = 0usize;
    let mut sum = 0u64;
    for item in a.iter() {
        assert_eq!(item.value_type(), a.elem_type());
        sum = sum.wrapping_add(walk(&item));
        n += 1;
    }
    assert_eq!(n, a.len());
    if let Some(last) = a.len().checked_sub(1) {
        for i in [0, last / 2, last] {
            assert!(a.get(i).is_some());
        }
    }
    assert!(a.get(a.len()).is_none());
    assert_eq!(a.strings().map(|s| s.count()).unwrap_or(n), n);
    if a.elem_type() == ValueType::F32 {
        assert_eq!(a.f32s().unwrap().len(), n);
    }
    if a.elem_type() == ValueType::I32 {
        assert_eq!(a.i32s().unwrap().len(), n);
    }
    sum
}
