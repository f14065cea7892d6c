//! Pre-tokenizers against the published regexes, run by Python's `regex` module on random text
//! (`tests/data/pretok/gen.py` writes the cases).

use edgellm_core::tokenizer::PreTokenizer;
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn pre_tokenizers_match_their_regexes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/pretok/cases.json");
    let cases: BTreeMap<String, Vec<(String, Vec<String>)>> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("cases.json")).unwrap();
    let mut failures = 0;
    for (name, list) in &cases {
        let pre =
            PreTokenizer::from_name(name).unwrap_or_else(|| panic!("no pre-tokenizer {name}"));
        let mut passed = 0;
        for (text, want) in list {
            let got = pre.words(text);
            if got == *want {
                passed += 1;
            } else {
                failures += 1;
                if failures <= 20 {
                    println!("FAIL {name}: {text:?}\n  expected {want:?}\n  got      {got:?}");
                }
            }
        }
        println!("{name}: {passed}/{} pass", list.len());
    }
    assert_eq!(failures, 0);
}
