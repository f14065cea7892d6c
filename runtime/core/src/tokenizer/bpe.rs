//! Byte-level BPE (`tokenizer.ggml.model = gpt2`): the byte-to-character mapping, the merge table
//! and the merge loop over one pre-tokenized word.
//!
//! Each byte of a word starts as the token of its mapped character; the adjacent pair with the
//! lowest merge rank (leftmost on ties) merges until no pair has a rank.

use super::pretok::{classify, Cp, PreTokenizer};
use super::Tokenizer;
use alloc::collections::BinaryHeap;
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::ops::Range;

/// Marks "no token" / "no symbol" in the compact tables.
pub(crate) const NONE: u32 = u32::MAX;

/// The character GPT-2's byte-level alphabet uses for byte `b`: printable Latin-1 bytes stand
/// for themselves, the other 68 bytes for U+0100.. in byte order.
pub(crate) fn byte_to_char(b: u8) -> char {
    let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
    if printable {
        return char::from(b);
    }
    let k = match b {
        0..=32 => b as u32,
        127..=160 => 33 + (b as u32 - 127),
        _ => 67, // 173
    };
    char::from_u32(256 + k).unwrap_or('\u{FFFD}')
}

/// The byte a character of the byte-level alphabet stands for.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let u = c as u32;
    match u {
        33..=126 | 161..=172 | 174..=255 => Some(u as u8),
        256..=288 => Some((u - 256) as u8),
        289..=322 => Some((u - 289 + 127) as u8),
        323 => Some(173),
        _ => None,
    }
}

/// One merge rule: the pair `(left, right)` of token ids packed in `key`, its rank (position in
/// `tokenizer.ggml.merges`) and the token it makes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Merge {
    pub key: u64,
    pub rank: u32,
    pub id: u32,
}

pub(crate) fn merge_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// A pair that may merge: (rank, left symbol, right symbol, left id, right id). The heap pops
/// the lowest rank, then the leftmost pair.
type Candidate = (u32, u32, u32, u32, u32);

#[derive(Clone, Copy, Debug)]
struct Sym {
    id: u32,
    prev: u32,
    next: u32,
}

/// Buffers reused across the words of one `encode` call.
#[derive(Default)]
pub(crate) struct BpeScratch {
    cps: Vec<Cp>,
    offsets: Vec<usize>,
    words: Vec<Range<usize>>,
    tmp: Vec<Range<usize>>,
    mapped: String,
    syms: Vec<Sym>,
    heap: BinaryHeap<Reverse<Candidate>>,
}

impl Tokenizer {
    /// Encodes one fragment of plain text (no special tokens in it).
    pub(crate) fn encode_bpe(
        &self,
        pre: PreTokenizer,
        text: &str,
        s: &mut BpeScratch,
        out: &mut Vec<u32>,
    ) {
        s.cps.clear();
        s.offsets.clear();
        for (i, c) in text.char_indices() {
            s.offsets.push(i);
            s.cps.push(Cp {
                c,
                class: classify(c),
            });
        }
        s.offsets.push(text.len());
        let mut words = core::mem::take(&mut s.words);
        pre.split(&s.cps, &mut words, &mut s.tmp);
        for r in &words {
            let word = &text.as_bytes()[s.offsets[r.start]..s.offsets[r.end]];
            self.bpe_word(word, pre.ignore_merges(), s, out);
        }
        s.words = words;
    }

    fn merge_of(&self, left: u32, right: u32) -> Option<Merge> {
        let key = merge_key(left, right);
        self.merges
            .binary_search_by_key(&key, |m| m.key)
            .ok()
            .map(|i| self.merges[i])
    }

    fn bpe_word(&self, word: &[u8], ignore_merges: bool, s: &mut BpeScratch, out: &mut Vec<u32>) {
        if word.len() == 1 {
            if let Some(id) = self.byte_token(word[0]) {
                out.push(id);
            }
            return;
        }
        if ignore_merges {
            s.mapped.clear();
            s.mapped.extend(word.iter().map(|&b| byte_to_char(b)));
            if let Some(id) = self.token_id(&s.mapped) {
                out.push(id);
                return;
            }
        }
        s.syms.clear();
        for &b in word {
            // A byte with no token cannot be represented; it is dropped, as the reference does.
            if let Some(id) = self.byte_token(b) {
                let i = s.syms.len() as u32;
                let prev = if i == 0 { NONE } else { i - 1 };
                s.syms.push(Sym {
                    id,
                    prev,
                    next: i + 1,
                });
            }
        }
        let n = s.syms.len();
        if n == 0 {
            return;
        }
        s.syms[n - 1].next = NONE;
        s.heap.clear();
        for i in 0..n - 1 {
            self.push_pair(s, i as u32, i as u32 + 1);
        }
        while let Some(Reverse((_, l, r, lid, rid))) = s.heap.pop() {
            let (left, right) = (s.syms[l as usize], s.syms[r as usize]);
            if left.id != lid || left.next != r || right.id != rid {
                continue; // stale: one side has merged since
            }
            let Some(m) = self.merge_of(lid, rid) else {
                continue;
            };
            s.syms[l as usize].id = m.id;
            s.syms[l as usize].next = right.next;
            s.syms[r as usize].id = NONE;
            if right.next != NONE {
                s.syms[right.next as usize].prev = l;
            }
            if left.prev != NONE {
                self.push_pair(s, left.prev, l);
            }
            if right.next != NONE {
                self.push_pair(s, l, right.next);
            }
        }
        let mut i = 0u32;
        while i != NONE {
            out.push(s.syms[i as usize].id);
            i = s.syms[i as usize].next;
        }
    }

    fn push_pair(&self, s: &mut BpeScratch, l: u32, r: u32) {
        let (lid, rid) = (s.syms[l as usize].id, s.syms[r as usize].id);
        if let Some(m) = self.merge_of(lid, rid) {
            s.heap.push(Reverse((m.rank, l, r, lid, rid)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_round_trips() {
        let mut seen = alloc::collections::BTreeSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert_eq!(char_to_byte(c), Some(b));
            assert!(seen.insert(c));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(char_to_byte('a'), Some(b'a'));
        assert_eq!(char_to_byte('▁'), None);
    }
}
