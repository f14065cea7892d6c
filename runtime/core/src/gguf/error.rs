//! The errors GGUF reading reports: each names what was expected, what was found and where.

use alloc::string::String;
use core::fmt;

use super::value::ValueType;
use edgellm_kernels::GgmlType;

/// Why a byte buffer is not a GGUF file this runtime accepts.
///
/// Every variant says where the problem is: a byte offset from the start of the file and, where
/// one applies, the metadata key or tensor name involved (shortened if very long).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum GgufError {
    /// The file ends before a field is complete.
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Metadata key or tensor name being read, empty in the header.
        context: String,
        /// Byte offset of the field.
        offset: usize,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file at `offset`.
        available: usize,
    },
    /// The first four bytes are not `GGUF`.
    BadMagic {
        /// The bytes found instead.
        found: [u8; 4],
    },
    /// A GGUF version other than 2 or 3.
    UnsupportedVersion {
        /// The version number found.
        found: u32,
    },
    /// A count (tensors, metadata entries, array elements) larger than the rest of the file could hold.
    CountTooLarge {
        /// What is counted.
        what: &'static str,
        /// Metadata key involved, empty for header counts.
        context: String,
        /// Byte offset of the count.
        offset: usize,
        /// The count found.
        count: u64,
        /// The largest count the remaining bytes could hold.
        max: u64,
    },
    /// A count the file could hold but this runtime does not accept
    /// ([`super::MAX_METADATA_ENTRIES`], [`super::MAX_TENSORS`]).
    LimitExceeded {
        /// What is counted.
        what: &'static str,
        /// Byte offset of the count.
        offset: usize,
        /// The count found.
        count: u64,
        /// The largest count accepted.
        limit: u64,
    },
    /// A string whose declared length runs past the end of the file.
    StringTooLong {
        /// What the string is (metadata key, tensor name, string value).
        what: &'static str,
        /// Metadata key or tensor name involved, empty when the string is itself a key or name.
        context: String,
        /// Byte offset of the length field.
        offset: usize,
        /// Declared length.
        len: u64,
        /// Bytes left after the length field.
        available: usize,
    },
    /// A key, tensor name or string value that is not valid UTF-8.
    InvalidUtf8 {
        /// What the string is.
        what: &'static str,
        /// Metadata key or tensor name involved (lossy), if any.
        context: String,
        /// Byte offset of the string's first byte.
        offset: usize,
    },
    /// A metadata value type id outside 0..=12.
    UnknownValueType {
        /// Metadata key involved.
        key: String,
        /// Byte offset of the type id.
        offset: usize,
        /// The id found.
        id: u32,
    },
    /// A boolean value other than 0 or 1.
    InvalidBool {
        /// Metadata key involved.
        key: String,
        /// Byte offset of the value.
        offset: usize,
        /// The byte found.
        found: u8,
    },
    /// Arrays nested deeper than [`super::MAX_ARRAY_DEPTH`].
    NestingTooDeep {
        /// Metadata key involved.
        key: String,
        /// Byte offset of the array that is too deep.
        offset: usize,
        /// The largest depth accepted.
        max: usize,
    },
    /// The same metadata key twice.
    DuplicateKey {
        /// The key.
        key: String,
        /// Byte offset of the second occurrence.
        offset: usize,
    },
    /// `general.alignment` is present with a type other than `u32`.
    AlignmentWrongType {
        /// The type found.
        found: ValueType,
    },
    /// `general.alignment` is zero or not a power of two.
    InvalidAlignment {
        /// The value found.
        found: u32,
    },
    /// A tensor with zero or more than four dimensions.
    InvalidDimCount {
        /// Tensor name.
        tensor: String,
        /// Byte offset of the dimension count.
        offset: usize,
        /// The count found.
        found: u32,
    },
    /// A tensor with a zero-length dimension.
    ZeroDim {
        /// Tensor name.
        tensor: String,
        /// Byte offset of the dimension.
        offset: usize,
        /// Which dimension (0 is the row length).
        index: usize,
    },
    /// A tensor whose element count or byte size does not fit in 64 bits or in this machine's address space.
    TensorTooLarge {
        /// Tensor name.
        tensor: String,
        /// Its dimensions (unused ones are 1).
        dims: [u64; 4],
    },
    /// A tensor type id this runtime does not know.
    UnknownGgmlType {
        /// Tensor name.
        tensor: String,
        /// Byte offset of the type id.
        offset: usize,
        /// The id found.
        id: u32,
    },
    /// A tensor whose row length (`dims[0]`) is not a whole number of blocks of its type (for
    /// I2_S, whose blocks run over the whole tensor, its element count).
    RowNotWholeBlocks {
        /// Tensor name.
        tensor: String,
        /// Its type.
        ty: GgmlType,
        /// Row length found.
        row_len: u64,
        /// Elements per block of `ty`.
        block_len: usize,
    },
    /// A tensor offset that is not a multiple of the alignment.
    MisalignedTensor {
        /// Tensor name.
        tensor: String,
        /// Offset found, relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: usize,
    },
    /// A tensor whose bytes run past the end of the file.
    TensorOutOfBounds {
        /// Tensor name.
        tensor: String,
        /// Offset relative to the data section.
        offset: u64,
        /// Byte size of the tensor.
        size: u64,
        /// Bytes in the data section.
        data_len: usize,
    },
    /// The same tensor name twice.
    DuplicateTensor {
        /// Tensor name.
        tensor: String,
        /// Byte offset of the second tensor info.
        offset: usize,
    },
    /// Two tensors whose bytes overlap.
    TensorOverlap {
        /// The tensor that starts first.
        first: String,
        /// The tensor that starts inside it.
        second: String,
        /// Where `second` starts, relative to the data section.
        offset: u64,
    },
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufError::*;
        match self {
            Truncated { what, context, offset, needed, available } => {
                write!(f, "GGUF file truncated: {what}")?;
                in_context(f, context)?;
                write!(
                    f,
                    " at byte {offset} needs {needed} bytes, only {available} remain; \
                     the file is incomplete, download or copy it again"
                )
            }
            BadMagic { found } => write!(
                f,
                "not a GGUF file: expected magic \"GGUF\" at byte 0, found {:?}",
                EscapedBytes(found)
            ),
            UnsupportedVersion { found } => {
                write!(f, "unsupported GGUF version: expected 2 or 3, found {found}")?;
                match found {
                    1 => f.write_str(" (GGUF v1 is obsolete; convert the model again with a current llama.cpp)"),
                    v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                        f.write_str(" (this looks like a big-endian GGUF file, which is not supported)")
                    }
                    _ => Ok(()),
                }
            }
            CountTooLarge { what, context, offset, count, max } => {
                write!(f, "invalid GGUF count of {what}: {count} at byte {offset}")?;
                in_context(f, context)?;
                write!(f, ": the rest of the file can hold at most {max}; the file is truncated or corrupt")
            }
            LimitExceeded { what, offset, count, limit } => write!(
                f,
                "GGUF count of {what} at byte {offset} is {count}, more than the {limit} EdgeLLM accepts"
            ),
            StringTooLong { what, context, offset, len, available } => {
                write!(f, "invalid GGUF {what}")?;
                in_context(f, context)?;
                write!(f, " at byte {offset}: length {len} exceeds the {available} bytes left in the file")
            }
            InvalidUtf8 { what, context, offset } => {
                write!(f, "invalid GGUF {what} at byte {offset}")?;
                in_context(f, context)?;
                f.write_str(": expected UTF-8 text, found invalid bytes")
            }
            UnknownValueType { key, offset, id } => write!(
                f,
                "unknown GGUF value type at byte {offset} (key `{key}`): expected 0..=12, found {id}"
            ),
            InvalidBool { key, offset, found } => write!(
                f,
                "invalid GGUF bool at byte {offset} (key `{key}`): expected 0 or 1, found {found}"
            ),
            NestingTooDeep { key, offset, max } => write!(
                f,
                "GGUF array at byte {offset} (key `{key}`) is nested too deep: at most {max} levels are accepted"
            ),
            DuplicateKey { key, offset } => {
                write!(f, "duplicate GGUF metadata key `{key}` at byte {offset}: each key must appear once")
            }
            AlignmentWrongType { found } => write!(
                f,
                "invalid `general.alignment`: expected type u32, found {}",
                found.name()
            ),
            InvalidAlignment { found } => write!(
                f,
                "invalid `general.alignment`: expected a non-zero power of two, found {found}"
            ),
            InvalidDimCount { tensor, offset, found } => write!(
                f,
                "tensor `{tensor}` at byte {offset}: expected 1 to 4 dimensions, found {found}"
            ),
            ZeroDim { tensor, offset, index } => write!(
                f,
                "tensor `{tensor}` at byte {offset}: dimension {index} is 0, expected at least 1"
            ),
            TensorTooLarge { tensor, dims } => write!(
                f,
                "tensor `{tensor}`: dimensions {dims:?} give more elements or bytes than fit in 64 bits or in memory"
            ),
            UnknownGgmlType { tensor, offset, id } => write!(
                f,
                "tensor `{tensor}` at byte {offset}: unknown ggml type id {id}; the file may need a newer EdgeLLM"
            ),
            RowNotWholeBlocks { tensor, ty, row_len, block_len } => write!(
                f,
                "tensor `{tensor}`: {} {row_len} is not a whole number of {ty} blocks of {block_len} elements",
                if *ty == GgmlType::I2_S { "element count" } else { "row length" }
            ),
            MisalignedTensor { tensor, offset, alignment } => write!(
                f,
                "tensor `{tensor}`: data offset {offset} is not a multiple of the alignment {alignment}"
            ),
            TensorOutOfBounds { tensor, offset, size, data_len } => write!(
                f,
                "tensor `{tensor}`: {size} bytes at data offset {offset} run past the end of the data section ({data_len} bytes); the file is truncated or corrupt"
            ),
            DuplicateTensor { tensor, offset } => write!(
                f,
                "duplicate tensor name `{tensor}` at byte {offset}: each tensor must appear once"
            ),
            TensorOverlap { first, second, offset } => write!(
                f,
                "tensor `{second}` at data offset {offset} overlaps tensor `{first}`"
            ),
        }
    }
}

impl core::error::Error for GgufError {}

fn in_context(f: &mut fmt::Formatter<'_>, context: &str) -> fmt::Result {
    if context.is_empty() {
        Ok(())
    } else {
        write!(f, " ({context})")
    }
}

/// Shows bytes as a string literal with non-printable bytes escaped.
struct EscapedBytes<'a>(&'a [u8]);

impl fmt::Debug for EscapedBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            for c in core::ascii::escape_default(b) {
                write!(f, "{}", char::from(c))?;
            }
        }
        f.write_str("\"")
    }
}
