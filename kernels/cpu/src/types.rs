//! Tensor element types as GGUF numbers them, and the byte layout of their blocks.

/// A tensor element type, numbered as in the GGUF file format (`ggml_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    /// bitnet.cpp's ternary type (GGUF id 36): 2-bit codes over the whole tensor, four to a byte,
    /// then one f32 scale for the tensor in a 32-byte trailer (layout in `scalar::ternary`).
    /// Read by the converter only.
    I2_S,
    /// EdgeLLM's ternary type (not a ggml type): 64 weights in {-1, 0, +1} as 2-bit codes in 16
    /// bytes, no scale in the block (layout in `scalar::ternary`).
    T2,
    /// EdgeLLM's 4-bit type (not a ggml type): Q4_0's values (one f16 scale per 32 weights,
    /// 4-bit codes `q` for `d * (q - 8)`), 64 weights in 36 bytes, the codes arranged so that a
    /// SIMD dot product leaves each half-group's sum in its own lane (layout in `scalar::q4w`).
    Q4W,
    /// EdgeLLM's layout of TQ2_0 (not a ggml type): a TQ2_0 block (256 weights, one f16 scale)
    /// with its 2-bit codes in T2's order, which the x86 kernels unpack with fewer instructions;
    /// the loader makes it from TQ2_0 in memory (layout in `scalar::ternary`).
    TQ2W,
}

/// Every type this table knows, in GGUF id order.
pub const ALL_TYPES: [GgmlType; 36] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ3_XXS,
    GgmlType::IQ1_S,
    GgmlType::IQ4_NL,
    GgmlType::IQ3_S,
    GgmlType::IQ2_S,
    GgmlType::IQ4_XS,
    GgmlType::I8,
    GgmlType::I16,
    GgmlType::I32,
    GgmlType::I64,
    GgmlType::F64,
    GgmlType::IQ1_M,
    GgmlType::BF16,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::I2_S,
    GgmlType::MXFP4,
    GgmlType::T2,
    GgmlType::Q4W,
    GgmlType::TQ2W,
];

impl GgmlType {
    /// The type with GGUF id `id`, or `None` for an id this runtime does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        ALL_TYPES.iter().copied().find(|t| t.id() == id)
    }

    /// The GGUF id of this type.
    pub const fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            IQ2_XXS => 16,
            IQ2_XS => 17,
            IQ3_XXS => 18,
            IQ1_S => 19,
            IQ4_NL => 20,
            IQ3_S => 21,
            IQ2_S => 22,
            IQ4_XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1_M => 29,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            I2_S => 36,
            MXFP4 => 39,
            // Ours, outside ggml's range.
            T2 => 1000,
            Q4W => 1001,
            TQ2W => 1002,
        }
    }

    /// Human-readable name, as llama.cpp prints it.
    pub const fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            I2_S => "I2_S",
            MXFP4 => "MXFP4",
            T2 => "T2",
            Q4W => "Q4W",
            TQ2W => "TQ2W",
        }
    }

    /// Number of elements in one block.
    pub const fn block_len(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => 32,
            T2 | Q4W => 64,
            I2_S => 128,
            _ => 256,
        }
    }

    /// Number of bytes in one block.
    pub const fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 => 2,
            BF16 => 2,
            I8 => 1,
            I16 => 2,
            I32 => 4,
            I64 => 8,
            F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
            IQ2_XXS => 66,
            IQ2_XS => 74,
            IQ3_XXS => 98,
            IQ1_S => 50,
            IQ4_NL => 18,
            IQ3_S => 110,
            IQ2_S => 82,
            IQ4_XS => 136,
            IQ1_M => 56,
            TQ1_0 => 54,
            TQ2_0 | TQ2W => 66,
            I2_S => 32,
            MXFP4 => 17,
            T2 => 16,
            Q4W => 36,
        }
    }

    /// Bytes needed for `n` elements, or `None` if `n` is not a whole number of blocks
    /// or the size overflows.
    pub const fn bytes_for(self, n: u64) -> Option<u64> {
        let bl = self.block_len() as u64;
        if !n.is_multiple_of(bl) {
            return None;
        }
        (n / bl).checked_mul(self.block_bytes() as u64)
    }

    /// Bytes a tensor of this type stores after its blocks: I2_S's 32-byte trailer (its f32
    /// scale, then padding); 0 for every other type.
    pub const fn trailer_bytes(self) -> usize {
        match self {
            GgmlType::I2_S => 32,
            _ => 0,
        }
    }

    /// Bytes of a whole tensor of `n` elements in a GGUF file: [`Self::bytes_for`] plus
    /// [`Self::trailer_bytes`].
    pub const fn tensor_bytes(self, n: u64) -> Option<u64> {
        match self.bytes_for(n) {
            Some(b) => b.checked_add(self.trailer_bytes() as u64),
            None => None,
        }
    }

    /// Whether the block structure of this type runs over the whole tensor rather than each row
    /// (I2_S): its rows need not be whole blocks, only the tensor.
    pub const fn blocks_span_rows(self) -> bool {
        matches!(self, GgmlType::I2_S)
    }

    /// Whether this runtime can compute with tensors of this type (dequantize and multiply).
    pub const fn is_supported(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16
                | BF16
                | Q4_0
                | Q4_1
                | Q5_0
                | Q5_1
                | Q8_0
                | Q4_K
                | Q5_K
                | Q6_K
                | T2
                | Q4W
                | TQ1_0
                | TQ2_0
                | TQ2W
        )
    }
}

impl core::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for t in ALL_TYPES {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(1000), Some(GgmlType::T2));
        assert_eq!(GgmlType::from_id(1001), Some(GgmlType::Q4W));
        assert_eq!(GgmlType::from_id(1002), Some(GgmlType::TQ2W));
        assert_eq!(GgmlType::from_id(1003), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(GgmlType::Q4_1.bytes_for(576), Some(18 * 20));
        // Q4W: the bytes of Q4_0, in blocks of 64.
        assert_eq!(GgmlType::Q4W.bytes_for(576), GgmlType::Q4_0.bytes_for(576));
        assert_eq!(GgmlType::Q4W.bytes_for(544), None);
        assert_eq!(GgmlType::Q4_K.bytes_for(576), None);
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
        // 2560 x 6912 ternary weights: 2 bits each, then the 32-byte trailer.
        assert_eq!(
            GgmlType::I2_S.tensor_bytes(2560 * 6912),
            Some(2560 * 6912 / 4 + 32)
        );
        assert_eq!(GgmlType::Q8_0.tensor_bytes(64), Some(68));
        assert_eq!(GgmlType::from_id(36), Some(GgmlType::I2_S));
        assert!(!GgmlType::I2_S.is_supported());
    }
}
