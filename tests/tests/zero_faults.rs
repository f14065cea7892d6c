//! Invariant: after warm-up, decoding takes no page fault: the arena (KV cache included) is
//! prefaulted when the session is created and the weights are resident after the first pass.
//! Measured with getrusage over 64 decode steps, for the decoding thread alone and for the whole
//! process with a pool of two workers (with the arena advised to use huge pages, as the app does).
//! One test per binary, so no other test's faults are counted.

use edgellm_core::gguf::Gguf;
use edgellm_core::model::Model;
use edgellm_core::parallel::{Parallel, Serial};
use edgellm_core::session::{KvType, NumericPath, Session, SessionOptions};
use edgellm_hal::counters::{page_faults, thread_page_faults};
use edgellm_hal::pool::ThreadPool;
use edgellm_kernels::Kernels;

fn decode(session: &mut Session<'_, '_>, par: &dyn Parallel, steps: usize) {
    let mut tok = 200;
    for _ in 0..steps {
        let logits = session.forward(tok, par).unwrap();
        tok = (logits
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0) as u32;
    }
}

#[test]
fn decode_takes_no_page_faults() {
    let Some(path) = edgellm_tests::smollm2_path() else {
        return;
    };
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: read-only private map of a file nobody rewrites during the test.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let g = Gguf::parse(&map).unwrap();
    let kernels = Kernels::detect();
    let model = Model::from_gguf(&g, &kernels).unwrap();
    let opts = SessionOptions {
        context: 512,
        path: NumericPath::Fast,
    };

    let mut session = Session::new(&model, kernels, opts).unwrap();
    decode(&mut session, &Serial, 4); // warm-up: weights paged in
    let before = thread_page_faults().unwrap();
    decode(&mut session, &Serial, 64);
    let faults = thread_page_faults().unwrap() - before;
    assert_eq!(
        faults, 0,
        "1 thread: {faults} page faults in 64 decode steps"
    );

    let pool = ThreadPool::new(2, None).unwrap();
    let advise = |arena: &mut [u8]| edgellm_hal::memory::advise_huge_pages(arena).unwrap();
    let mut session = Session::with_kv_advised(&model, kernels, opts, KvType::F16, advise).unwrap();
    decode(&mut session, &pool, 4);
    let before = page_faults().unwrap();
    decode(&mut session, &pool, 64);
    let faults = page_faults().unwrap() - before;
    assert_eq!(
        faults, 0,
        "2 threads: {faults} page faults in 64 decode steps (whole process)"
    );
}
