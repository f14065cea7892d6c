//! Streaming UTF-8 assembly for generated tokens: a character may span two or more tokens.
//!
//! Invariant: nothing here allocates. The only state is a 4-byte carry holding the incomplete start
//! of a character; invalid sequences become U+FFFD, one per maximal invalid subpart, as
//! `String::from_utf8_lossy` does.

use core::str;

const REPLACEMENT: &str = "\u{FFFD}";

/// Turns a stream of byte pieces (one per token) into valid UTF-8 text without allocating.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8Stream {
    carry: [u8; 4],
    len: u8,
}

/// The output buffer given to [`Utf8Stream::push`] is smaller than
/// [`Utf8Stream::max_output_len`] for the input; nothing was consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputTooSmall {
    /// Bytes the output buffer must hold for this input.
    pub needed: usize,
    /// Bytes it holds.
    pub found: usize,
}

impl core::fmt::Display for OutputTooSmall {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "UTF-8 stream output buffer holds {} bytes but {} may be written: size it with \
             Utf8Stream::max_output_len",
            self.found, self.needed
        )
    }
}

impl core::error::Error for OutputTooSmall {}

impl Utf8Stream {
    /// An empty stream.
    pub const fn new() -> Self {
        Utf8Stream {
            carry: [0; 4],
            len: 0,
        }
    }

    /// The most bytes [`push`](Self::push) can write for an input of `input_len` bytes: every
    /// input byte may become a 3-byte U+FFFD, and a carried partial character may complete.
    pub const fn max_output_len(input_len: usize) -> usize {
        3 * input_len + 4
    }

    /// Bytes of an incomplete character waiting for the next piece.
    pub fn pending(&self) -> &[u8] {
        &self.carry[..self.len as usize]
    }

    /// Feeds `bytes` and calls `emit` with each run of text that is now complete (zero or more
    /// calls; most runs borrow straight from `bytes`). An incomplete character at the end is kept
    /// for the next call.
    pub fn push_with(&mut self, bytes: &[u8], mut emit: impl FnMut(&str)) {
        let mut input = bytes;
        if self.len > 0 {
            let held = self.len as usize;
            let mut buf = self.carry;
            let take = (4 - held).min(input.len());
            buf[held..held + take].copy_from_slice(&input[..take]);
            let joined = &buf[..held + take];
            let consumed = match str::from_utf8(joined) {
                Ok(s) => {
                    emit(s);
                    take
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    if valid > 0 {
                        // The carried character completed (it is longer than the carry).
                        emit(as_str(&joined[..valid]));
                        valid - held
                    } else if let Some(bad) = e.error_len() {
                        // The carry is a valid prefix, so the invalid part covers all of it.
                        emit(REPLACEMENT);
                        bad.saturating_sub(held)
                    } else {
                        // Still incomplete: all of the input went into the carry.
                        self.carry = buf;
                        self.len = joined.len() as u8;
                        return;
                    }
                }
            };
            self.len = 0;
            input = &input[consumed..];
        }
        loop {
            match str::from_utf8(input) {
                Ok(s) => {
                    if !s.is_empty() {
                        emit(s);
                    }
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    if valid > 0 {
                        emit(as_str(&input[..valid]));
                    }
                    match e.error_len() {
                        Some(bad) => {
                            emit(REPLACEMENT);
                            input = &input[valid + bad..];
                        }
                        None => {
                            let rest = &input[valid..];
                            self.carry[..rest.len()].copy_from_slice(rest);
                            self.len = rest.len() as u8;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Feeds `bytes` and returns the text completed so far, written into `out`, which must hold
    /// [`max_output_len`](Self::max_output_len)`(bytes.len())` bytes.
    pub fn push<'b>(&mut self, bytes: &[u8], out: &'b mut [u8]) -> Result<&'b str, OutputTooSmall> {
        let needed = Self::max_output_len(bytes.len());
        if out.len() < needed {
            return Err(OutputTooSmall {
                needed,
                found: out.len(),
            });
        }
        let mut n = 0;
        self.push_with(bytes, |s| {
            out[n..n + s.len()].copy_from_slice(s.as_bytes());
            n += s.len();
        });
        Ok(as_str(&out[..n]))
    }

    /// Ends the stream: an incomplete character left over becomes U+FFFD (returned), and the
    /// stream is empty again.
    pub fn finish(&mut self) -> &'static str {
        let had = self.len > 0;
        self.len = 0;
        if had {
            REPLACEMENT
        } else {
            ""
        }
    }
}

/// Bytes already checked by `str::from_utf8` (or copied from checked `str`s).
fn as_str(b: &[u8]) -> &str {
    // Re-checking keeps this module free of `unsafe`; the slices are short.
    str::from_utf8(b).unwrap_or(REPLACEMENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;

    fn run(pieces: &[&[u8]]) -> (String, Vec<String>) {
        let mut s = Utf8Stream::new();
        let mut all = String::new();
        let mut per = Vec::new();
        let mut out = [0u8; 256];
        for p in pieces {
            let t = s.push(p, &mut out).unwrap();
            all.push_str(t);
            per.push(String::from(t));
        }
        all.push_str(s.finish());
        (all, per)
    }

    #[test]
    fn ascii_passes_through() {
        let (all, per) = run(&[b"Hello", b", ", b"world"]);
        assert_eq!(all, "Hello, world");
        assert_eq!(per, ["Hello", ", ", "world"]);
    }

    #[test]
    fn two_byte_char_split() {
        let e = "é".as_bytes();
        let (all, per) = run(&[b"caf", &e[..1], &e[1..], b"!"]);
        assert_eq!(all, "café!");
        assert_eq!(per, ["caf", "", "é", "!"]);
    }

    #[test]
    fn emoji_split_every_byte() {
        let b = "🦙".as_bytes();
        let (all, per) = run(&[&b[..1], &b[1..2], &b[2..3], &b[3..]]);
        assert_eq!(all, "🦙");
        assert_eq!(per, ["", "", "", "🦙"]);
    }

    #[test]
    fn emoji_split_with_text_after() {
        let b = "x😀y".as_bytes();
        let (all, per) = run(&[&b[..3], &b[3..]]);
        assert_eq!(all, "x😀y");
        assert_eq!(per, ["x", "😀y"]);
    }

    #[test]
    fn cjk_across_three_pieces() {
        let b = "我想".as_bytes();
        let (all, _) = run(&[&b[..2], &b[2..4], &b[4..]]);
        assert_eq!(all, "我想");
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let (all, _) = run(&[b"a\xffb", b"\x80"]);
        assert_eq!(all, "a\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn truncated_char_then_ascii() {
        // E2 82 is the start of a 3-byte character; 'A' breaks it.
        let (all, _) = run(&[b"\xe2\x82", b"A"]);
        assert_eq!(all, "\u{FFFD}A");
        assert_eq!(all, String::from_utf8_lossy(b"\xe2\x82A"));
    }

    #[test]
    fn truncated_at_end_is_flushed_by_finish() {
        let (all, per) = run(&[b"ok\xf0\x9f"]);
        assert_eq!(per, ["ok"]);
        assert_eq!(all, "ok\u{FFFD}");
    }

    #[test]
    fn matches_lossy_on_every_split() {
        let inputs: [&[u8]; 4] = [
            "ied 4 ½ months 🚀 😶‍🌫️ ✅ 我想在apple工作".as_bytes(),
            b"\xf0\x9f\x98\x81\xc3\x28\xe2\x28\xa1\xf0\x90\x28\xbc x",
            b"\xed\xa0\x80\xc0\xaf\xf4\x90\x80\x80\xe0\x80",
            b"\x80\x80\xf0\x9f\x9a",
        ];
        for input in inputs {
            let want = String::from_utf8_lossy(input);
            for cut1 in 0..=input.len() {
                for cut2 in cut1..=input.len() {
                    let (all, _) = run(&[&input[..cut1], &input[cut1..cut2], &input[cut2..]]);
                    assert_eq!(all, want, "cuts {cut1} {cut2} of {input:x?}");
                }
            }
        }
    }

    #[test]
    fn small_output_is_refused() {
        let mut s = Utf8Stream::new();
        let mut out = [0u8; 4];
        assert_eq!(
            s.push(b"abc", &mut out),
            Err(OutputTooSmall {
                needed: 13,
                found: 4
            })
        );
        assert!(s.pending().is_empty());
    }
}
