//! Rewriting a model read into memory in the layouts its kernels multiply faster (`Relayout`,
//! `relayout_weights`): TQ2_0 tensors become TQ2W in place, blocks and header, and nothing else
//! moves; TQ1_0 tensors become TQ2W in a larger file, the tensors after them moved.

use edgellm_core::gguf::Gguf;
use edgellm_core::kernels::{relayout, relayout_into, CpuFeatures, GgmlType, Kernels, Tier};
use edgellm_core::model::{relayout_weights, Relayout, RELAYOUT_PIECE};

#[path = "common/gguf_writer.rs"]
mod gguf_writer;

use gguf_writer::Builder;

fn file() -> Vec<u8> {
    Builder::new(3)
        .tensor("a", &[512, 3], GgmlType::TQ2_0)
        .tensor("b", &[64, 2], GgmlType::Q4_0)
        .tensor("c", &[256], GgmlType::TQ2_0)
        .build()
}

/// Each tensor's type id is where `type_offset` says.
#[test]
fn type_offset_points_at_the_type_id() {
    let bytes = file();
    let g = Gguf::parse(&bytes).unwrap();
    for t in g.tensors() {
        let id = u32::from_le_bytes(bytes[t.type_offset..t.type_offset + 4].try_into().unwrap());
        assert_eq!(id, t.ty.id(), "{}", t.name);
    }
}

#[test]
fn tq2_0_becomes_tq2w_where_the_kernels_prefer_it() {
    let f = CpuFeatures::detect();
    let before = file();
    let old = Gguf::parse(&before).unwrap();
    for tier in Tier::ALL
        .into_iter()
        .filter(|&t| f.missing_for(t).is_none())
    {
        let k = Kernels::with_tier(tier, &f).unwrap();
        let mut bytes = before.clone();
        let n = relayout_weights(&mut bytes, &k);
        let Some(to) = k.faster_layout(GgmlType::TQ2_0) else {
            assert_eq!(n, 0, "{tier}");
            assert!(bytes == before, "{tier}: nothing changes");
            continue;
        };
        assert_eq!((n, to), (2, GgmlType::TQ2W), "{tier}");
        let new = Gguf::parse(&bytes).unwrap();
        for (o, t) in old.tensors().iter().zip(new.tensors()) {
            assert_eq!((o.name, o.dims, o.offset), (t.name, t.dims, t.offset));
            if o.ty == GgmlType::TQ2_0 {
                assert_eq!(t.ty, GgmlType::TQ2W, "{tier} {}", t.name);
                let mut want = o.data.to_vec();
                relayout(GgmlType::TQ2_0, GgmlType::TQ2W, &mut want).unwrap();
                assert!(t.data == &want[..], "{tier} {}", t.name);
            } else {
                assert_eq!(t.ty, o.ty);
                assert!(t.data == o.data, "{tier} {}", t.name);
            }
        }
    }
}

/// A file that does not parse is left alone (its parse reports the problem later).
#[test]
fn a_broken_file_is_left_as_it_is() {
    let k = Kernels::detect();
    let whole = file();
    let g = Gguf::parse(&whole).unwrap();
    // Cut inside the last tensor's bytes.
    let last = &g.tensors()[2];
    let mut bytes = whole[..g.data_offset + last.offset as usize + 10].to_vec();
    assert!(Gguf::parse(&bytes).is_err());
    let before = bytes.clone();
    assert_eq!(relayout_weights(&mut bytes, &k), 0);
    assert!(bytes == before);
}

/// A one-layer llama model (dims 256 and 512, vocabulary 300) whose seven linear layers are of
/// type `ty` (TQ2_0 or TQ1_0) with random codes (for TQ2_0, 3 included) and scales of about
/// 0.008, the rest F32.
fn tiny_llama(ty: GgmlType) -> Vec<u8> {
    use gguf_writer::{TensorSpec, W};
    let (dim, ffn, kv, vocab) = (256u64, 512u64, 128u64, 300u64);
    let mut b = Builder::new(3)
        .kv("general.architecture", W::Str("llama".into()))
        .kv("llama.block_count", W::U32(1))
        .kv("llama.embedding_length", W::U32(dim as u32))
        .kv("llama.feed_forward_length", W::U32(ffn as u32))
        .kv("llama.attention.head_count", W::U32(4))
        .kv("llama.attention.head_count_kv", W::U32(2))
        .kv("llama.attention.layer_norm_rms_epsilon", W::F32(1e-5));
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let f32s = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut add = |name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>| {
        b.tensors.push(TensorSpec {
            name: name.as_bytes().to_vec(),
            dims: dims.to_vec(),
            ty: ty.id(),
            offset: None,
            data: Some(data),
        });
    };
    let embd = (0..dim * vocab)
        .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    add(
        "token_embd.weight",
        &[dim, vocab],
        GgmlType::F32,
        f32s(embd),
    );
    for (name, rows, cols) in [
        ("attn_q", dim, dim),
        ("attn_k", kv, dim),
        ("attn_v", kv, dim),
        ("attn_output", dim, dim),
        ("ffn_gate", ffn, dim),
        ("ffn_up", ffn, dim),
        ("ffn_down", dim, ffn),
    ] {
        let bb = ty.block_bytes();
        let mut w: Vec<u8> = (0..rows * cols / 256 * bb as u64)
            .map(|_| next() as u8)
            .collect();
        for blk in w.chunks_exact_mut(bb) {
            blk[bb - 2..].copy_from_slice(&(0x2000u16 + (next() % 64) as u16).to_le_bytes());
        }
        add(&format!("blk.0.{name}.weight"), &[cols, rows], ty, w);
    }
    for name in ["blk.0.attn_norm", "blk.0.ffn_norm", "output_norm"] {
        add(
            &format!("{name}.weight"),
            &[dim],
            GgmlType::F32,
            f32s(vec![1.0; dim as usize]),
        );
    }
    b.build()
}

/// The model's logits for a few tokens, prefill then two decode steps, on `kernels`.
fn logits(bytes: &[u8], kernels: &Kernels) -> Vec<f32> {
    use edgellm_core::model::Model;
    use edgellm_core::parallel::Serial;
    use edgellm_core::session::{NumericPath, Session, SessionOptions};
    let g = Gguf::parse(bytes).unwrap();
    let m = Model::from_gguf(&g, kernels).unwrap();
    let options = SessionOptions {
        context: 16,
        path: NumericPath::Fast,
    };
    let mut s = Session::new(&m, *kernels, options).unwrap();
    let mut out = s.prefill(&[5, 17, 299, 40], &Serial).unwrap().to_vec();
    for t in [7, 123] {
        out.extend_from_slice(s.prefill(&[t], &Serial).unwrap());
    }
    out
}

/// A TQ2_0 model rewritten as TQ2W gives the same logits, bit for bit, in prefill and decode.
#[test]
fn a_tq2_0_model_laid_out_as_tq2w_computes_the_same_logits() {
    let f = CpuFeatures::detect();
    let tier = if f.missing_for(Tier::Avx2).is_none() {
        Tier::Avx2
    } else {
        Tier::Scalar
    };
    let k = Kernels::with_tier(tier, &f).unwrap();
    let bytes = tiny_llama(GgmlType::TQ2_0);
    let want = logits(&bytes, &k);
    assert!(want.iter().all(|x| x.is_finite()) && want.iter().any(|&x| x != 0.0));
    let mut relaid = bytes.clone();
    let n = relayout_weights(&mut relaid, &k);
    assert_eq!(n, if tier == Tier::Avx2 { 7 } else { 0 }, "{tier}");
    let got = logits(&relaid, &k);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want), "{tier}");
}

/// The avx2 tier if this CPU has it, else the scalar one.
fn avx2_or_scalar() -> Kernels {
    let f = CpuFeatures::detect();
    let tier = if f.missing_for(Tier::Avx2).is_none() {
        Tier::Avx2
    } else {
        Tier::Scalar
    };
    Kernels::with_tier(tier, &f).unwrap()
}

/// `plan.write` of `src` into a zeroed buffer, and the ranges it reported read.
fn written(plan: &Relayout, src: &[u8]) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let mut out = vec![0u8; plan.output_len()];
    let mut read = Vec::new();
    plan.write(src, &mut out, |r| read.push(r));
    (out, read)
}

/// TQ1_0 tensors grow into TQ2W (66 bytes for every 54): a file of another length, written
/// whole; the other tensors keep their bytes at new, aligned offsets; the source is reported
/// read in pieces of at most `RELAYOUT_PIECE` bytes, in order, each tensor's bytes exactly once.
#[test]
fn tq1_0_grows_into_tq2w_and_the_tensors_after_it_move() {
    let before = Builder::new(3)
        .tensor("a", &[512, 3], GgmlType::TQ1_0)
        .tensor("b", &[64, 2], GgmlType::Q4_0)
        // 8.6 MB: more than one piece.
        .tensor("big", &[256, 160_000], GgmlType::TQ1_0)
        .tensor("c", &[7], GgmlType::F32)
        .build();
    let old = Gguf::parse(&before).unwrap();
    let f = CpuFeatures::detect();
    for tier in Tier::ALL
        .into_iter()
        .filter(|&t| f.missing_for(t).is_none())
    {
        let k = Kernels::with_tier(tier, &f).unwrap();
        let Some(plan) = Relayout::plan(&before, &k) else {
            assert_eq!(k.faster_layout(GgmlType::TQ1_0), None, "{tier}");
            continue;
        };
        assert_eq!(k.faster_layout(GgmlType::TQ1_0), Some(GgmlType::TQ2W));
        assert!(!plan.in_place() && plan.tensors() == 2, "{tier}");
        // In place is refused, the bytes untouched.
        let mut copy = before.clone();
        assert_eq!(relayout_weights(&mut copy, &k), 0);
        assert!(copy == before);
        let (bytes, read) = written(&plan, &before);
        assert!(bytes.len() > before.len());
        let new = Gguf::parse(&bytes).unwrap();
        assert_eq!(new.data_offset, old.data_offset);
        for (o, t) in old.tensors().iter().zip(new.tensors()) {
            assert_eq!((o.name, o.dims), (t.name, t.dims), "{tier}");
            if o.ty == GgmlType::TQ1_0 {
                assert_eq!(t.ty, GgmlType::TQ2W, "{tier} {}", t.name);
                let mut want = vec![0u8; o.data.len() / 54 * 66];
                relayout_into(GgmlType::TQ1_0, GgmlType::TQ2W, o.data, &mut want).unwrap();
                assert!(t.data == &want[..], "{tier} {}", t.name);
            } else {
                assert_eq!(t.ty, o.ty);
                assert!(t.data == o.data, "{tier} {}", t.name);
            }
        }
        // The pieces read: in order, none larger than a piece, covering each tensor once.
        assert!(read
            .iter()
            .all(|r| r.len() <= RELAYOUT_PIECE && !r.is_empty()));
        assert!(read.windows(2).all(|w| w[0].end <= w[1].start));
        let total: usize = read.iter().map(|r| r.len()).sum();
        assert_eq!(total, old.tensors().iter().map(|t| t.data.len()).sum());
        assert!(
            read.len() > old.tensors().len(),
            "the large tensor comes in pieces"
        );
    }
}

/// A TQ1_0 model rewritten as TQ2W gives the same logits, bit for bit, in prefill and decode.
#[test]
fn a_tq1_0_model_laid_out_as_tq2w_computes_the_same_logits() {
    let k = avx2_or_scalar();
    let bytes = tiny_llama(GgmlType::TQ1_0);
    let want = logits(&bytes, &k);
    assert!(want.iter().all(|x| x.is_finite()) && want.iter().any(|&x| x != 0.0));
    let Some(plan) = Relayout::plan(&bytes, &k) else {
        assert_eq!(k.tier(), Tier::Scalar);
        return;
    };
    assert_eq!(plan.tensors(), 7);
    let (relaid, _) = written(&plan, &bytes);
    let g = Gguf::parse(&relaid).unwrap();
    assert_eq!(
        g.tensors()
            .iter()
            .filter(|t| t.ty == GgmlType::TQ2W)
            .count(),
        7
    );
    let got = logits(&relaid, &k);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want));
}
