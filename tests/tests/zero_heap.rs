//! Invariant: after a session is created, prefill chunks and decode steps allocate nothing.
//! A counting global allocator watches 64 decode steps (forward pass and sampling) and a prefill
//! chunk, on one thread and on a pool of two (f16 and int8 KV caches). One test per binary, so
//! no other test's allocations are counted.

use edgellm_core::gguf::Gguf;
use edgellm_core::model::Model;
use edgellm_core::parallel::{Parallel, Serial};
use edgellm_core::sampler::{Sampler, SamplerParams};
use edgellm_core::session::{KvType, NumericPath, Session, SessionOptions};
use edgellm_hal::counters::CountingAlloc;
use edgellm_hal::pool::ThreadPool;
use edgellm_kernels::Kernels;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

fn check(
    model: &Model<'_>,
    kernels: &Kernels,
    par: &dyn Parallel,
    (path, kv): (NumericPath, KvType),
    (prompt_len, steps): (u32, usize),
    label: &str,
) {
    let opts = SessionOptions { context: 256, path };
    let mut session = Session::with_kv(model, *kernels, opts, kv).unwrap();
    let params = SamplerParams {
        temperature: 0.7,
        seed: 7,
        ..SamplerParams::default()
    };
    let mut sampler = Sampler::new(params, model.config.vocab_size).unwrap();
    let prompt: Vec<u32> = (0..prompt_len).map(|i| 100 + i * 37).collect();
    // Warm up once: first touches of weights and buffers happen here.
    session.prefill(&prompt[..8], par).unwrap();
    session.reset();

    let before = CountingAlloc::stats();
    session.prefill(&prompt, par).unwrap();
    let mut tok = sampler.sample(session.logits());
    for _ in 0..steps {
        sampler.accept(tok);
        session.forward(tok, par).unwrap();
        tok = sampler.sample(session.logits());
    }
    let used = CountingAlloc::stats().since(&before);
    assert_eq!(
        used.heap_operations(),
        0,
        "{label}: prefill of {prompt_len} tokens and {steps} decode steps made heap operations: \
         {used:?}"
    );
}

#[test]
fn decode_and_prefill_allocate_nothing() {
    let Some(path) = edgellm_tests::smollm2_path() else {
        return;
    };
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: read-only private map of a file nobody rewrites during the test.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let g = Gguf::parse(&map).unwrap();
    let kernels = Kernels::detect();
    let model = Model::from_gguf(&g, &kernels).unwrap();
    let fast = (NumericPath::Fast, KvType::F16);
    let full = (32, 64);
    check(&model, &kernels, &Serial, fast, full, "1 thread");
    let pool = ThreadPool::new(2, None).unwrap();
    check(&model, &kernels, &pool, fast, full, "2 threads");
    let int8 = (NumericPath::Fast, KvType::Int8);
    check(
        &model,
        &kernels,
        &pool,
        int8,
        full,
        "2 threads, int8 KV cache",
    );
    // The exact path is many times slower: fewer steps, so that the whole test stays well under
    // the test harness's 60-second notice, whose message (from another thread) this global
    // allocator would count.
    let exact = (NumericPath::Exact, KvType::F32);
    check(&model, &kernels, &Serial, exact, (16, 16), "exact path");
}
