//! The malformed GGUF corpus: each file in `tests/data/gguf-malformed/` gives its expected error,
//! never a panic. The files are generated here, from a small valid file, so they can be rebuilt:
//!
//! ```text
//! EDGELLM_REGEN_GGUF_CORPUS=1 cargo test -p edgellm-core --test gguf_malformed
//! ```
//!
//! writes the corpus, its README.md, and the fuzzer's seeds in `fuzz/seeds/`. Without the
//! variable the test checks that the committed files are exactly what the generator makes.

use std::fs;
use std::path::{Path, PathBuf};

use edgellm_core::gguf::{Gguf, GgufError};
pub use edgellm_core::kernels::GgmlType;

#[path = "common/gguf_writer.rs"]
mod gguf_writer;

use gguf_writer::{put_str, Builder, Layout, TensorSpec, W};

/// One malformed file: name, bytes, the error variant it must give, and why.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expected: &'static str,
    about: &'static str,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn corpus_dir() -> PathBuf {
    repo_root().join("tests/data/gguf-malformed")
}

fn tokens() -> W {
    W::Array(
        8,
        ["<s>", "a", "b", "ab", "héllo"]
            .iter()
            .map(|s| W::str(s))
            .collect(),
    )
}

/// The small valid file every case starts from.
fn base() -> Builder {
    Builder::new(3)
        .kv("general.architecture", W::str("llama"))
        .kv("general.name", W::str("tiny"))
        .kv("llama.block_count", W::U32(1))
        .kv("tokenizer.ggml.tokens", tokens())
        .kv(
            "tokenizer.ggml.scores",
            W::Array(6, (0..5).map(|i| W::F32(i as f32)).collect()),
        )
        .tensor("token_embd.weight", &[32, 5], GgmlType::Q8_0)
        .tensor("output_norm.weight", &[32], GgmlType::F32)
        .tensor("blk.0.ffn_up.weight", &[64, 3], GgmlType::Q4_1)
}

fn built(b: Builder) -> (Vec<u8>, Layout) {
    b.build_with_layout()
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The key index of `key` in [`base`].
fn kv_index(key: &str) -> usize {
    base()
        .kvs
        .iter()
        .position(|(k, _)| k == key.as_bytes())
        .unwrap()
}

fn with_tensor(b: Builder, spec: TensorSpec) -> Builder {
    let mut b = b;
    b.tensors.push(spec);
    b
}

fn spec(name: &str, dims: &[u64], ty: u32) -> TensorSpec {
    TensorSpec {
        name: name.as_bytes().to_vec(),
        dims: dims.to_vec(),
        ty,
        offset: None,
        data: None,
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut case = |name, bytes, expected, about| {
        out.push(Case {
            name,
            bytes,
            expected,
            about,
        })
    };
    let (valid, lay) = built(base());
    let cut = |n: usize| valid[..n].to_vec();

    // Truncations, one per section.
    case("empty", Vec::new(), "Truncated", "zero bytes");
    case(
        "truncated-magic",
        cut(2),
        "Truncated",
        "ends inside the magic",
    );
    case(
        "truncated-header",
        cut(12),
        "Truncated",
        "ends inside the tensor count",
    );
    case(
        "truncated-header-counts",
        cut(lay.header_end),
        "CountTooLarge",
        "ends right after the header: 5 metadata entries cannot fit in 0 bytes",
    );
    case(
        "truncated-kv-key",
        cut(lay.kv_starts[1] + 8 + 3),
        "Truncated",
        "ends inside the second metadata key",
    );
    let u32_value = lay.kv_value_starts[kv_index("llama.block_count")];
    case(
        "truncated-kv-value",
        cut(u32_value + 2),
        "Truncated",
        "ends inside a u32 value",
    );
    let arr = lay.kv_value_starts[kv_index("tokenizer.ggml.tokens")];
    case(
        "truncated-array-header",
        cut(arr + 6),
        "Truncated",
        "ends inside an array's count",
    );
    case(
        "truncated-array",
        cut(arr + 12 + 12),
        "Truncated",
        "ends inside a string array",
    );
    case(
        "truncated-tensor-info",
        cut(lay.info_starts[1] + 20),
        "Truncated",
        "ends inside the second tensor info",
    );
    assert!(
        lay.infos_end < lay.data_offset,
        "the base file must have padding"
    );
    case(
        "truncated-padding",
        cut(lay.infos_end + 1),
        "Truncated",
        "ends inside the padding",
    );
    let (last_start, last_end) = lay.tensor_ranges[2];
    case(
        "truncated-data",
        cut((last_start + last_end) / 2),
        "TensorOutOfBounds",
        "ends inside the last tensor's bytes",
    );

    // Header.
    let mut b = valid.clone();
    b[..4].copy_from_slice(b"GGML");
    case("bad-magic", b, "BadMagic", "magic is GGML");
    case(
        "version-1",
        built(Builder {
            version: 1,
            ..base()
        })
        .0,
        "UnsupportedVersion",
        "GGUF v1",
    );
    case(
        "version-999",
        built(Builder {
            version: 999,
            ..base()
        })
        .0,
        "UnsupportedVersion",
        "version 999",
    );
    case(
        "version-big-endian",
        built(Builder {
            version: 3u32.swap_bytes(),
            ..base()
        })
        .0,
        "UnsupportedVersion",
        "version 3 written big-endian",
    );
    let mut b = valid.clone();
    put_u64(&mut b, 8, u64::MAX);
    case(
        "huge-tensor-count",
        b,
        "CountTooLarge",
        "tensor count 2^64-1",
    );
    let mut b = valid.clone();
    put_u64(&mut b, 16, 1 << 40);
    case("huge-kv-count", b, "CountTooLarge", "metadata count 2^40");

    // Metadata.
    let mut b = valid.clone();
    put_u64(&mut b, lay.kv_starts[0], u64::MAX / 2);
    case(
        "huge-key-length",
        b,
        "StringTooLong",
        "first key's length is 2^63-1",
    );
    let mut b = valid.clone();
    put_u64(
        &mut b,
        lay.kv_value_starts[kv_index("general.name")],
        1 << 33,
    );
    case(
        "huge-string-length",
        b,
        "StringTooLong",
        "a string value's length is 2^33",
    );
    let mut b = valid.clone();
    put_u64(&mut b, arr + 4, 1 << 60);
    case(
        "huge-array-length",
        b,
        "CountTooLarge",
        "a string array's length is 2^60",
    );
    let mut bomb = W::Array(0, vec![]);
    for _ in 0..1000 {
        bomb = W::Array(9, vec![bomb]);
    }
    case(
        "nested-array-depth-bomb",
        built(base().kv("bomb", bomb)).0,
        "NestingTooDeep",
        "arrays nested 1001 deep",
    );
    let mut b = valid.clone();
    put_u32(&mut b, u32_value - 4, 13);
    case(
        "unknown-value-type",
        b,
        "UnknownValueType",
        "value type id 13",
    );
    let mut b = valid.clone();
    put_u32(&mut b, arr, 0xffff_ffff);
    case(
        "unknown-array-element-type",
        b,
        "UnknownValueType",
        "array element type id 2^32-1",
    );
    case(
        "invalid-bool",
        built(base().kv("general.flag", W::Raw(7, vec![2]))).0,
        "InvalidBool",
        "bool byte 2",
    );
    let mut b = base();
    b.kvs[1].0 = b"general.\xffname".to_vec();
    case(
        "invalid-utf8-key",
        built(b).0,
        "InvalidUtf8",
        "key with byte 0xff",
    );
    case(
        "invalid-utf8-string-value",
        built(base().kv("general.license", W::StrBytes(b"mit\xc3(".to_vec()))).0,
        "InvalidUtf8",
        "string value with a broken UTF-8 sequence",
    );
    let mut b = base();
    b.kvs[3].1 = W::Array(8, vec![W::str("a"), W::StrBytes(vec![0xed, 0xa0, 0x80])]);
    case(
        "invalid-utf8-array-string",
        built(b).0,
        "InvalidUtf8",
        "UTF-16 surrogate in a string array",
    );
    case(
        "duplicate-key",
        built(base().kv("general.name", W::str("again"))).0,
        "DuplicateKey",
        "general.name twice",
    );
    case(
        "alignment-not-power-of-two",
        built(base().alignment(48)).0,
        "InvalidAlignment",
        "general.alignment = 48",
    );
    case(
        "alignment-zero",
        built(base().alignment(0)).0,
        "InvalidAlignment",
        "general.alignment = 0",
    );
    case(
        "alignment-wrong-type",
        built(base().kv("general.alignment", W::U64(32))).0,
        "AlignmentWrongType",
        "general.alignment as u64",
    );

    // Tensor infos.
    let info1 = lay.info_starts[1];
    let name1_len = "output_norm.weight".len();
    let n_dims1 = info1 + 8 + name1_len;
    let mut b = valid.clone();
    put_u32(&mut b, n_dims1 + 4 + 8, 4); // type id 4 (was Q4_2, removed)
    case(
        "unknown-ggml-type",
        b,
        "UnknownGgmlType",
        "tensor type id 4",
    );
    let mut b = valid.clone();
    put_u64(&mut b, n_dims1 + 4, 0);
    case("zero-dim", b, "ZeroDim", "a dimension of 0");
    case(
        "too-many-dims",
        built(with_tensor(base(), spec("x", &[32, 1, 1, 1, 1], 0))).0,
        "InvalidDimCount",
        "5 dimensions",
    );
    let mut b = valid.clone();
    put_u32(&mut b, n_dims1, 0);
    case("zero-dims", b, "InvalidDimCount", "0 dimensions");
    case(
        "dims-product-overflow",
        built(with_tensor(base(), spec("x", &[1 << 32, 1 << 32, 2], 0))).0,
        "TensorTooLarge",
        "2^65 elements",
    );
    case(
        "tensor-size-overflow",
        built(with_tensor(base(), spec("x", &[1 << 62], 0))).0,
        "TensorTooLarge",
        "2^62 F32 elements = 2^64 bytes",
    );
    case(
        "row-not-whole-blocks",
        built(with_tensor(base(), spec("x", &[48], GgmlType::Q4_0.id()))).0,
        "RowNotWholeBlocks",
        "Q4_0 row of 48 elements",
    );
    let mut s = spec("x", &[32], 0);
    s.offset = Some(1 << 20);
    s.data = Some(Vec::new());
    case(
        "offset-past-end",
        built(with_tensor(base(), s)).0,
        "TensorOutOfBounds",
        "offset 1 MiB",
    );
    let mut s = spec("x", &[32], 0);
    s.offset = Some(u64::MAX - 31);
    s.data = Some(Vec::new());
    case(
        "offset-overflow",
        built(with_tensor(base(), s)).0,
        "TensorOutOfBounds",
        "offset 2^64-32",
    );
    let mut s = spec("x", &[32], 0);
    s.offset = Some(1000);
    s.data = Some(Vec::new());
    case(
        "misaligned-offset",
        built(with_tensor(base(), s)).0,
        "MisalignedTensor",
        "offset 1000",
    );
    case(
        "duplicate-tensor-name",
        built(base().tensor("output_norm.weight", &[32], GgmlType::F32)).0,
        "DuplicateTensor",
        "output_norm.weight twice",
    );
    let mut b = base();
    b.tensors[2].name = b"blk.0.\xc0\x80".to_vec();
    case(
        "invalid-utf8-tensor-name",
        built(b).0,
        "InvalidUtf8",
        "overlong UTF-8 encoding in a name",
    );
    let mut s = spec("x", &[32], 0);
    s.offset = Some(Builder::tensor_size(&base().tensors[0]).next_multiple_of(32) as u64 - 32);
    s.data = Some(Vec::new());
    case(
        "overlapping-tensors",
        built(with_tensor(base(), s)).0,
        "TensorOverlap",
        "a tensor inside token_embd.weight",
    );

    // A hand-written header whose counts claim more than the file holds.
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    put_str(&mut b, b"k");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    case(
        "huge-nested-array-length",
        b,
        "CountTooLarge",
        "array of 2^64-1 arrays",
    );
    out
}

/// Small valid files for the fuzzer's seed corpus.
fn valid_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut vocab = Builder::new(3)
        .kv("tokenizer.ggml.model", W::str("gpt2"))
        .kv("tokenizer.ggml.tokens", tokens());
    vocab.write_data = false;
    vec![
        ("valid-v3-tensors", base().build()),
        (
            "valid-v2-all-types",
            Builder::new(2)
                .alignment(64)
                .kv("u8", W::U8(1))
                .kv("i8", W::I8(-1))
                .kv("u16", W::U16(2))
                .kv("i16", W::I16(-2))
                .kv("u32", W::U32(3))
                .kv("i32", W::I32(-3))
                .kv("f32", W::F32(0.5))
                .kv("bool", W::Bool(true))
                .kv("str", W::str("s"))
                .kv("u64", W::U64(4))
                .kv("i64", W::I64(-4))
                .kv("f64", W::F64(0.25))
                .kv(
                    "nested",
                    W::Array(
                        9,
                        vec![
                            W::Array(8, vec![W::str("x")]),
                            W::Array(7, vec![W::Bool(false)]),
                        ],
                    ),
                )
                .tensor("f16", &[4, 2, 3, 1], GgmlType::F16)
                .tensor("q4k", &[256], GgmlType::Q4_K)
                .build(),
        ),
        ("valid-vocab-only", vocab.build()),
    ]
}

fn variant(e: &GgufError) -> String {
    let debug = format!("{e:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_string()
}

fn readme(cases: &[Case]) -> String {
    let mut s = String::from(
        "# Malformed GGUF files\n\n\
         Each file must make `edgellm_core::gguf::Gguf::parse` return the error variant listed, never\n\
         panic. They are generated by `runtime/core/tests/gguf_malformed.rs` from a small valid file\n\
         (v3, 5 metadata entries, 3 tensors: Q8_0, F32, Q4_1); regenerate them with\n\n\
         ```text\n\
         EDGELLM_REGEN_GGUF_CORPUS=1 cargo test -p edgellm-core --test gguf_malformed\n\
         ```\n\n\
         | file | error | what is wrong |\n|---|---|---|\n",
    );
    for c in cases {
        s.push_str(&format!(
            "| `{}.gguf` | `{}` | {} |\n",
            c.name, c.expected, c.about
        ));
    }
    s
}

#[test]
fn malformed_corpus_gives_expected_errors() {
    let cases = cases();
    assert!(cases.len() >= 20);
    let dir = corpus_dir();
    let regen = std::env::var_os("EDGELLM_REGEN_GGUF_CORPUS").is_some();
    if regen {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let seeds = repo_root().join("fuzz/seeds");
        let _ = fs::remove_dir_all(&seeds);
        fs::create_dir_all(&seeds).unwrap();
        for c in &cases {
            fs::write(dir.join(format!("{}.gguf", c.name)), &c.bytes).unwrap();
            fs::write(seeds.join(format!("{}.gguf", c.name)), &c.bytes).unwrap();
        }
        for (name, bytes) in valid_seeds() {
            fs::write(seeds.join(format!("{name}.gguf")), bytes).unwrap();
        }
        fs::write(dir.join("README.md"), readme(&cases)).unwrap();
    }

    let mut failures = Vec::new();
    for c in &cases {
        let path = dir.join(format!("{}.gguf", c.name));
        let on_disk = fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; regenerate the corpus", path.display()));
        assert!(
            on_disk == c.bytes,
            "{} differs from the generator; regenerate the corpus",
            path.display()
        );
        match Gguf::parse(&on_disk) {
            Ok(_) => failures.push(format!("{}: parsed, expected {}", c.name, c.expected)),
            Err(e) => {
                let found = variant(&e);
                if found != c.expected {
                    failures.push(format!("{}: expected {}, found {e:?}", c.name, c.expected));
                }
                // Messages are for people: never empty, and they say where.
                let msg = e.to_string();
                assert!(msg.len() > 20, "{}: {msg}", c.name);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // No stale files, and the README lists exactly these.
    let mut on_disk: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".gguf"))
        .collect();
    on_disk.sort();
    let mut names: Vec<String> = cases.iter().map(|c| format!("{}.gguf", c.name)).collect();
    names.sort();
    assert_eq!(on_disk, names);
    assert_eq!(
        fs::read_to_string(dir.join("README.md")).unwrap(),
        readme(&cases)
    );
}

#[test]
fn valid_seeds_parse() {
    for (name, bytes) in valid_seeds() {
        Gguf::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn error_messages_show_the_problem() {
    for c in cases() {
        let e = Gguf::parse(&c.bytes).unwrap_err();
        println!("{:32} {e}", c.name);
    }
}
