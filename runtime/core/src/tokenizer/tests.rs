//! Tokenizer behaviour on small hand-made vocabularies (the real ones are tested in `tests/`).

use super::*;
use alloc::format;
use alloc::string::ToString;
use alloc::vec;

/// Byte-level BPE: the 256 byte tokens (id = byte), then merged tokens, then specials.
fn bpe_vocab() -> Tokenizer {
    let mut owned: Vec<String> = (0..=255u8)
        .map(|b| bpe::byte_to_char(b).to_string())
        .collect();
    for t in [
        "he",
        "ll",
        "hell",
        "hello",
        "Ġh",
        "Ġhello",
        "<|end|>",
        "<tool>",
        "<|im_start|>",
    ] {
        owned.push(t.into());
    }
    let tokens: Vec<&str> = owned.iter().map(|s| s.as_str()).collect();
    let mut types = vec![1; tokens.len()];
    let n = types.len();
    types[n - 3] = 3;
    types[n - 2] = 4;
    types[n - 1] = 3;
    let spec = VocabSpec {
        model: "gpt2",
        pre: Some("gpt-2"),
        tokens,
        token_types: Some(types),
        merges: vec!["l l", "h e", "he ll", "hell o", "Ġ h", "Ġh ello", "Ġ hello"],
        bos: Some(n as u32 - 1),
        eos: Some(n as u32 - 3),
        add_bos: Some(false),
        ..VocabSpec::default()
    };
    Tokenizer::from_spec(&spec).unwrap()
}

fn enc(t: &Tokenizer, text: &str, special: bool) -> Vec<u32> {
    let mut out = Vec::new();
    t.encode(text, special, &mut out);
    out
}

#[test]
fn bpe_merges_by_rank() {
    let t = bpe_vocab();
    let hello = t.token_id("hello").unwrap();
    assert_eq!(enc(&t, "hello", false), [hello]);
    // "h e" outranks "Ġ h", so " hello" never forms "Ġh": it ends as "Ġ" + "hello" merged.
    let ghello = t.token_id("Ġhello").unwrap();
    assert_eq!(enc(&t, " hello", false), [ghello]);
    assert_eq!(t.token_bytes(ghello), b" hello");
    let gh = t.token_id("Ġh").unwrap();
    assert_eq!(enc(&t, " h", false), [gh]);
    let ll = t.token_id("ll").unwrap();
    assert_eq!(
        enc(&t, "hel lo", false),
        [t.token_id("he").unwrap(), 108, 32, 108, 111]
    );
    assert_eq!(enc(&t, "lll", false), [ll, 108]);
    assert_eq!(enc(&t, "", false), []);
}

#[test]
fn bpe_specials() {
    let t = bpe_vocab();
    let end = t.token_id("<|end|>").unwrap();
    let tool = t.token_id("<tool>").unwrap();
    let start = t.token_id("<|im_start|>").unwrap();
    assert_eq!(
        enc(&t, "a<|end|>b", true),
        [u32::from(b'a'), end, u32::from(b'b')]
    );
    let plain = enc(&t, "a<|end|>b", false);
    assert!(!plain.contains(&end));
    let bytes: Vec<u8> = plain
        .iter()
        .flat_map(|&i| t.token_bytes(i))
        .copied()
        .collect();
    assert_eq!(bytes, b"a<|end|>b");
    // User-defined tokens are matched either way.
    assert_eq!(enc(&t, "<tool><tool>", false), [tool, tool]);
    assert_eq!(
        enc(&t, "<|im_start|>hello", true),
        [start, t.token_id("hello").unwrap()]
    );

    assert!(t.is_control(end) && t.is_end_of_generation(end));
    assert!(!t.is_end_of_generation(start) && !t.is_end_of_generation(tool));
    assert_eq!(t.token_bytes(end), b"<|end|>");
    assert_eq!(t.eos_id(), Some(end));
    assert!(!t.add_bos());
}

#[test]
fn bpe_ignore_merges_takes_whole_words() {
    let mut owned: Vec<String> = (0..=255u8)
        .map(|b| bpe::byte_to_char(b).to_string())
        .collect();
    owned.extend(["ab".to_string(), "bc".to_string(), "abc".to_string()]);
    let tokens: Vec<&str> = owned.iter().map(|s| s.as_str()).collect();
    let spec = |pre| VocabSpec {
        model: "gpt2",
        pre: Some(pre),
        tokens: tokens.clone(),
        merges: vec!["b c", "a b"],
        ..VocabSpec::default()
    };
    let llama3 = Tokenizer::from_spec(&spec("llama-bpe")).unwrap();
    let gpt2 = Tokenizer::from_spec(&spec("gpt-2")).unwrap();
    let (bc, abc) = (
        llama3.token_id("bc").unwrap(),
        llama3.token_id("abc").unwrap(),
    );
    assert_eq!(enc(&llama3, "abc", false), [abc]);
    assert_eq!(enc(&gpt2, "abc", false), [u32::from(b'a'), bc]);
}

fn spm_vocab(add_space_prefix: Option<bool>) -> Tokenizer {
    let mut owned: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    owned.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let mut types = vec![2, 3, 3];
    types.extend([6; 256]);
    let mut scores = vec![0.0f32; owned.len()];
    for (t, s) in [
        ("▁", -1.0),
        ("h", -5.0),
        ("e", -5.0),
        ("l", -5.0),
        ("o", -5.0),
        ("he", -3.0),
        ("ll", -2.0),
        ("llo", -2.5),
        ("▁he", -1.5),
        ("▁hello", -1.0),
    ] {
        owned.push(t.into());
        types.push(1);
        scores.push(s);
    }
    let tokens: Vec<&str> = owned.iter().map(|s| s.as_str()).collect();
    let spec = VocabSpec {
        model: "llama",
        tokens,
        token_types: Some(types),
        scores: Some(scores),
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        add_space_prefix,
        ..VocabSpec::default()
    };
    Tokenizer::from_spec(&spec).unwrap()
}

#[test]
fn spm_merges_by_score_with_byte_fallback() {
    let t = spm_vocab(None);
    assert!(t.add_bos());
    let id = |s| t.token_id(s).unwrap();
    // ll (-2), then llo (-2.5), he (-3), ▁he (-1.5) and ▁hello (-1).
    assert_eq!(enc(&t, "hello", false), [id("▁hello")]);
    // ll, then he; "▁he" and "llo" cannot meet across the space.
    assert_eq!(enc(&t, "he llo", false), [id("▁he"), id("▁"), id("llo")]);
    // é has no token: its two UTF-8 bytes.
    assert_eq!(enc(&t, "é", false), [id("▁"), id("<0xC3>"), id("<0xA9>")]);
    let bytes: Vec<u8> = enc(&t, "hello é", false)
        .iter()
        .flat_map(|&i| t.token_bytes(i))
        .copied()
        .collect();
    assert_eq!(bytes, " hello é".as_bytes());
    assert_eq!(t.token_bytes(0), "\u{2585}".as_bytes());
    assert!(t.is_end_of_generation(2));
}

#[test]
fn spm_space_prefix_after_specials() {
    let t = spm_vocab(None);
    let id = |s| t.token_id(s).unwrap();
    assert_eq!(enc(&t, "</s>he", true), [2, id("▁he")]);
    assert_eq!(enc(&t, "</s>he", false)[0], id("▁"));
    let t = spm_vocab(Some(false));
    assert_eq!(enc(&t, "he", false), [id("he")]);
}

#[test]
fn bad_vocabularies_are_errors() {
    let spec = VocabSpec {
        model: "gpt2",
        pre: Some("nope"),
        tokens: vec!["a"],
        ..Default::default()
    };
    assert_eq!(
        Tokenizer::from_spec(&spec).unwrap_err(),
        TokenizerError::UnsupportedPreTokenizer("nope".into())
    );
    let spec = VocabSpec {
        model: "bert",
        tokens: vec!["a"],
        ..Default::default()
    };
    assert!(matches!(
        Tokenizer::from_spec(&spec),
        Err(TokenizerError::UnsupportedModel(_))
    ));
    let spec = VocabSpec {
        model: "llama",
        tokens: vec!["a"],
        eos: Some(5),
        ..Default::default()
    };
    assert!(matches!(
        Tokenizer::from_spec(&spec),
        Err(TokenizerError::IdOutOfRange { .. })
    ));
    let spec = VocabSpec {
        model: "llama",
        tokens: vec!["a", "b"],
        scores: Some(vec![0.0]),
        ..Default::default()
    };
    assert!(matches!(
        Tokenizer::from_spec(&spec),
        Err(TokenizerError::LengthMismatch { .. })
    ));
    let spec = VocabSpec {
        model: "llama",
        tokens: vec!["a"],
        token_types: Some(vec![9]),
        ..Default::default()
    };
    assert!(matches!(
        Tokenizer::from_spec(&spec),
        Err(TokenizerError::BadTokenType { .. })
    ));
    let spec = VocabSpec {
        model: "llama",
        tokens: vec![],
        ..Default::default()
    };
    assert!(matches!(
        Tokenizer::from_spec(&spec),
        Err(TokenizerError::BadVocabSize(0))
    ));
}

#[test]
fn out_of_range_ids_are_empty() {
    let t = bpe_vocab();
    let n = t.vocab_size() as u32;
    assert_eq!(t.token_bytes(n), b"");
    assert_eq!(t.token_text(u32::MAX), "");
    assert!(!t.is_control(n));
}
