//! Decoding generated tokens allocates nothing: `token_bytes` and `Utf8Stream` under a counting
//! global allocator.

use edgellm_core::gguf::Gguf;
use edgellm_core::tokenizer::{Tokenizer, Utf8Stream};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's obligations for `layout` are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decoding_allocates_nothing() {
    let dir = match std::env::var_os("EDGELLM_MODEL_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/edgellm/models"),
    };
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        println!(
            "skipped: {} not found (set EDGELLM_MODEL_DIR)",
            path.display()
        );
        return;
    }
    let bytes = std::fs::read(&path).expect("reading model");
    let g = Gguf::parse(&bytes).expect("parsing model");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
    let text = "Héllo 🦙 wörld! 我想在apple工作 <|im_end|> ½ 😶‍🌫️\n\tdone";
    let mut ids = Vec::new();
    tok.encode(text, true, &mut ids);
    let mut out = vec![0u8; Utf8Stream::max_output_len(tok.max_token_bytes())];
    let mut decoded = [0u8; 256];
    let mut len = 0;

    COUNTING.store(true, Ordering::SeqCst);
    let mut stream = Utf8Stream::new();
    for &id in &ids {
        let _ = tok.is_end_of_generation(id) || tok.is_control(id);
        let piece = stream
            .push(tok.token_bytes(id), &mut out)
            .expect("buffer sized");
        decoded[len..len + piece.len()].copy_from_slice(piece.as_bytes());
        len += piece.len();
    }
    let tail = stream.finish();
    COUNTING.store(false, Ordering::SeqCst);

    assert_eq!(ALLOCATIONS.load(Ordering::SeqCst), 0, "decoding allocated");
    assert!(tail.is_empty());
    assert_eq!(std::str::from_utf8(&decoded[..len]).unwrap(), text);
}
