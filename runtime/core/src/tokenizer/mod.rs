//! Text to token ids and back, for the vocabularies GGUF files carry: byte-level BPE (`gpt2`) and
//! SentencePiece (`llama`).
//!
//! Boundary: everything is built once from the vocabulary ([`Tokenizer::from_spec`], or
//! `from_gguf`); encoding allocates scratch (it runs on prompts, before decoding starts).
//! Invariant: decoding allocates nothing: [`Tokenizer::token_bytes`] borrows from tables built at
//! load, and [`Utf8Stream`] assembles characters that span tokens in a fixed 4-byte carry.
//!
//! Tokenization follows llama.cpp's, so that a model sees the ids it was run with there:
//! special tokens are cut out first (longest text first), then each plain fragment is
//! pre-tokenized and merged.

mod bpe;
mod pretok;
mod spm;
mod utf8;

pub use pretok::PreTokenizer;
pub use utf8::{OutputTooSmall, Utf8Stream};

use alloc::string::String;
use alloc::vec::Vec;
use bpe::{Merge, NONE};
use core::fmt;

/// What a vocabulary entry is, from `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TokenType {
    /// Ordinary text.
    Normal = 1,
    /// The unknown token.
    Unknown = 2,
    /// Control tokens such as `<s>` or `<|im_end|>`: only parsed from text on request.
    Control = 3,
    /// Added tokens that are always matched in text as a whole.
    UserDefined = 4,
    /// Reserved, never produced.
    Unused = 5,
    /// SentencePiece byte fallback `<0xNN>`.
    Byte = 6,
}

impl TokenType {
    /// From the GGUF value (0, "undefined", reads as normal).
    pub fn from_i32(v: i32) -> Option<TokenType> {
        Some(match v {
            0 | 1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }
}

/// How plain text becomes tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// Byte-level BPE (`gpt2`) with its pre-tokenizer.
    Bpe(PreTokenizer),
    /// SentencePiece (`llama`).
    Spm,
}

/// Why a vocabulary cannot be used.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A required metadata key is absent or has the wrong type.
    MissingKey(&'static str),
    /// `tokenizer.ggml.model` names a kind this runtime does not implement.
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this runtime does not implement.
    UnsupportedPreTokenizer(String),
    /// An array's length differs from the number of tokens.
    LengthMismatch {
        key: &'static str,
        expected: usize,
        found: usize,
    },
    /// A token type value outside 0..=6.
    BadTokenType { id: u32, value: i32 },
    /// A special token id (BOS, EOS, ...) is not in the vocabulary.
    IdOutOfRange {
        key: &'static str,
        id: u32,
        vocab_size: usize,
    },
    /// The vocabulary is empty or too large for 32-bit ids and offsets.
    BadVocabSize(usize),
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerError::MissingKey(k) => {
                write!(
                    f,
                    "tokenizer metadata `{k}` is missing or has the wrong type"
                )
            }
            TokenizerError::UnsupportedModel(m) => write!(
                f,
                "tokenizer model `{m}` is not supported: expected `gpt2` (byte-level BPE) or \
                 `llama` (SentencePiece)"
            ),
            TokenizerError::UnsupportedPreTokenizer(p) => write!(
                f,
                "pre-tokenizer `{p}` is not supported: expected one of gpt-2, default, llama-bpe, \
                 qwen2, starcoder, smollm, refact (or a name that maps to them)"
            ),
            TokenizerError::LengthMismatch {
                key,
                expected,
                found,
            } => write!(
                f,
                "`{key}` has {found} entries but the vocabulary has {expected} tokens"
            ),
            TokenizerError::BadTokenType { id, value } => {
                write!(f, "token {id} has type {value}; expected 0 to 6")
            }
            TokenizerError::IdOutOfRange {
                key,
                id,
                vocab_size,
            } => write!(
                f,
                "`{key}` is {id} but the vocabulary has {vocab_size} tokens"
            ),
            TokenizerError::BadVocabSize(n) => {
                write!(
                    f,
                    "vocabulary of {n} tokens: expected 1 to 2^31 tokens of text"
                )
            }
        }
    }
}

impl core::error::Error for TokenizerError {}

/// A vocabulary as plain data, for [`Tokenizer::from_spec`]. `from_gguf` fills it from the
/// `tokenizer.ggml.*` keys.
#[derive(Clone, Debug, Default)]
pub struct VocabSpec<'a> {
    /// `gpt2` or `llama`.
    pub model: &'a str,
    /// Pre-tokenizer name for `gpt2` vocabularies (`None` reads as `default`).
    pub pre: Option<&'a str>,
    /// Token texts, indexed by id.
    pub tokens: Vec<&'a str>,
    /// Token types (GGUF values), one per token; absent means all normal.
    pub token_types: Option<Vec<i32>>,
    /// SentencePiece scores, one per token; absent means all zero.
    pub scores: Option<Vec<f32>>,
    /// BPE merges, `"left right"`, highest priority first.
    pub merges: Vec<&'a str>,
    /// Special token ids.
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// Behaviour flags; `None` takes the model's default.
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
}

/// Texts that end a turn in common chat formats; such tokens end generation and are control.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<EOT>",
    "<|return|>",
    "<|call|>",
    "<end_of_utterance>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
];

/// A loaded vocabulary: encodes text and maps ids back to bytes.
pub struct Tokenizer {
    model: Model,
    /// All token texts back to back; token `i` is `text[text_off[i]..text_off[i + 1]]`.
    text: String,
    text_off: Vec<u32>,
    /// What each token decodes to, back to back, indexed like `text`.
    bytes: Vec<u8>,
    bytes_off: Vec<u32>,
    types: Vec<TokenType>,
    scores: Vec<f32>,
    /// Token ids sorted by text, one per distinct text (the highest id when texts repeat).
    by_text: Vec<u32>,
    /// BPE merges sorted by pair key.
    merges: Vec<Merge>,
    /// The token for each raw byte (BPE: its mapped character; SPM: `<0xNN>`), or `NONE`.
    byte_tok: [u32; 256],
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<u32>,
    /// Tokens that end generation, sorted.
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    max_token_bytes: usize,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model)
            .field("vocab_size", &self.vocab_size())
            .field("merges", &self.merges.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

enum Fragment {
    Text(usize, usize),
    Token(u32),
}

impl Tokenizer {
    /// Builds a tokenizer from plain vocabulary data.
    pub fn from_spec(spec: &VocabSpec<'_>) -> Result<Tokenizer, TokenizerError> {
        let n = spec.tokens.len();
        if n == 0 || n > (1 << 31) {
            return Err(TokenizerError::BadVocabSize(n));
        }
        let model = match spec.model {
            "gpt2" => {
                let pre = spec.pre.unwrap_or("default");
                Model::Bpe(
                    PreTokenizer::from_name(pre)
                        .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer(pre.into()))?,
                )
            }
            "llama" => Model::Spm,
            other => return Err(TokenizerError::UnsupportedModel(other.into())),
        };
        let mut types = Vec::with_capacity(n);
        match &spec.token_types {
            Some(t) if t.len() != n => {
                return Err(TokenizerError::LengthMismatch {
                    key: "tokenizer.ggml.token_type",
                    expected: n,
                    found: t.len(),
                })
            }
            Some(t) => {
                for (id, &value) in t.iter().enumerate() {
                    let ty = TokenType::from_i32(value).ok_or(TokenizerError::BadTokenType {
                        id: id as u32,
                        value,
                    })?;
                    types.push(ty);
                }
            }
            None => types.resize(n, TokenType::Normal),
        }
        let scores = match &spec.scores {
            Some(s) if s.len() != n => {
                return Err(TokenizerError::LengthMismatch {
                    key: "tokenizer.ggml.scores",
                    expected: n,
                    found: s.len(),
                })
            }
            Some(s) => s.clone(),
            None => Vec::new(),
        };
        let check = |key: &'static str, id: Option<u32>| match id {
            Some(id) if id as usize >= n => Err(TokenizerError::IdOutOfRange {
                key,
                id,
                vocab_size: n,
            }),
            _ => Ok(id),
        };
        let bos = check("tokenizer.ggml.bos_token_id", spec.bos)?;
        let eos = check("tokenizer.ggml.eos_token_id", spec.eos)?;
        let mut eot = check("tokenizer.ggml.eot_token_id", spec.eot)?;
        let unk = check("tokenizer.ggml.unknown_token_id", spec.unk)?;
        let pad = check("tokenizer.ggml.padding_token_id", spec.pad)?;

        let total: usize = spec.tokens.iter().map(|t| t.len()).sum();
        if total > u32::MAX as usize / 4 {
            return Err(TokenizerError::BadVocabSize(n));
        }
        let mut text = String::with_capacity(total);
        let mut text_off = Vec::with_capacity(n + 1);
        text_off.push(0);
        for t in &spec.tokens {
            text.push_str(t);
            text_off.push(text.len() as u32);
        }

        let mut tok = Tokenizer {
            model,
            text,
            text_off,
            bytes: Vec::new(),
            bytes_off: Vec::new(),
            types,
            scores,
            by_text: Vec::new(),
            merges: Vec::new(),
            byte_tok: [NONE; 256],
            specials: Vec::new(),
            eog: Vec::new(),
            bos,
            eos,
            eot: None,
            unk,
            pad,
            add_bos: spec.add_bos.unwrap_or(model == Model::Spm),
            add_eos: spec.add_eos.unwrap_or(false),
            add_space_prefix: spec.add_space_prefix.unwrap_or(model == Model::Spm),
            max_token_bytes: 0,
        };

        // Text lookup: ids sorted by text; the last of equal texts wins, as in the reference.
        let mut by_text: Vec<u32> = (0..n as u32).collect();
        by_text.sort_by(|&a, &b| tok.token_text(a).cmp(tok.token_text(b)).then(b.cmp(&a)));
        by_text.dedup_by(|a, b| tok.token_text(*a) == tok.token_text(*b));
        tok.by_text = by_text;

        // Tokens that end a turn are control tokens and end generation.
        let mut eog: Vec<u32> = [eos, eot].into_iter().flatten().collect();
        for t in END_OF_GENERATION_TEXTS {
            if let Some(id) = tok.token_id(t) {
                if tok.types[id as usize] != TokenType::Control {
                    tok.types[id as usize] = TokenType::Control;
                }
                eot = eot.or(Some(id));
                eog.push(id);
            }
        }
        eog.sort_unstable();
        eog.dedup();
        tok.eog = eog;
        tok.eot = eot;

        // Decoded bytes of every token.
        let mut bytes = Vec::with_capacity(total);
        let mut bytes_off = Vec::with_capacity(n + 1);
        bytes_off.push(0u32);
        for id in 0..n as u32 {
            tok.decode_into(id, &mut bytes);
            tok.max_token_bytes = tok
                .max_token_bytes
                .max(bytes.len() - *bytes_off.last().unwrap_or(&0) as usize);
            bytes_off.push(bytes.len() as u32);
        }
        tok.bytes = bytes;
        tok.bytes_off = bytes_off;

        // Byte tokens.
        let mut name = String::new();
        for b in 0..=255u8 {
            name.clear();
            let id = match model {
                Model::Bpe(_) => {
                    name.push(bpe::byte_to_char(b));
                    tok.token_id(&name)
                }
                Model::Spm => {
                    use core::fmt::Write;
                    let _ = write!(name, "<0x{b:02X}>");
                    tok.token_id(&name).or_else(|| {
                        let one = [b];
                        core::str::from_utf8(&one)
                            .ok()
                            .and_then(|s| tok.token_id(s))
                    })
                }
            };
            tok.byte_tok[b as usize] = id.unwrap_or(NONE);
        }

        // Merges, by pair of token ids.
        if let Model::Bpe(_) = model {
            let mut merges = Vec::with_capacity(spec.merges.len());
            for (rank, m) in spec.merges.iter().enumerate() {
                // The first space after the first byte separates the pair (a space byte is a
                // character boundary, so both halves are valid text).
                let bytes = m.as_bytes();
                let Some(sp) = bytes.iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else {
                    continue;
                };
                let (a, b) = (&m[..sp], &m[sp + 1..]);
                name.clear();
                name.push_str(a);
                name.push_str(b);
                if let (Some(l), Some(r), Some(id)) =
                    (tok.token_id(a), tok.token_id(b), tok.token_id(&name))
                {
                    merges.push(Merge {
                        key: bpe::merge_key(l, r),
                        rank: rank as u32,
                        id,
                    });
                }
            }
            merges.sort_by_key(|m| (m.key, m.rank));
            merges.dedup_by_key(|m| m.key);
            tok.merges = merges;
        }

        // Special tokens, matched in text longest first.
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&id| {
                matches!(
                    tok.types[id as usize],
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                ) && !tok.token_text(id).is_empty()
            })
            .collect();
        specials.sort_by(|&a, &b| {
            tok.token_text(b)
                .len()
                .cmp(&tok.token_text(a).len())
                .then(a.cmp(&b))
        });
        tok.specials = specials;
        Ok(tok)
    }

    /// Builds the tokenizer a GGUF file describes in its `tokenizer.ggml.*` keys.
    pub fn from_gguf(g: &crate::gguf::Gguf<'_>) -> Result<Tokenizer, TokenizerError> {
        const MODEL: &str = "tokenizer.ggml.model";
        const TOKENS: &str = "tokenizer.ggml.tokens";
        const TYPES: &str = "tokenizer.ggml.token_type";
        const SCORES: &str = "tokenizer.ggml.scores";
        const MERGES: &str = "tokenizer.ggml.merges";
        let model = g.get_str(MODEL).ok_or(TokenizerError::MissingKey(MODEL))?;
        let tokens_arr = g
            .get_array(TOKENS)
            .ok_or(TokenizerError::MissingKey(TOKENS))?;
        let tokens: Vec<&str> = tokens_arr
            .strings()
            .ok_or(TokenizerError::MissingKey(TOKENS))?
            .collect();
        let token_types = match g.get_array(TYPES) {
            None => None,
            Some(a) => {
                let mut v = Vec::with_capacity(a.len());
                for x in a.iter() {
                    let t = x.as_i64().and_then(|t| i32::try_from(t).ok());
                    v.push(t.ok_or(TokenizerError::MissingKey(TYPES))?);
                }
                Some(v)
            }
        };
        let scores = match g.get_array(SCORES) {
            None => None,
            Some(a) => Some(
                a.f32s()
                    .ok_or(TokenizerError::MissingKey(SCORES))?
                    .collect(),
            ),
        };
        let merges = match g.get_array(MERGES) {
            None => Vec::new(),
            Some(a) => a
                .strings()
                .ok_or(TokenizerError::MissingKey(MERGES))?
                .collect(),
        };
        let id = |key: &str| {
            g.get(key)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
        };
        let spec = VocabSpec {
            model,
            pre: g.get_str("tokenizer.ggml.pre"),
            tokens,
            token_types,
            scores,
            merges,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            eot: id("tokenizer.ggml.eot_token_id"),
            unk: id("tokenizer.ggml.unknown_token_id"),
            pad: id("tokenizer.ggml.padding_token_id"),
            add_bos: g.get_bool("tokenizer.ggml.add_bos_token"),
            add_eos: g.get_bool("tokenizer.ggml.add_eos_token"),
            add_space_prefix: g.get_bool("tokenizer.ggml.add_space_prefix"),
        };
        if spec.tokens.len() != tokens_arr.len() {
            return Err(TokenizerError::MissingKey(TOKENS));
        }
        Tokenizer::from_spec(&spec)
    }

    /// Appends what token `id` decodes to.
    fn decode_into(&self, id: u32, out: &mut Vec<u8>) {
        let text = self.token_text(id);
        let ty = self.types[id as usize];
        match (self.model, ty) {
            (_, TokenType::Control | TokenType::UserDefined) => {
                out.extend_from_slice(text.as_bytes())
            }
            (Model::Bpe(_), _) => {
                for c in text.chars() {
                    match bpe::char_to_byte(c) {
                        Some(b) => out.push(b),
                        None => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
            }
            (Model::Spm, TokenType::Byte) => match parse_byte_token(text) {
                Some(b) => out.push(b),
                None => out.extend_from_slice(text.as_bytes()),
            },
            (Model::Spm, TokenType::Unknown) => out.extend_from_slice("\u{2585}".as_bytes()),
            (Model::Spm, _) => {
                for c in text.chars() {
                    if c == spm::SPACE_MARK {
                        out.push(b' ');
                    } else {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
        }
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.types.len()
    }

    /// How plain text is tokenized.
    pub fn model(&self) -> Model {
        self.model
    }

    /// Beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn token (from metadata, else the first chat end-of-turn token found).
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// Unknown token.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    /// Padding token.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether a prompt starts with BOS (from metadata; SentencePiece defaults to yes).
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Whether a prompt ends with EOS (from metadata; default no).
    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }

    /// Whether generation stops at `id`: EOS, EOT, and end-of-turn control tokens such as
    /// `<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `<end_of_turn>`.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// The type of token `id` (`Normal` for ids out of range).
    pub fn token_type(&self, id: u32) -> TokenType {
        self.types
            .get(id as usize)
            .copied()
            .unwrap_or(TokenType::Normal)
    }

    /// Whether `id` is a control token (not text; the caller decides whether to show it).
    pub fn is_control(&self, id: u32) -> bool {
        self.token_type(id) == TokenType::Control
    }

    /// The raw vocabulary string of `id` (empty for ids out of range).
    pub fn token_text(&self, id: u32) -> &str {
        let i = id as usize;
        match (self.text_off.get(i), self.text_off.get(i + 1)) {
            (Some(&a), Some(&b)) => self.text.get(a as usize..b as usize).unwrap_or(""),
            _ => "",
        }
    }

    /// The bytes token `id` decodes to: byte-level mapping undone, `▁` as a space, `<0xNN>` as
    /// its byte; control tokens give their text. Empty for ids out of range.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match (self.bytes_off.get(i), self.bytes_off.get(i + 1)) {
            (Some(&a), Some(&b)) => self.bytes.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The longest [`token_bytes`](Self::token_bytes) of the vocabulary, to size output buffers.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// The token whose vocabulary string is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.by_text
            .binary_search_by(|&id| self.token_text(id).cmp(text))
            .ok()
            .map(|i| self.by_text[i])
    }

    fn byte_token(&self, b: u8) -> Option<u32> {
        let id = self.byte_tok[b as usize];
        (id != NONE).then_some(id)
    }

    /// Appends the tokens of `text` to `out` (no BOS or EOS is added here).
    ///
    /// With `parse_special`, texts of control tokens in `text` become those tokens; without, they
    /// are plain text. User-defined tokens are always matched.
    pub fn encode(&self, text: &str, parse_special: bool, out: &mut Vec<u32>) {
        let fragments = self.split_specials(text, parse_special);
        match self.model {
            Model::Bpe(pre) => {
                let mut scratch = bpe::BpeScratch::default();
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => {
                            self.encode_bpe(pre, &text[a..b], &mut scratch, out)
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Model::Spm => {
                let mut scratch = spm::SpmScratch::default();
                let mut after_special = true;
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => {
                            let prefix = self.add_space_prefix && after_special;
                            self.encode_spm(&text[a..b], prefix, &mut scratch, out);
                            after_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                    }
                }
            }
        }
    }

    /// Cuts `text` at occurrences of special token texts, each special in turn, longest first.
    fn split_specials(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        let mut present = [false; 256];
        for &b in text.as_bytes() {
            present[b as usize] = true;
        }
        let mut next = Vec::new();
        for &id in &self.specials {
            if !parse_special && self.types[id as usize] != TokenType::UserDefined {
                continue;
            }
            let needle = self.token_text(id);
            if needle.len() > text.len()
                || !present[needle.as_bytes()[0] as usize]
                || !text.contains(needle)
            {
                continue;
            }
            next.clear();
            for f in frags.drain(..) {
                let Fragment::Text(mut a, b) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(p) = text[a..b].find(needle) {
                    if p > 0 {
                        next.push(Fragment::Text(a, a + p));
                    }
                    next.push(Fragment::Token(id));
                    a += p + needle.len();
                }
                if a < b {
                    next.push(Fragment::Text(a, b));
                }
            }
            core::mem::swap(&mut frags, &mut next);
        }
        frags
    }
}

/// `<0xNN>` to its byte.
fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests;
