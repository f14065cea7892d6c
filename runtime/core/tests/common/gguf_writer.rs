//! A small GGUF writer for tests: builds valid files, and invalid ones on request (any count,
//! type id, dimension or offset can be overridden), and reports where each section starts.
//!
//! Shared by the parser's unit tests and the integration tests; the module that includes it must
//! have `GgmlType` in scope.
#![allow(dead_code)]

use std::string::String;
use std::vec::Vec;

use super::GgmlType;

/// A metadata value to write. `Raw` writes any type id with any payload.
#[derive(Clone, Debug)]
pub enum W {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id, then the elements (each written without its own type id).
    Array(u32, Vec<W>),
    U64(u64),
    I64(i64),
    F64(f64),
    /// A string value with arbitrary bytes (not necessarily UTF-8).
    StrBytes(Vec<u8>),
    /// Type id and payload written as given.
    Raw(u32, Vec<u8>),
}

impl W {
    pub fn str(s: &str) -> W {
        W::Str(String::from(s))
    }

    pub fn type_id(&self) -> u32 {
        match self {
            W::U8(_) => 0,
            W::I8(_) => 1,
            W::U16(_) => 2,
            W::I16(_) => 3,
            W::U32(_) => 4,
            W::I32(_) => 5,
            W::F32(_) => 6,
            W::Bool(_) => 7,
            W::Str(_) | W::StrBytes(_) => 8,
            W::Array(..) => 9,
            W::U64(_) => 10,
            W::I64(_) => 11,
            W::F64(_) => 12,
            W::Raw(id, _) => *id,
        }
    }

    /// Writes the payload (everything after the type id).
    pub fn write_payload(&self, out: &mut Vec<u8>) {
        match self {
            W::U8(v) => out.push(*v),
            W::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            W::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            W::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            W::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            W::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            W::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            W::Bool(v) => out.push(u8::from(*v)),
            W::Str(s) => put_str(out, s.as_bytes()),
            W::StrBytes(b) => put_str(out, b),
            W::Array(elem, items) => {
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    item.write_payload(out);
                }
            }
            W::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            W::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            W::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            W::Raw(_, b) => out.extend_from_slice(b),
        }
    }
}

pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

/// A tensor to write.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: Vec<u8>,
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ty: u32,
    /// Offset in the data section; `None` places it after the previous tensor, aligned.
    pub offset: Option<u64>,
    /// Bytes to write; `None` writes the size the type needs, filled with a pattern.
    pub data: Option<Vec<u8>>,
}

/// Where each part of a built file starts.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub header_end: usize,
    pub kv_starts: Vec<usize>,
    pub kv_value_starts: Vec<usize>,
    pub infos_start: usize,
    pub info_starts: Vec<usize>,
    pub infos_end: usize,
    pub data_offset: usize,
    /// Start and end of each tensor's bytes in the file.
    pub tensor_ranges: Vec<(usize, usize)>,
    pub len: usize,
}

/// A GGUF file to build.
#[derive(Clone, Debug)]
pub struct Builder {
    pub magic: [u8; 4],
    pub version: u32,
    /// Overrides the tensor count written in the header.
    pub n_tensors: Option<u64>,
    /// Overrides the metadata count written in the header.
    pub n_kv: Option<u64>,
    pub kvs: Vec<(Vec<u8>, W)>,
    pub tensors: Vec<TensorSpec>,
    /// Alignment used to lay the file out (set `general.alignment` with [`Builder::alignment`]).
    pub align: usize,
    /// Whether to write the padding and data section (vocabulary-only files omit it).
    pub write_data: bool,
}

impl Builder {
    pub fn new(version: u32) -> Builder {
        Builder {
            magic: *b"GGUF",
            version,
            n_tensors: None,
            n_kv: None,
            kvs: Vec::new(),
            tensors: Vec::new(),
            align: 32,
            write_data: true,
        }
    }

    pub fn kv(mut self, key: &str, value: W) -> Builder {
        self.kvs.push((key.as_bytes().to_vec(), value));
        self
    }

    /// Sets `general.alignment` and lays the file out with it.
    pub fn alignment(mut self, align: u32) -> Builder {
        self.align = align.max(1) as usize;
        self.kv("general.alignment", W::U32(align))
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType) -> Builder {
        self.tensors.push(TensorSpec {
            name: name.as_bytes().to_vec(),
            dims: dims.to_vec(),
            ty: ty.id(),
            offset: None,
            data: None,
        });
        self
    }

    /// The size in bytes of a tensor of this spec, if its type is known and its size valid.
    pub fn tensor_size(spec: &TensorSpec) -> usize {
        let n: u64 = spec.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d));
        GgmlType::from_id(spec.ty)
            .and_then(|t| t.tensor_bytes(n))
            .map(|b| b as usize)
            .unwrap_or(0)
    }

    pub fn build(&self) -> Vec<u8> {
        self.build_with_layout().0
    }

    pub fn build_with_layout(&self) -> (Vec<u8>, Layout) {
        let mut out = Vec::new();
        let mut lay = Layout::default();
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        let n_tensors = self.n_tensors.unwrap_or(self.tensors.len() as u64);
        let n_kv = self.n_kv.unwrap_or(self.kvs.len() as u64);
        out.extend_from_slice(&n_tensors.to_le_bytes());
        out.extend_from_slice(&n_kv.to_le_bytes());
        lay.header_end = out.len();
        for (key, value) in &self.kvs {
            lay.kv_starts.push(out.len());
            put_str(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            lay.kv_value_starts.push(out.len());
            value.write_payload(&mut out);
        }
        lay.infos_start = out.len();
        // Lay out the data section.
        let mut offsets = Vec::new();
        let mut datas = Vec::new();
        let mut next = 0u64;
        for (i, t) in self.tensors.iter().enumerate() {
            let data = t.data.clone().unwrap_or_else(|| {
                (0..Self::tensor_size(t))
                    .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8))
                    .collect()
            });
            let offset = t.offset.unwrap_or(next);
            next = offset
                .saturating_add(data.len() as u64)
                .checked_next_multiple_of(self.align as u64)
                .unwrap_or(u64::MAX);
            offsets.push(offset);
            datas.push(data);
        }
        for (t, offset) in self.tensors.iter().zip(&offsets) {
            lay.info_starts.push(out.len());
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        lay.infos_end = out.len();
        lay.data_offset = out.len().next_multiple_of(self.align);
        if self.write_data {
            out.resize(lay.data_offset, 0);
            for (data, &offset) in datas.iter().zip(&offsets) {
                if data.is_empty() {
                    continue;
                }
                let start = lay.data_offset + offset as usize;
                let end = start + data.len();
                if out.len() < end {
                    out.resize(end, 0);
                }
                out[start..end].copy_from_slice(data);
                lay.tensor_ranges.push((start, end));
            }
            let end = out.len().next_multiple_of(self.align);
            out.resize(end, 0);
        }
        lay.len = out.len();
        (out, lay)
    }
}
