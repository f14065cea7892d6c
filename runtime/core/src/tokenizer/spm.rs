//! SentencePiece-style encoding (`tokenizer.ggml.model = llama`): spaces become `▁`, each
//! character starts as a symbol, and the adjacent pair whose concatenation is the vocabulary
//! token with the highest score merges first (leftmost on ties). Symbols left without a token fall
//! back to `<0xNN>` byte tokens.

use super::bpe::NONE;
use super::Tokenizer;
use alloc::collections::BinaryHeap;
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Ordering;

/// The character SentencePiece writes for a space.
pub(crate) const SPACE_MARK: char = '\u{2581}';

#[derive(Clone, Copy, Debug)]
struct Sym {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

#[derive(Clone, Copy, Debug)]
struct Pair {
    score: f32,
    left: u32,
    right: u32,
    len: u32,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    /// Higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Buffers reused across the fragments of one `encode` call.
#[derive(Default)]
pub(crate) struct SpmScratch {
    text: String,
    syms: Vec<Sym>,
    heap: BinaryHeap<Pair>,
}

impl Tokenizer {
    /// Encodes one fragment of plain text; `space_prefix` puts a space before it.
    pub(crate) fn encode_spm(
        &self,
        text: &str,
        space_prefix: bool,
        s: &mut SpmScratch,
        out: &mut Vec<u32>,
    ) {
        s.text.clear();
        if space_prefix {
            s.text.push(SPACE_MARK);
        }
        for c in text.chars() {
            s.text.push(if c == ' ' { SPACE_MARK } else { c });
        }
        s.syms.clear();
        for (i, c) in s.text.char_indices() {
            let n = s.syms.len() as u32;
            let prev = if n == 0 { NONE } else { n - 1 };
            s.syms.push(Sym {
                start: i as u32,
                len: c.len_utf8() as u32,
                prev,
                next: n + 1,
            });
        }
        let n = s.syms.len();
        if n == 0 {
            return;
        }
        s.syms[n - 1].next = NONE;
        s.heap.clear();
        for i in 1..n as u32 {
            self.spm_pair(s, i - 1, i);
        }
        while let Some(p) = s.heap.pop() {
            let (left, right) = (s.syms[p.left as usize], s.syms[p.right as usize]);
            if left.len == 0
                || right.len == 0
                || left.next != p.right
                || left.len + right.len != p.len
            {
                continue; // stale
            }
            s.syms[p.left as usize].len = p.len;
            s.syms[p.left as usize].next = right.next;
            s.syms[p.right as usize].len = 0;
            if right.next != NONE {
                s.syms[right.next as usize].prev = p.left;
                self.spm_pair(s, p.left, right.next);
            }
            if left.prev != NONE {
                self.spm_pair(s, left.prev, p.left);
            }
        }
        let mut i = 0u32;
        while i != NONE {
            let sym = s.syms[i as usize];
            let piece = &s.text[sym.start as usize..(sym.start + sym.len) as usize];
            match self.token_id(piece) {
                Some(id) => out.push(id),
                None => {
                    for &b in piece.as_bytes() {
                        if let Some(id) = self.byte_token(b).or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
            i = sym.next;
        }
    }

    fn spm_pair(&self, s: &mut SpmScratch, l: u32, r: u32) {
        let (left, right) = (s.syms[l as usize], s.syms[r as usize]);
        let len = left.len + right.len;
        let piece = &s.text[left.start as usize..(left.start + len) as usize];
        if let Some(id) = self.token_id(piece) {
            let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
            s.heap.push(Pair {
                score,
                left: l,
                right: r,
                len,
            });
        }
    }
}
