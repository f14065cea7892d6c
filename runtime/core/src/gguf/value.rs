//! GGUF metadata values: scalars, strings and arrays, borrowed from the file bytes.
//!
//! Invariant: an [`ArrayValue`] is only built by the parser, after every element (nested arrays
//! included) was checked. Iteration re-decodes the bytes lazily and without copying; it cannot
//! fail on a parsed file, and on bytes that were not checked it stops early rather than panic.

use core::fmt;

use super::MAX_ARRAY_DEPTH;

/// The type of a metadata value, numbered as in the GGUF file format (`gguf_type`, 0..=12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    Str,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    /// The type with GGUF id `id`, or `None` outside 0..=12.
    pub const fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => Str,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The GGUF id of this type.
    pub const fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            Str => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// Lower-case name, as the GGUF specification writes it.
    pub const fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            Str => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Encoded size in bytes of one value of a fixed-size type; `None` for strings and arrays.
    pub const fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            Str | Array => None,
        }
    }

    /// Smallest encoded size of one value: a string is at least its u64 length, an array at least
    /// its u32 element type and u64 count.
    pub(crate) const fn min_size(self) -> usize {
        match self {
            ValueType::Str => 8,
            ValueType::Array => 12,
            _ => match self.fixed_size() {
                Some(n) => n,
                None => 1,
            },
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value, borrowed from the file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    Array(ArrayValue<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    /// The type of this value.
    pub const fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::Str,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The value of any integer type, if it is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value of any integer type, if it is in `0..=u32::MAX`.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    /// The value of any integer type, if it fits in an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// An `f32` or `f64` value, as `f32`.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// A boolean value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Str(v) => Some(v),
            _ => None,
        }
    }

    /// An array value.
    pub fn as_array(&self) -> Option<&ArrayValue<'a>> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// An array value: element type, count and the encoded elements, borrowed from the file.
#[derive(Clone, Copy, PartialEq)]
pub struct ArrayValue<'a> {
    elem: ValueType,
    len: usize,
    /// The encoded elements, nothing before or after them.
    raw: &'a [u8],
    /// Nesting level of this array: 1 for a metadata value, 2 for an array inside it, ...
    depth: usize,
}

impl<'a> ArrayValue<'a> {
    /// Only the parser builds arrays, after checking every element of `raw`.
    pub(crate) const fn new(elem: ValueType, len: usize, raw: &'a [u8], depth: usize) -> Self {
        Self {
            elem,
            len,
            raw,
            depth,
        }
    }

    /// The type of the elements.
    pub const fn elem_type(&self) -> ValueType {
        self.elem
    }

    /// Number of elements.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The encoded elements, as they are in the file (little-endian).
    pub const fn raw_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// Iterates over the elements; nested arrays come as [`Value::Array`].
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            elem: self.elem,
            remaining: self.len,
            raw: self.raw,
            depth: self.depth,
        }
    }

    /// The elements of a string array; `None` for any other element type.
    pub fn strings(&self) -> Option<impl Iterator<Item = &'a str> + 'a> {
        (self.elem == ValueType::Str).then(|| self.iter().filter_map(|v| v.as_str()))
    }

    /// The element at `i`: O(1) for fixed-size element types, O(i) for strings and arrays.
    pub fn get(&self, i: usize) -> Option<Value<'a>> {
        if i >= self.len {
            return None;
        }
        match self.elem.fixed_size() {
            Some(size) => {
                let start = i.checked_mul(size)?;
                let bytes = self.raw.get(start..start.checked_add(size)?)?;
                decode_fixed(self.elem, bytes)
            }
            None => self.iter().nth(i),
        }
    }

    /// The elements of an `f32` array; `None` for any other element type.
    pub fn f32s(&self) -> Option<impl ExactSizeIterator<Item = f32> + 'a> {
        (self.elem == ValueType::F32).then(|| self.words4().map(f32::from_le_bytes))
    }

    /// The elements of an `i32` array; `None` for any other element type.
    pub fn i32s(&self) -> Option<impl ExactSizeIterator<Item = i32> + 'a> {
        (self.elem == ValueType::I32).then(|| self.words4().map(i32::from_le_bytes))
    }

    /// The elements of a `u32` array; `None` for any other element type.
    pub fn u32s(&self) -> Option<impl ExactSizeIterator<Item = u32> + 'a> {
        (self.elem == ValueType::U32).then(|| self.words4().map(u32::from_le_bytes))
    }

    /// The elements of an array of any integer type that are all non-negative, as `u64`;
    /// `None` for non-integer element types. Negative elements come as `None` items.
    pub fn u64s(&self) -> Option<impl Iterator<Item = Option<u64>> + 'a> {
        use ValueType::*;
        matches!(self.elem, U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64)
            .then(|| self.iter().map(|v| v.as_u64()))
    }

    fn words4(&self) -> impl ExactSizeIterator<Item = [u8; 4]> + 'a {
        self.raw.chunks_exact(4).map(|c| {
            let mut w = [0u8; 4];
            w.copy_from_slice(c);
            w
        })
    }
}

impl fmt::Debug for ArrayValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayValue")
            .field("elem", &self.elem)
            .field("len", &self.len)
            .field("bytes", &self.raw.len())
            .finish()
    }
}

impl<'a> IntoIterator for &ArrayValue<'a> {
    type Item = Value<'a>;
    type IntoIter = ArrayIter<'a>;
    fn into_iter(self) -> ArrayIter<'a> {
        self.iter()
    }
}

/// Iterator over the elements of an [`ArrayValue`].
#[derive(Clone)]
pub struct ArrayIter<'a> {
    elem: ValueType,
    remaining: usize,
    raw: &'a [u8],
    depth: usize,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.remaining == 0 {
            return None;
        }
        match decode_one(self.elem, self.raw, self.depth) {
            Some((value, used)) => {
                self.raw = self.raw.get(used..)?;
                self.remaining -= 1;
                Some(value)
            }
            None => {
                // Unreachable for arrays built by the parser; stop rather than yield garbage.
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

impl fmt::Debug for ArrayIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayIter")
            .field("elem", &self.elem)
            .field("remaining", &self.remaining)
            .finish()
    }
}

fn le<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.get(..N)?.try_into().ok()
}

/// Decodes one value of a fixed-size type from the start of `bytes`.
pub(crate) fn decode_fixed<'a>(ty: ValueType, bytes: &[u8]) -> Option<Value<'a>> {
    Some(match ty {
        ValueType::U8 => Value::U8(*bytes.first()?),
        ValueType::I8 => Value::I8(i8::from_le_bytes(le(bytes)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(le(bytes)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(le(bytes)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(le(bytes)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(le(bytes)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(le(bytes)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(le(bytes)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(le(bytes)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(le(bytes)?)),
        ValueType::Bool => match *bytes.first()? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            _ => return None,
        },
        ValueType::Str | ValueType::Array => return None,
    })
}

/// Decodes one element of type `ty` (inside an array at nesting level `depth`) from the start of
/// `raw`; returns it and the number of bytes it used.
fn decode_one(ty: ValueType, raw: &[u8], depth: usize) -> Option<(Value<'_>, usize)> {
    match ty {
        ValueType::Str => {
            let len = usize::try_from(u64::from_le_bytes(le(raw)?)).ok()?;
            let end = len.checked_add(8)?;
            let s = core::str::from_utf8(raw.get(8..end)?).ok()?;
            Some((Value::Str(s), end))
        }
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return None;
            }
            let elem = ValueType::from_id(u32::from_le_bytes(le(raw)?))?;
            let len = usize::try_from(u64::from_le_bytes(le(raw.get(4..)?)?)).ok()?;
            let body = raw.get(12..)?;
            let used = skip(elem, len, body, depth + 1)?;
            let inner = ArrayValue::new(elem, len, body.get(..used)?, depth + 1);
            Some((Value::Array(inner), used.checked_add(12)?))
        }
        _ => {
            let size = ty.fixed_size()?;
            Some((decode_fixed(ty, raw)?, size))
        }
    }
}

/// Byte length of `len` encoded elements of type `elem` at the start of `raw`, in an array at
/// nesting level `depth`.
fn skip(elem: ValueType, len: usize, raw: &[u8], depth: usize) -> Option<usize> {
    if let Some(size) = elem.fixed_size() {
        let used = len.checked_mul(size)?;
        return (used <= raw.len()).then_some(used);
    }
    let mut used = 0usize;
    for _ in 0..len {
        let (_, n) = decode_one(elem, raw.get(used..)?, depth)?;
        used = used.checked_add(n)?;
    }
    Some(used)
}
