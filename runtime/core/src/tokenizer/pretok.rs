//! Pre-tokenizers of byte-level BPE vocabularies: the regexes that cut text into words before
//! merging, written out as matching code over classified code points.
//!
//! Each splitter takes fragments (code point ranges) and cuts each one further; a pre-tokenizer is
//! a chain of splitters. Text a regex does not match stays a fragment of its own, as when a
//! tokenizer library splits by regex and keeps the gaps. Characters below U+0080 are classified
//! from a table; others from the Unicode general category.

use alloc::vec::Vec;
use core::ops::Range;
use unicode_general_category::{get_general_category, GeneralCategory as Gc};

/// The classes the regexes look at: `\p{L}` (split by case for GPT-4o), `\p{N}`, `\s`,
/// `\p{P}`, `\p{M}` and anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// Lu, Lt
    Upper,
    /// Ll
    Lower,
    /// Lm, Lo
    Letter,
    Number,
    Space,
    Punct,
    Mark,
    Other,
}

impl Class {
    /// `\p{L}`
    fn is_letter(self) -> bool {
        matches!(self, Class::Upper | Class::Lower | Class::Letter)
    }
    /// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`
    fn is_upper_ish(self) -> bool {
        matches!(self, Class::Upper | Class::Letter | Class::Mark)
    }
    /// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`
    fn is_lower_ish(self) -> bool {
        matches!(self, Class::Lower | Class::Letter | Class::Mark)
    }
}

const fn ascii_class(c: u8) -> Class {
    match c {
        b'a'..=b'z' => Class::Lower,
        b'A'..=b'Z' => Class::Upper,
        b'0'..=b'9' => Class::Number,
        b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' => Class::Space,
        b'!'..=b'#' | b'%'..=b'*' | b','..=b'/' | b':' | b';' | b'?' | b'@' | b'['..=b']' => {
            Class::Punct
        }
        b'_' | b'{' | b'}' => Class::Punct,
        _ => Class::Other,
    }
}

static ASCII: [Class; 128] = {
    let mut t = [Class::Other; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = ascii_class(i as u8);
        i += 1;
    }
    t
};

/// Unicode White_Space (what `\s` means to the reference tokenizers).
fn is_unicode_space(c: u32) -> bool {
    matches!(
        c,
        0x09..=0x0d | 0x20 | 0x85 | 0xa0 | 0x1680 | 0x2000..=0x200a | 0x2028 | 0x2029 | 0x202f
            | 0x205f | 0x3000
    )
}

pub(crate) fn classify(c: char) -> Class {
    let u = c as u32;
    if u < 128 {
        return ASCII[u as usize];
    }
    if is_unicode_space(u) {
        return Class::Space;
    }
    match get_general_category(c) {
        Gc::UppercaseLetter | Gc::TitlecaseLetter => Class::Upper,
        Gc::LowercaseLetter => Class::Lower,
        Gc::ModifierLetter | Gc::OtherLetter => Class::Letter,
        Gc::NonspacingMark | Gc::SpacingMark | Gc::EnclosingMark => Class::Mark,
        Gc::DecimalNumber | Gc::LetterNumber | Gc::OtherNumber => Class::Number,
        Gc::ConnectorPunctuation
        | Gc::DashPunctuation
        | Gc::OpenPunctuation
        | Gc::ClosePunctuation
        | Gc::InitialPunctuation
        | Gc::FinalPunctuation
        | Gc::OtherPunctuation => Class::Punct,
        _ => Class::Other,
    }
}

/// Which chain of splitters a vocabulary's `tokenizer.ggml.pre` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// The older llama.cpp default: punctuation runs, then GPT-2, then `\p{N}+`, then
    /// `[0-9][0-9][0-9]`.
    Default,
    /// Llama 3: case-insensitive contractions, `[^\r\n\p{L}\p{N}]?\p{L}+`, `\p{N}{1,3}`,
    /// ` ?[^\s\p{L}\p{N}]+[\r\n]*`, `\s*[\r\n]+`, `\s+(?!\S)`, `\s+`.
    Llama3,
    /// Qwen2: as Llama 3 but numbers one code point at a time (`\p{N}`).
    Qwen2,
    /// StarCoder, SmolLM, Refact and kin: `\p{N}` split out one at a time, then GPT-2.
    Starcoder,
    /// GPT-4o (o200k) and Llama 4: case-aware words with contractions attached,
    /// `\p{N}{1,3}`, ` ?[^\s\p{L}\p{N}]+[\r\n/]*`, `\s*[\r\n]+`, `\s+(?!\S)`, `\s+`.
    Gpt4o,
}

impl PreTokenizer {
    /// Maps a `tokenizer.ggml.pre` name (as llama.cpp's converter writes them) to a splitter chain.
    pub fn from_name(name: &str) -> Option<PreTokenizer> {
        Some(match name {
            "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "jina-v1-en" | "jina-v2-es"
            | "jina-v2-de" | "jina-v2-code" | "roberta-bpe" | "gigachat" | "mpt" | "olmo"
            | "jais" | "trillion" => PreTokenizer::Gpt2,
            "default" => PreTokenizer::Default,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "midm-2.0" | "lfm2" => {
                PreTokenizer::Llama3
            }
            "qwen2" | "deepseek-r1-qwen" | "megrez" => PreTokenizer::Qwen2,
            "starcoder" | "refact" | "smollm" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => PreTokenizer::Starcoder,
            "gpt-4o" | "llama4" => PreTokenizer::Gpt4o,
            _ => return None,
        })
    }

    /// Whether a word found whole in the vocabulary is emitted without merging (Llama 3 does
    /// this; it can differ from what the merges would build).
    pub fn ignore_merges(self) -> bool {
        self == PreTokenizer::Llama3
    }

    /// The words `text` is cut into (for inspection and tests; encoding reuses its buffers).
    pub fn words(self, text: &str) -> Vec<&str> {
        let mut offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        offsets.push(text.len());
        let cps: Vec<Cp> = text
            .chars()
            .map(|c| Cp {
                c,
                class: classify(c),
            })
            .collect();
        let (mut out, mut tmp) = (Vec::new(), Vec::new());
        self.split(&cps, &mut out, &mut tmp);
        out.iter()
            .map(|r| &text[offsets[r.start]..offsets[r.end]])
            .collect()
    }

    /// Cuts `cps` (classified code points of one text fragment) into words, appended to `out` as
    /// code point ranges in order. `tmp` is scratch.
    pub(crate) fn split(
        self,
        cps: &[Cp],
        out: &mut Vec<Range<usize>>,
        tmp: &mut Vec<Range<usize>>,
    ) {
        out.clear();
        if cps.is_empty() {
            return;
        }
        let whole = 0..cps.len();
        match self {
            PreTokenizer::Gpt2 => gpt2(cps, whole, out),
            PreTokenizer::Llama3 => llama3(cps, whole, 3, out),
            PreTokenizer::Qwen2 => llama3(cps, whole, 1, out),
            PreTokenizer::Gpt4o => gpt4o(cps, whole, out),
            PreTokenizer::Starcoder => {
                tmp.clear();
                each_number(cps, whole, tmp);
                for r in tmp.drain(..) {
                    gpt2(cps, r, out);
                }
            }
            PreTokenizer::Default => {
                tmp.clear();
                punct_runs(cps, whole, tmp);
                for r in tmp.drain(..) {
                    gpt2(cps, r, out);
                }
                core::mem::swap(tmp, out);
                for r in tmp.drain(..) {
                    number_runs(cps, r, out);
                }
                core::mem::swap(tmp, out);
                for r in tmp.drain(..) {
                    ascii_digit_triples(cps, r, out);
                }
            }
        }
    }
}

/// One code point of the text being split.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cp {
    pub c: char,
    pub class: Class,
}

/// Records words as consecutive ranges: each `cut(end)` closes the word begun at the last cut.
struct Cuts<'a> {
    start: usize,
    out: &'a mut Vec<Range<usize>>,
}

impl Cuts<'_> {
    fn cut(&mut self, end: usize) {
        if end > self.start {
            self.out.push(self.start..end);
        }
        self.start = end;
    }
}

/// Reads code points of one fragment; outside the fragment is "nothing" (no class matches).
struct View<'a> {
    cps: &'a [Cp],
    end: usize,
}

impl View<'_> {
    fn class(&self, i: usize) -> Option<Class> {
        if i < self.end {
            Some(self.cps[i].class)
        } else {
            None
        }
    }
    fn char(&self, i: usize) -> Option<char> {
        if i < self.end {
            Some(self.cps[i].c)
        } else {
            None
        }
    }
    fn is(&self, i: usize, class: Class) -> bool {
        self.class(i) == Some(class)
    }
    fn is_letter(&self, i: usize) -> bool {
        self.class(i).is_some_and(Class::is_letter)
    }
    /// `[^\s\p{L}\p{N}]`
    fn is_symbol(&self, i: usize) -> bool {
        matches!(
            self.class(i),
            Some(Class::Punct | Class::Mark | Class::Other)
        )
    }
    fn lower(&self, i: usize) -> Option<char> {
        self.char(i).map(|c| c.to_ascii_lowercase())
    }
    /// Length of a contraction `'s|'t|'re|'ve|'m|'ll|'d` at `i` (0 if none).
    fn contraction(&self, i: usize, any_case: bool) -> usize {
        if self.char(i) != Some('\'') {
            return 0;
        }
        let get = |j| {
            if any_case {
                self.lower(j)
            } else {
                self.char(j)
            }
        };
        match (get(i + 1), get(i + 2)) {
            (Some('s' | 't' | 'm' | 'd'), _) => 2,
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => 3,
            _ => 0,
        }
    }
    fn space_run(&self, i: usize) -> usize {
        let mut n = 0;
        while self.is(i + n, Class::Space) {
            n += 1;
        }
        n
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
fn gpt2(cps: &[Cp], r: Range<usize>, out: &mut Vec<Range<usize>>) {
    let v = View { cps, end: r.end };
    let mut cuts = Cuts {
        start: r.start,
        out,
    };
    let mut pos = r.start;
    while pos < r.end {
        let n = v.contraction(pos, false);
        if n > 0 {
            pos += n;
            cuts.cut(pos);
            continue;
        }
        // An optional leading ASCII space before a letter, number or symbol run.
        let lead = usize::from(v.char(pos) == Some(' '));
        match v.class(pos + lead) {
            Some(c) if c.is_letter() => {
                pos += lead;
                while v.is_letter(pos) {
                    pos += 1;
                }
                cuts.cut(pos);
                continue;
            }
            Some(Class::Number) => {
                pos += lead;
                while v.is(pos, Class::Number) {
                    pos += 1;
                }
                cuts.cut(pos);
                continue;
            }
            Some(Class::Punct | Class::Mark | Class::Other) => {
                pos += lead;
                while v.is_symbol(pos) {
                    pos += 1;
                }
                cuts.cut(pos);
                continue;
            }
            _ => {}
        }
        let n = v.space_run(pos);
        if n > 1 && pos + n < r.end {
            // \s+(?!\S): leave the last space to lead the next word.
            pos += n - 1;
            cuts.cut(pos);
        } else if n > 0 {
            pos += n;
            cuts.cut(pos);
        } else {
            pos += 1;
            cuts.cut(pos);
        }
    }
}

/// The Llama 3 pattern, with `\p{N}{1,max_digits}`.
fn llama3(cps: &[Cp], r: Range<usize>, max_digits: usize, out: &mut Vec<Range<usize>>) {
    let v = View { cps, end: r.end };
    let mut cuts = Cuts {
        start: r.start,
        out,
    };
    let mut pos = r.start;
    while pos < r.end {
        let n = v.contraction(pos, true);
        if n > 0 {
            pos += n;
            cuts.cut(pos);
            continue;
        }
        let c = cps[pos].c;
        let class = cps[pos].class;
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(c == '\r' || c == '\n' || class == Class::Number)
            && (class.is_letter() || v.is_letter(pos + 1))
        {
            pos += 1;
            while v.is_letter(pos) {
                pos += 1;
            }
            cuts.cut(pos);
            continue;
        }
        // \p{N}{1,max}
        if class == Class::Number {
            let mut run = 0;
            while v.is(pos, Class::Number) {
                pos += 1;
                run += 1;
                if run == max_digits {
                    cuts.cut(pos);
                    run = 0;
                }
            }
            cuts.cut(pos);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let lead = usize::from(c == ' ');
        if v.is_symbol(pos + lead) {
            pos += lead;
            while v.is_symbol(pos) {
                pos += 1;
            }
            while matches!(v.char(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            cuts.cut(pos);
            continue;
        }
        let mut n = 0;
        let mut last_newline_end = 0;
        while v.is(pos + n, Class::Space) {
            if matches!(cps[pos + n].c, '\r' | '\n') {
                last_newline_end = pos + n + 1;
            }
            n += 1;
        }
        if last_newline_end > 0 {
            // \s*[\r\n]+
            pos = last_newline_end;
        } else if n > 1 && pos + n < r.end {
            // \s+(?!\S)
            pos += n - 1;
        } else if n > 0 {
            pos += n;
        } else {
            pos += 1;
        }
        cuts.cut(pos);
    }
}

/// `[^\r\n\p{L}\p{N}]?` at `i`
fn is_word_prefix(v: &View<'_>, i: usize) -> bool {
    match v.class(i) {
        Some(c) => !(c.is_letter() || c == Class::Number || matches!(v.char(i), Some('\r' | '\n'))),
        None => false,
    }
}

/// `U*L+` from `s`, where U is `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]` and L is
/// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`, with a backtracking engine's choice: the longest U run after
/// which an L run can start. Returns the end.
fn upper_star_lower_plus(v: &View<'_>, s: usize) -> Option<usize> {
    let lower = |i| v.class(i).is_some_and(Class::is_lower_ish);
    let mut u = s;
    while v.class(u).is_some_and(Class::is_upper_ish) {
        u += 1;
    }
    if lower(u) {
        let mut e = u;
        while lower(e) {
            e += 1;
        }
        return Some(e);
    }
    // Give back U characters until one of them can start the L run; it is then one long, as
    // the next one is not L.
    (s..u).rev().find(|&k| lower(k)).map(|k| k + 1)
}

/// `U+L*` from `s` (see [`upper_star_lower_plus`]). Returns the end.
fn upper_plus_lower_star(v: &View<'_>, s: usize) -> Option<usize> {
    let mut e = s;
    while v.class(e).is_some_and(Class::is_upper_ish) {
        e += 1;
    }
    if e == s {
        return None;
    }
    while v.class(e).is_some_and(Class::is_lower_ish) {
        e += 1;
    }
    Some(e)
}

/// The o200k pattern:
/// `[^\r\n\p{L}\p{N}]?U*L+C?|[^\r\n\p{L}\p{N}]?U+L*C?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// with C the case-insensitive contractions.
fn gpt4o(cps: &[Cp], r: Range<usize>, out: &mut Vec<Range<usize>>) {
    let v = View { cps, end: r.end };
    let mut cuts = Cuts {
        start: r.start,
        out,
    };
    let mut pos = r.start;
    while pos < r.end {
        let prefixed = is_word_prefix(&v, pos);
        let word = None
            .or_else(|| {
                prefixed
                    .then(|| upper_star_lower_plus(&v, pos + 1))
                    .flatten()
            })
            .or_else(|| upper_star_lower_plus(&v, pos))
            .or_else(|| {
                prefixed
                    .then(|| upper_plus_lower_star(&v, pos + 1))
                    .flatten()
            })
            .or_else(|| upper_plus_lower_star(&v, pos));
        if let Some(e) = word {
            pos = e + v.contraction(e, true);
            cuts.cut(pos);
            continue;
        }
        let c = cps[pos].c;
        let class = cps[pos].class;
        if class == Class::Number {
            let mut run = 0;
            while v.is(pos, Class::Number) && run < 3 {
                pos += 1;
                run += 1;
            }
            cuts.cut(pos);
            continue;
        }
        let lead = usize::from(c == ' ');
        if v.is_symbol(pos + lead) {
            pos += lead;
            while v.is_symbol(pos) {
                pos += 1;
            }
            while matches!(v.char(pos), Some('\r' | '\n' | '/')) {
                pos += 1;
            }
            cuts.cut(pos);
            continue;
        }
        let mut n = 0;
        let mut last_newline_end = 0;
        while v.is(pos + n, Class::Space) {
            if matches!(cps[pos + n].c, '\r' | '\n') {
                last_newline_end = pos + n + 1;
            }
            n += 1;
        }
        if last_newline_end > 0 {
            pos = last_newline_end;
        } else if n > 1 && pos + n < r.end {
            pos += n - 1;
        } else if n > 0 {
            pos += n;
        } else {
            pos += 1;
        }
        cuts.cut(pos);
    }
}

/// `\p{N}`: every number code point alone; the text between stays whole.
fn each_number(cps: &[Cp], r: Range<usize>, out: &mut Vec<Range<usize>>) {
    let mut cuts = Cuts {
        start: r.start,
        out,
    };
    for i in r.clone() {
        if cps[i].class == Class::Number {
            cuts.cut(i);
            cuts.cut(i + 1);
        }
    }
    cuts.cut(r.end);
}

/// Splits out maximal runs of code points satisfying `pred`; the text between stays whole.
fn runs(cps: &[Cp], r: Range<usize>, out: &mut Vec<Range<usize>>, pred: impl Fn(&Cp) -> bool) {
    let mut cuts = Cuts {
        start: r.start,
        out,
    };
    let mut i = r.start;
    while i < r.end {
        if pred(&cps[i]) {
            cuts.cut(i);
            while i < r.end && pred(&cps[i]) {
                i += 1;
            }
            cuts.cut(i);
        } else {
            i += 1;
        }
    }
    cuts.cut(r.end);
}

/// `[\p{P}\$\+<=>\^~\|]+`
fn punct_runs(cps: &[Cp], r: Range<usize>, out: &mut Vec<Range<usize>>) {
    runs(cps, r, out, |cp| {
        cp.class == Class::Punct || matches!(cp.c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
    })
}

/// `\p{N}+`
fn number_runs(cps: &[Cp], r: Range<usize>, out: &mut Vec<Range<usize>>) {
    runs(cps, r, out, |cp| cp.class == Class::Number)
}

/// `[0-9][0-9][0-9]`
fn ascii_digit_triples(cps: &[Cp], r: Range<usize>, out: &mut Vec<Range<usize>>) {
    let mut cuts = Cuts {
        start: r.start,
        out,
    };
    let mut i = r.start;
    while i + 3 <= r.end {
        if cps[i..i + 3].iter().all(|cp| cp.c.is_ascii_digit()) {
            cuts.cut(i);
            cuts.cut(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    cuts.cut(r.end);
}

#[cfg(test)]
mod tests {
    use super::*;
    fn words(pre: PreTokenizer, text: &str) -> Vec<&str> {
        pre.words(text)
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words(PreTokenizer::Gpt2, "Hello, y'all!  It's 2024\n\n x"),
            ["Hello", ",", " y", "'", "all", "!", " ", " It", "'s", " 2024", "\n\n", " x"]
        );
        assert_eq!(words(PreTokenizer::Gpt2, "a  "), ["a", "  "]);
    }

    #[test]
    fn llama3_words() {
        assert_eq!(
            words(PreTokenizer::Llama3, "I'LL pay 12345 $!\n\n  \nok"),
            ["I", "'LL", " pay", " ", "123", "45", " $!\n\n", "  \n", "ok"]
        );
    }

    #[test]
    fn qwen2_splits_digits() {
        assert_eq!(
            words(PreTokenizer::Qwen2, "x 123"),
            ["x", " ", "1", "2", "3"]
        );
    }

    #[test]
    fn starcoder_splits_digits_first() {
        assert_eq!(
            words(PreTokenizer::Starcoder, "ab12 c3d"),
            ["ab", "1", "2", " c", "3", "d"]
        );
    }

    #[test]
    fn gpt4o_words() {
        assert_eq!(
            words(
                PreTokenizer::Gpt4o,
                "Hello WORLD's McDonald HTTPServer 12345 a/b\n\n x"
            ),
            [
                "Hello",
                " WORLD's",
                " Mc",
                "Donald",
                " HTTPServer",
                " ",
                "123",
                "45",
                " a",
                "/b",
                "\n\n",
                " x"
            ]
        );
        assert_eq!(
            words(PreTokenizer::Gpt4o, "\"ok\" ..//\n"),
            ["\"ok", "\"", " ..//\n"]
        );
    }

    #[test]
    fn classes() {
        assert_eq!(classify('é'), Class::Lower);
        assert_eq!(classify('É'), Class::Upper);
        assert_eq!(classify('我'), Class::Letter);
        assert_eq!(classify('\u{301}'), Class::Mark);
        assert_eq!(classify('½'), Class::Number);
        assert_eq!(classify('\u{3000}'), Class::Space);
        assert_eq!(classify('🦙'), Class::Other);
        assert_eq!(classify('～'), Class::Other);
        assert_eq!(classify('$'), Class::Other);
        assert_eq!(classify('.'), Class::Punct);
    }
}
