//! GGUF reading (versions 2 and 3): header, metadata and tensor table, checked and borrowed
//! zero-copy from the file bytes.
//!
//! Invariant: [`Gguf::parse`] checks every byte it relies on before use: magic, version, counts
//! (against the bytes that remain, before anything is allocated), string lengths and UTF-8,
//! value types, array nesting, duplicate keys and tensor names, dimensions and their product,
//! tensor types and sizes, alignment, and that every tensor's bytes lie inside the file without
//! overlapping another's. A hostile or truncated file gives a [`GgufError`], never a panic.
//!
//! Layout (all little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! the metadata (string key, u32 value type, value), the tensor infos (string name, u32 dimension
//! count, u64 dimensions, u32 ggml type, u64 offset in the data section), padding up to
//! `general.alignment` (default 32), then the data section. A string is a u64 length and bytes; an
//! array is a u32 element type, a u64 count and the elements.
//!
//! Boundary: no `unsafe` here; bytes are decoded with `from_le_bytes` on checked slices.
#![forbid(unsafe_code)]

mod error;
mod value;

#[cfg(test)]
mod tests;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use edgellm_kernels::GgmlType;

pub use error::GgufError;
pub use value::{ArrayIter, ArrayValue, Value, ValueType};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of tensor offsets when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Deepest array nesting accepted: an array value is level 1, an array inside it level 2, ...
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 4;
/// Most metadata entries accepted. Real files have well under a hundred; the limit keeps the
/// tables built while parsing small whatever the file claims.
pub const MAX_METADATA_ENTRIES: usize = 1 << 16;
/// Most tensors accepted. Real files have at most a few thousand.
pub const MAX_TENSORS: usize = 1 << 16;

/// Smallest encoded metadata entry: empty key (8), value type (4), one-byte value (1).
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// Smallest encoded tensor info: empty name (8), dimension count (4), one dimension (8), type (4),
/// offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;
/// Longest key or tensor name copied into an error message.
const MAX_SHOWN_NAME: usize = 96;
/// Capacity reserved up front for tables; they grow with what is actually read.
const INITIAL_CAPACITY: usize = 512;

/// A parsed GGUF file, borrowing the bytes it was parsed from.
#[derive(Clone)]
pub struct Gguf<'a> {
    /// GGUF version, 2 or 3.
    pub version: u32,
    /// Alignment of the data section and of tensor offsets within it.
    pub alignment: usize,
    /// Byte offset of the data section from the start of the file.
    pub data_offset: usize,
    metadata: Vec<(&'a str, Value<'a>)>,
    key_index: BTreeMap<&'a str, usize>,
    tensors: Vec<TensorInfo<'a>>,
    tensor_index: BTreeMap<&'a str, usize>,
    bytes: &'a [u8],
}

/// One tensor of the file: its shape, type and bytes.
#[derive(Clone, Copy, PartialEq)]
pub struct TensorInfo<'a> {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: &'a str,
    /// Dimensions, `dims[0]` being the contiguous row length; unused dimensions are 1.
    pub dims: [u64; 4],
    /// Number of dimensions the file gives, 1..=4.
    pub n_dims: usize,
    /// Element type.
    pub ty: GgmlType,
    /// Where the file stores the type's id (a little-endian u32), from the start of the file.
    pub type_offset: usize,
    /// Offset of the tensor's bytes from the start of the data section.
    pub offset: u64,
    /// The tensor's bytes: exactly `ty.tensor_bytes(n_elements())` of them (the blocks, then for
    /// I2_S its 32-byte trailer).
    pub data: &'a [u8],
}

impl TensorInfo<'_> {
    /// Number of elements (product of the dimensions).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// Elements per row: `dims[0]`.
    pub fn row_len(&self) -> u64 {
        self.dims[0]
    }

    /// Number of rows: the product of `dims[1..]`.
    pub fn n_rows(&self) -> u64 {
        self.dims[1..]
            .iter()
            .fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// The used dimensions, `dims[..n_dims]`.
    pub fn shape(&self) -> &[u64] {
        &self.dims[..self.n_dims.clamp(1, MAX_DIMS)]
    }
}

impl<'a> Gguf<'a> {
    /// Parses and checks a whole GGUF file held in memory.
    pub fn parse(bytes: &'a [u8]) -> Result<Gguf<'a>, GgufError> {
        Parser {
            r: Reader { bytes, pos: 0 },
        }
        .parse()
    }

    /// The metadata entries, in file order.
    pub fn metadata(&self) -> &[(&'a str, Value<'a>)] {
        &self.metadata
    }

    /// The metadata value for `key`.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        let &i = self.key_index.get(key)?;
        self.metadata.get(i).map(|(_, v)| v)
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Option<&'a str> {
        self.get(key)?.as_str()
    }

    /// An integer value of any type, if it is not negative.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// An integer value of any type, if it is in `0..=u32::MAX`.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_u32()
    }

    /// An `f32` or `f64` value, as `f32`.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    /// A boolean value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// An array value.
    pub fn get_array(&self, key: &str) -> Option<&ArrayValue<'a>> {
        self.get(key)?.as_array()
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        let &i = self.tensor_index.get(name)?;
        self.tensors.get(i)
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Option<&'a str> {
        self.get_str("general.architecture")
    }

    /// The data section: from [`Gguf::data_offset`] to the end of the file.
    pub fn data(&self) -> &'a [u8] {
        self.bytes.get(self.data_offset..).unwrap_or(&[])
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl fmt::Debug for Gguf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("file_len", &self.bytes.len())
            .finish()
    }
}

impl fmt::Debug for TensorInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorInfo")
            .field("name", &self.name)
            .field("shape", &self.shape())
            .field("ty", &self.ty)
            .field("offset", &self.offset)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// A name shortened for an error message.
fn shown(name: &str) -> String {
    match name.char_indices().nth(MAX_SHOWN_NAME) {
        Some((cut, _)) => {
            let mut s = String::from(&name[..cut]);
            s.push_str("...");
            s
        }
        None => String::from(name),
    }
}

fn key_context(key: &str) -> String {
    let mut s = String::from("key `");
    s.push_str(&shown(key));
    s.push('`');
    s
}

fn tensor_context(name: &str) -> String {
    let mut s = String::from("tensor `");
    s.push_str(&shown(name));
    s.push('`');
    s
}

/// A cursor over the file bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(
        &mut self,
        n: usize,
        what: &'static str,
        context: &dyn Fn() -> String,
    ) -> Result<&'a [u8], GgufError> {
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or_else(|| GgufError::Truncated {
                what,
                context: context(),
                offset: self.pos,
                needed: n as u64,
                available: self.remaining(),
            })?;
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(
        &mut self,
        what: &'static str,
        context: &dyn Fn() -> String,
    ) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what, context)?);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str, context: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what, context)?))
    }

    fn u64(&mut self, what: &'static str, context: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what, context)?))
    }

    /// A length-prefixed UTF-8 string. A length that runs past the end of the file is
    /// [`GgufError::Truncated`] if the whole file could hold it, [`GgufError::StringTooLong`] if not.
    fn string(
        &mut self,
        what: &'static str,
        context: &dyn Fn() -> String,
    ) -> Result<&'a str, GgufError> {
        let len_offset = self.pos;
        let len = self.u64(what, context)?;
        let available = self.remaining();
        if len > self.bytes.len() as u64 {
            return Err(GgufError::StringTooLong {
                what,
                context: context(),
                offset: len_offset,
                len,
                available,
            });
        }
        let start = self.pos;
        // `len <= bytes.len()`, so it fits in a usize; `take` reports a truncated file.
        let raw = self.take(len as usize, what, context)?;
        core::str::from_utf8(raw).map_err(|_| GgufError::InvalidUtf8 {
            what,
            context: context(),
            offset: start,
        })
    }

    /// Checks that `count` items of at least `min_size` bytes each fit in the rest of the file,
    /// before anything is allocated or looped over. A count the whole file could not hold is
    /// [`GgufError::CountTooLarge`]; one that only the rest of the file cannot hold means the
    /// file is cut short: [`GgufError::Truncated`].
    fn check_count(
        &self,
        count: u64,
        min_size: usize,
        what: &'static str,
        offset: usize,
        context: &dyn Fn() -> String,
    ) -> Result<usize, GgufError> {
        let min_size = min_size.max(1);
        let available = self.remaining();
        let max = (available / min_size) as u64;
        if count <= max {
            // `count <= available`, which is a usize.
            return Ok(count as usize);
        }
        if count <= (self.bytes.len() / min_size) as u64 {
            return Err(GgufError::Truncated {
                what,
                context: context(),
                offset: self.pos,
                needed: count * min_size as u64,
                available,
            });
        }
        Err(GgufError::CountTooLarge {
            what,
            context: context(),
            offset,
            count,
            max,
        })
    }
}

/// Rejects a table larger than this runtime accepts.
fn limit(count: usize, max: usize, what: &'static str, offset: usize) -> Result<(), GgufError> {
    if count > max {
        return Err(GgufError::LimitExceeded {
            what,
            offset,
            count: count as u64,
            limit: max as u64,
        });
    }
    Ok(())
}

struct Parser<'a> {
    r: Reader<'a>,
}

fn no_context() -> String {
    String::new()
}

impl<'a> Parser<'a> {
    fn parse(mut self) -> Result<Gguf<'a>, GgufError> {
        let bytes = self.r.bytes;

        // Header.
        if let Some(found) = bytes.get(..4) {
            if found != GGUF_MAGIC {
                let mut m = [0u8; 4];
                m.copy_from_slice(found);
                return Err(GgufError::BadMagic { found: m });
            }
        } else if !GGUF_MAGIC.starts_with(bytes) {
            let mut m = [0u8; 4];
            m[..bytes.len()].copy_from_slice(bytes);
            return Err(GgufError::BadMagic { found: m });
        }
        self.r.take(4, "magic", &no_context)?;
        let version = self.r.u32("version", &no_context)?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { found: version });
        }
        let n_tensors_offset = self.r.pos;
        let n_tensors = self.r.u64("tensor count", &no_context)?;
        let n_kv_offset = self.r.pos;
        let n_kv = self.r.u64("metadata count", &no_context)?;
        let n_kv = self.r.check_count(
            n_kv,
            MIN_KV_BYTES,
            "metadata entries",
            n_kv_offset,
            &no_context,
        )?;
        limit(n_kv, MAX_METADATA_ENTRIES, "metadata entries", n_kv_offset)?;

        // Metadata.
        let mut metadata = Vec::with_capacity(n_kv.min(INITIAL_CAPACITY));
        let mut key_index = BTreeMap::new();
        for i in 0..n_kv {
            let key_offset = self.r.pos;
            let key = self
                .r
                .string("metadata key", &|| alloc::format!("metadata entry #{i}"))?;
            let ctx = || key_context(key);
            let ty_offset = self.r.pos;
            let ty_id = self.r.u32("value type", &ctx)?;
            let ty = ValueType::from_id(ty_id).ok_or_else(|| GgufError::UnknownValueType {
                key: shown(key),
                offset: ty_offset,
                id: ty_id,
            })?;
            let value = self.value(ty, key, 0)?;
            if key_index.insert(key, metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey {
                    key: shown(key),
                    offset: key_offset,
                });
            }
            metadata.push((key, value));
        }

        let alignment = match key_index
            .get("general.alignment")
            .and_then(|&i| metadata.get(i))
        {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) => {
                if *a == 0 || !a.is_power_of_two() {
                    return Err(GgufError::InvalidAlignment { found: *a });
                }
                usize::try_from(*a).map_err(|_| GgufError::InvalidAlignment { found: *a })?
            }
            Some((_, other)) => {
                return Err(GgufError::AlignmentWrongType {
                    found: other.value_type(),
                })
            }
        };

        // Tensor infos.
        struct Pending<'a> {
            name: &'a str,
            dims: [u64; 4],
            n_dims: usize,
            ty: GgmlType,
            type_offset: usize,
            offset: u64,
            size: u64,
        }
        // Checked here, against what is left after the metadata, where it is used.
        let n_tensors = self.r.check_count(
            n_tensors,
            MIN_TENSOR_INFO_BYTES,
            "tensor infos",
            n_tensors_offset,
            &no_context,
        )?;
        limit(n_tensors, MAX_TENSORS, "tensor infos", n_tensors_offset)?;
        let mut pending: Vec<Pending<'a>> = Vec::with_capacity(n_tensors.min(INITIAL_CAPACITY));
        let mut tensor_index = BTreeMap::new();
        for i in 0..n_tensors {
            let info_offset = self.r.pos;
            let name = self
                .r
                .string("tensor name", &|| alloc::format!("tensor info #{i}"))?;
            let ctx = || tensor_context(name);
            if tensor_index.insert(name, pending.len()).is_some() {
                return Err(GgufError::DuplicateTensor {
                    tensor: shown(name),
                    offset: info_offset,
                });
            }
            let n_dims_offset = self.r.pos;
            let n_dims_raw = self.r.u32("dimension count", &ctx)?;
            let n_dims = match usize::try_from(n_dims_raw) {
                Ok(n @ 1..=MAX_DIMS) => n,
                _ => {
                    return Err(GgufError::InvalidDimCount {
                        tensor: shown(name),
                        offset: n_dims_offset,
                        found: n_dims_raw,
                    })
                }
            };
            let mut dims = [1u64; 4];
            for (index, d) in dims.iter_mut().take(n_dims).enumerate() {
                let dim_offset = self.r.pos;
                *d = self.r.u64("dimension", &ctx)?;
                if *d == 0 {
                    return Err(GgufError::ZeroDim {
                        tensor: shown(name),
                        offset: dim_offset,
                        index,
                    });
                }
            }
            let ty_offset = self.r.pos;
            let ty_id = self.r.u32("tensor type", &ctx)?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| GgufError::UnknownGgmlType {
                tensor: shown(name),
                offset: ty_offset,
                id: ty_id,
            })?;
            let offset = self.r.u64("tensor offset", &ctx)?;

            let too_large = || GgufError::TensorTooLarge {
                tensor: shown(name),
                dims,
            };
            let n_elements = dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .ok_or_else(too_large)?;
            let block_len = ty.block_len();
            // I2_S's blocks run over the whole tensor: only the tensor must be whole blocks.
            let blocked = if ty.blocks_span_rows() {
                n_elements
            } else {
                dims[0]
            };
            if blocked % block_len as u64 != 0 {
                return Err(GgufError::RowNotWholeBlocks {
                    tensor: shown(name),
                    ty,
                    row_len: blocked,
                    block_len,
                });
            }
            let size = ty.tensor_bytes(n_elements).ok_or_else(too_large)?;
            if offset % alignment as u64 != 0 {
                return Err(GgufError::MisalignedTensor {
                    tensor: shown(name),
                    offset,
                    alignment,
                });
            }
            pending.push(Pending {
                name,
                dims,
                n_dims,
                ty,
                type_offset: ty_offset,
                offset,
                size,
            });
        }

        // Padding, then the data section.
        let after_infos = self.r.pos;
        let aligned = after_infos
            .checked_next_multiple_of(alignment)
            .filter(|&a| a <= bytes.len());
        let data_offset = match aligned {
            Some(a) => a,
            // Vocabulary-only files written by llama.cpp have no tensors and omit the padding.
            None if n_tensors == 0 => bytes.len(),
            None => {
                return Err(GgufError::Truncated {
                    what: "padding before the data section",
                    context: String::new(),
                    offset: after_infos,
                    needed: ((alignment - after_infos % alignment) % alignment) as u64,
                    available: self.r.remaining(),
                })
            }
        };
        let data = bytes.get(data_offset..).unwrap_or(&[]);

        // Tensor bytes: inside the data section, not overlapping.
        let mut tensors = Vec::with_capacity(pending.len());
        for p in &pending {
            let out_of_bounds = || GgufError::TensorOutOfBounds {
                tensor: shown(p.name),
                offset: p.offset,
                size: p.size,
                data_len: data.len(),
            };
            let start = usize::try_from(p.offset).map_err(|_| out_of_bounds())?;
            let len = usize::try_from(p.size).map_err(|_| out_of_bounds())?;
            let end = start.checked_add(len).ok_or_else(out_of_bounds)?;
            let tensor_data = data.get(start..end).ok_or_else(out_of_bounds)?;
            tensors.push(TensorInfo {
                name: p.name,
                dims: p.dims,
                n_dims: p.n_dims,
                ty: p.ty,
                type_offset: p.type_offset,
                offset: p.offset,
                data: tensor_data,
            });
        }
        let mut by_offset: Vec<usize> = (0..tensors.len()).collect();
        by_offset.sort_unstable_by_key(|&i| (tensors[i].offset, i));
        for pair in by_offset.windows(2) {
            let (a, b) = (&tensors[pair[0]], &tensors[pair[1]]);
            // Both ends are inside the data section, so this cannot overflow.
            if a.offset + a.data.len() as u64 > b.offset {
                return Err(GgufError::TensorOverlap {
                    first: shown(a.name),
                    second: shown(b.name),
                    offset: b.offset,
                });
            }
        }

        Ok(Gguf {
            version,
            alignment,
            data_offset,
            metadata,
            key_index,
            tensors,
            tensor_index,
            bytes,
        })
    }

    /// Reads one value of type `ty` for metadata key `key`; `depth` is the number of arrays it is inside.
    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value<'a>, GgufError> {
        let ctx = || key_context(key);
        match ty {
            ValueType::Str => Ok(Value::Str(self.r.string("string value", &ctx)?)),
            ValueType::Array => self.array(key, depth).map(Value::Array),
            _ => {
                let offset = self.r.pos;
                let size = ty.fixed_size().unwrap_or(1);
                let raw = self.r.take(size, ty.name(), &ctx)?;
                value::decode_fixed(ty, raw).ok_or_else(|| GgufError::InvalidBool {
                    key: shown(key),
                    offset,
                    found: raw.first().copied().unwrap_or(0),
                })
            }
        }
    }

    /// Reads an array (element type, count, elements) inside `depth` other arrays.
    fn array(&mut self, key: &str, depth: usize) -> Result<ArrayValue<'a>, GgufError> {
        let ctx = || key_context(key);
        let array_offset = self.r.pos;
        let level = depth + 1;
        if level > MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep {
                key: shown(key),
                offset: array_offset,
                max: MAX_ARRAY_DEPTH,
            });
        }
        let ty_offset = self.r.pos;
        let elem_id = self.r.u32("array element type", &ctx)?;
        let elem = ValueType::from_id(elem_id).ok_or_else(|| GgufError::UnknownValueType {
            key: shown(key),
            offset: ty_offset,
            id: elem_id,
        })?;
        let len_offset = self.r.pos;
        let len = self.r.u64("array length", &ctx)?;
        let len = self
            .r
            .check_count(len, elem.min_size(), "array elements", len_offset, &ctx)?;
        let start = self.r.pos;
        match elem.fixed_size() {
            Some(size) => {
                // `len * min_size <= remaining` was checked above.
                let raw = self.r.take(len * size, "array elements", &ctx)?;
                if elem == ValueType::Bool {
                    if let Some(i) = raw.iter().position(|&b| b > 1) {
                        return Err(GgufError::InvalidBool {
                            key: shown(key),
                            offset: start + i,
                            found: raw[i],
                        });
                    }
                }
            }
            None => {
                for _ in 0..len {
                    self.value(elem, key, level)?;
                }
            }
        }
        let raw = self.r.bytes.get(start..self.r.pos).unwrap_or(&[]);
        Ok(ArrayValue::new(elem, len, raw, level))
    }
}
