//! A streaming GGUF v3 writer: metadata of every value type (arrays included), a tensor table,
//! and tensor data aligned to 32 bytes, written one tensor at a time to a temporary file that is
//! renamed over the output only once everything is on disk.
//!
//! The per-tensor checksums (`edgellm.image.checksums`, FNV-1a 64 of each tensor's bytes) are
//! metadata, which precedes the data: the writer reserves the array in the header, hashes each
//! tensor as it streams it out and fills the array in at the end.

use anyhow::{bail, ensure, Context, Result};
use edgellm_core::gguf::{ArrayValue, Value, ValueType};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Alignment of the data section and of every tensor in it.
pub const ALIGNMENT: usize = 32;

/// FNV-1a 64-bit offset basis and prime.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`, continuing from `h` (start with [`fnv1a64_start`]).
pub fn fnv1a64_update(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The FNV-1a 64 starting state.
pub const fn fnv1a64_start() -> u64 {
    FNV_OFFSET
}

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_update(fnv1a64_start(), bytes)
}

/// An owned metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Meta {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// An array of `elem` values (a nested array is `Meta::Array` too).
    Array(ValueType, Vec<Meta>),
    /// An array copied verbatim from a parsed file: element type, count and encoded elements.
    RawArray(ValueType, u64, Vec<u8>),
}

impl Meta {
    /// The GGUF value type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Meta::U8(_) => ValueType::U8,
            Meta::I8(_) => ValueType::I8,
            Meta::U16(_) => ValueType::U16,
            Meta::I16(_) => ValueType::I16,
            Meta::U32(_) => ValueType::U32,
            Meta::I32(_) => ValueType::I32,
            Meta::F32(_) => ValueType::F32,
            Meta::Bool(_) => ValueType::Bool,
            Meta::Str(_) => ValueType::Str,
            Meta::U64(_) => ValueType::U64,
            Meta::I64(_) => ValueType::I64,
            Meta::F64(_) => ValueType::F64,
            Meta::Array(..) | Meta::RawArray(..) => ValueType::Array,
        }
    }

    /// A string array.
    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Meta {
        Meta::Array(
            ValueType::Str,
            items.into_iter().map(|s| Meta::Str(s.into())).collect(),
        )
    }

    /// An i32 array.
    pub fn i32s(items: impl IntoIterator<Item = i32>) -> Meta {
        Meta::Array(ValueType::I32, items.into_iter().map(Meta::I32).collect())
    }

    /// An owned copy of a value borrowed from a parsed file.
    pub fn from_value(v: &Value<'_>) -> Meta {
        match *v {
            Value::U8(x) => Meta::U8(x),
            Value::I8(x) => Meta::I8(x),
            Value::U16(x) => Meta::U16(x),
            Value::I16(x) => Meta::I16(x),
            Value::U32(x) => Meta::U32(x),
            Value::I32(x) => Meta::I32(x),
            Value::F32(x) => Meta::F32(x),
            Value::Bool(x) => Meta::Bool(x),
            Value::Str(s) => Meta::Str(s.to_string()),
            Value::U64(x) => Meta::U64(x),
            Value::I64(x) => Meta::I64(x),
            Value::F64(x) => Meta::F64(x),
            Value::Array(a) => Meta::from_array(&a),
        }
    }

    fn from_array(a: &ArrayValue<'_>) -> Meta {
        Meta::RawArray(a.elem_type(), a.len() as u64, a.raw_bytes().to_vec())
    }

    /// Appends the encoding of this value (without its type tag) to `out`.
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Meta::U8(x) => out.push(*x),
            Meta::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
            Meta::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Meta::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Meta::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Meta::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Meta::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Meta::Bool(x) => out.push(u8::from(*x)),
            Meta::Str(s) => encode_str(s, out),
            Meta::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Meta::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Meta::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Meta::Array(elem, items) => {
                out.extend_from_slice(&elem.id().to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for it in items {
                    ensure!(
                        it.value_type() == *elem,
                        "array of {elem} holds a {} element",
                        it.value_type()
                    );
                    it.encode(out)?;
                }
            }
            Meta::RawArray(elem, len, raw) => {
                out.extend_from_slice(&elem.id().to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(raw);
            }
        }
        Ok(())
    }
}

fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// One tensor of the output: its table entry; the bytes come later, in order.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    /// Dimensions, `dims[0]` the contiguous row length (GGUF order).
    pub dims: Vec<u64>,
    /// GGUF type id (a [`edgellm_kernels::GgmlType`] id, or one of this project's own).
    pub type_id: u32,
    /// Exact byte size of the tensor's data.
    pub size: u64,
}

/// What [`GgufWriter::write`] did.
#[derive(Clone, Debug)]
pub struct Written {
    /// Size of the output file.
    pub file_bytes: u64,
    /// FNV-1a 64 of each tensor's bytes, in tensor order.
    pub checksums: Vec<u64>,
}

/// Builds a GGUF v3 file: metadata entries in insertion order, then tensors in insertion order.
#[derive(Debug, Default)]
pub struct GgufWriter {
    meta: Vec<(String, Meta)>,
    tensors: Vec<TensorSpec>,
    checksum_key: Option<String>,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Sets `key` to `value`, replacing an earlier value (which keeps its place).
    pub fn set(&mut self, key: &str, value: Meta) {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.meta.push((key.to_string(), value)),
        }
    }

    /// Removes `key` if present.
    pub fn remove(&mut self, key: &str) {
        self.meta.retain(|(k, _)| k != key);
    }

    /// The metadata entries so far.
    pub fn meta(&self) -> &[(String, Meta)] {
        &self.meta
    }

    /// Adds a tensor to the table.
    pub fn add_tensor(&mut self, spec: TensorSpec) -> Result<()> {
        ensure!(
            !self.tensors.iter().any(|t| t.name == spec.name),
            "tensor {} is added twice",
            spec.name
        );
        ensure!(
            (1..=4).contains(&spec.dims.len()) && spec.dims.iter().all(|&d| d > 0),
            "tensor {} has dimensions {:?}: expected 1 to 4 non-zero dimensions",
            spec.name,
            spec.dims
        );
        self.tensors.push(spec);
        Ok(())
    }

    /// The tensor table so far.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Stores the tensors' FNV-1a 64 checksums under `key` (a u64 array, filled at the end).
    pub fn with_checksums(&mut self, key: &str) {
        self.checksum_key = Some(key.to_string());
    }

    /// Writes the file to `path`: the header, then for each tensor `i` in order the bytes that
    /// `produce(i, spec)` returns (exactly `spec.size` of them), then renames the temporary file
    /// over `path`. `done(i, bytes)` is called after each tensor.
    pub fn write(
        mut self,
        path: &Path,
        mut produce: impl FnMut(usize, &TensorSpec) -> Result<Vec<u8>>,
        mut done: impl FnMut(usize, u64),
    ) -> Result<Written> {
        self.set("general.alignment", Meta::U32(ALIGNMENT as u32));
        let n = self.tensors.len();
        if let Some(key) = self.checksum_key.clone() {
            self.set(&key, Meta::Array(ValueType::U64, vec![Meta::U64(0); n]));
        }

        // Header, metadata, tensor infos, padding.
        let mut head = Vec::with_capacity(1 << 20);
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(n as u64).to_le_bytes());
        head.extend_from_slice(&(self.meta.len() as u64).to_le_bytes());
        let mut checksum_at = None;
        for (k, v) in &self.meta {
            encode_str(k, &mut head);
            head.extend_from_slice(&v.value_type().id().to_le_bytes());
            if Some(k) == self.checksum_key.as_ref() {
                // Past the element type (4) and count (8).
                checksum_at = Some(head.len() + 12);
            }
            v.encode(&mut head)
                .with_context(|| format!("metadata key {k}"))?;
        }
        let mut offsets = Vec::with_capacity(n);
        let mut offset = 0u64;
        for t in &self.tensors {
            encode_str(&t.name, &mut head);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.type_id.to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.size).next_multiple_of(ALIGNMENT as u64);
        }
        head.resize(head.len().next_multiple_of(ALIGNMENT), 0);

        let tmp = temp_path(path);
        let result = (|| -> Result<Written> {
            let file =
                File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            w.write_all(&head)?;
            let mut pos = 0u64;
            let mut checksums = Vec::with_capacity(n);
            for (i, t) in self.tensors.iter().enumerate() {
                let pad = offsets[i] - pos;
                w.write_all(&vec![0u8; pad as usize])?;
                let bytes = produce(i, t)?;
                if bytes.len() as u64 != t.size {
                    bail!(
                        "tensor {}: produced {} bytes, its table entry says {}",
                        t.name,
                        bytes.len(),
                        t.size
                    );
                }
                w.write_all(&bytes)?;
                checksums.push(fnv1a64(&bytes));
                pos = offsets[i] + t.size;
                done(i, t.size);
            }
            let tail = pos.next_multiple_of(ALIGNMENT as u64) - pos;
            w.write_all(&vec![0u8; tail as usize])?;
            let mut file = w.into_inner().map_err(|e| e.into_error())?;
            if let Some(at) = checksum_at {
                let mut raw = Vec::with_capacity(8 * n);
                for c in &checksums {
                    raw.extend_from_slice(&c.to_le_bytes());
                }
                file.seek(SeekFrom::Start(at as u64))?;
                file.write_all(&raw)?;
            }
            file.sync_all()?;
            let file_bytes = file.seek(SeekFrom::End(0))?;
            Ok(Written {
                file_bytes,
                checksums,
            })
        })();
        match result {
            Ok(w) => {
                std::fs::rename(&tmp, path).with_context(|| {
                    format!("cannot rename {} to {}", tmp.display(), path.display())
                })?;
                Ok(w)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e).with_context(|| format!("writing {}", path.display()))
            }
        }
    }
}

/// `OUTPUT.tmp-PID` beside the output, so the rename stays on one file system.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgellm_core::gguf::Gguf;

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn round_trips_every_value_type() {
        let dir = std::env::temp_dir().join(format!("edgellm-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("all.gguf");
        let mut w = GgufWriter::new();
        w.set("u8", Meta::U8(7));
        w.set("i8", Meta::I8(-7));
        w.set("u16", Meta::U16(700));
        w.set("i16", Meta::I16(-700));
        w.set("u32", Meta::U32(70_000));
        w.set("i32", Meta::I32(-70_000));
        w.set("f32", Meta::F32(1.5));
        w.set("bool", Meta::Bool(true));
        w.set("str", Meta::Str("héllo".into()));
        w.set("u64", Meta::U64(1 << 40));
        w.set("i64", Meta::I64(-(1 << 40)));
        w.set("f64", Meta::F64(-2.25));
        w.set("strs", Meta::strings(["a", "", "c"]));
        w.set(
            "nested",
            Meta::Array(
                ValueType::Array,
                vec![Meta::i32s([1, 2]), Meta::i32s([]), Meta::i32s([3])],
            ),
        );
        w.with_checksums("sums");
        w.add_tensor(TensorSpec {
            name: "a".into(),
            dims: vec![3],
            type_id: 0,
            size: 12,
        })
        .unwrap();
        w.add_tensor(TensorSpec {
            name: "b".into(),
            dims: vec![2, 2],
            type_id: 1,
            size: 8,
        })
        .unwrap();
        let data: [Vec<u8>; 2] = [vec![1; 12], vec![2; 8]];
        let written = w
            .write(&path, |i, _| Ok(data[i].clone()), |_, _| {})
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, written.file_bytes);
        assert_eq!(bytes.len() % ALIGNMENT, 0);
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get("u8"), Some(&Value::U8(7)));
        assert_eq!(g.get("i8"), Some(&Value::I8(-7)));
        assert_eq!(g.get("u16"), Some(&Value::U16(700)));
        assert_eq!(g.get("i16"), Some(&Value::I16(-700)));
        assert_eq!(g.get("u32"), Some(&Value::U32(70_000)));
        assert_eq!(g.get("i32"), Some(&Value::I32(-70_000)));
        assert_eq!(g.get("f32"), Some(&Value::F32(1.5)));
        assert_eq!(g.get("bool"), Some(&Value::Bool(true)));
        assert_eq!(g.get_str("str"), Some("héllo"));
        assert_eq!(g.get("u64"), Some(&Value::U64(1 << 40)));
        assert_eq!(g.get("i64"), Some(&Value::I64(-(1 << 40))));
        assert_eq!(g.get("f64"), Some(&Value::F64(-2.25)));
        let s: Vec<&str> = g.get_array("strs").unwrap().strings().unwrap().collect();
        assert_eq!(s, ["a", "", "c"]);
        let nested: Vec<Vec<i32>> = g
            .get_array("nested")
            .unwrap()
            .iter()
            .map(|v| v.as_array().unwrap().i32s().unwrap().collect())
            .collect();
        assert_eq!(nested, vec![vec![1, 2], vec![], vec![3]]);
        assert_eq!(g.get_u32("general.alignment"), Some(32));
        let sums: Vec<u64> = g
            .get_array("sums")
            .unwrap()
            .u64s()
            .unwrap()
            .map(Option::unwrap)
            .collect();
        assert_eq!(sums, written.checksums);
        assert_eq!(sums[0], fnv1a64(&[1; 12]));
        let t = g.tensor("b").unwrap();
        assert_eq!(t.offset % 32, 0);
        assert_eq!(t.data, &[2; 8]);

        // Copying a parsed file's metadata verbatim gives the same values.
        let mut w2 = GgufWriter::new();
        for (k, v) in g.metadata() {
            w2.set(k, Meta::from_value(v));
        }
        let path2 = dir.join("copy.gguf");
        w2.write(&path2, |_, _| unreachable!(), |_, _| {}).unwrap();
        let bytes2 = std::fs::read(&path2).unwrap();
        let g2 = Gguf::parse(&bytes2).unwrap();
        for (k, v) in g.metadata() {
            assert_eq!(g2.get(k), Some(v), "{k}");
        }
        // A producer that lies about the size leaves no file behind.
        let mut w3 = GgufWriter::new();
        w3.add_tensor(TensorSpec {
            name: "x".into(),
            dims: vec![4],
            type_id: 0,
            size: 16,
        })
        .unwrap();
        let path3 = dir.join("bad.gguf");
        let err = w3.write(&path3, |_, _| Ok(vec![0; 3]), |_, _| {});
        assert!(format!("{:#}", err.unwrap_err()).contains("produced 3 bytes"));
        assert!(!path3.exists() && !temp_path(&path3).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
