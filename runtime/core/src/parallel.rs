//! How the forward pass runs work on several threads without knowing what a thread is.
//!
//! The core is `no_std`: it only sees this trait. The std layer (`edgellm-hal`) implements it with a
//! pool of pinned worker threads created once per session.

/// A fixed set of workers that can run one job on all of them at once.
///
/// Invariant: [`Parallel::run`] allocates nothing and returns only when every worker has finished.
pub trait Parallel: Sync {
    /// Number of workers (at least 1). Worker 0 is the calling thread.
    fn threads(&self) -> usize;

    /// Runs `job(i)` once for each worker index `i` in `0..self.threads()`, concurrently, and returns
    /// when all calls have returned.
    fn run(&self, job: &(dyn Fn(usize) + Sync));
}

/// One worker: the calling thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct Serial;

impl Parallel for Serial {
    fn threads(&self) -> usize {
        1
    }

    fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        job(0)
    }
}

/// The half-open range of `n` items that worker `i` of `threads` takes, in chunks of `align` items
/// (the last worker takes the remainder). Balanced to within one chunk.
pub fn split_range(n: usize, threads: usize, i: usize, align: usize) -> core::ops::Range<usize> {
    let align = align.max(1);
    let chunks = n.div_ceil(align);
    let threads = threads.max(1);
    let per = chunks / threads;
    let extra = chunks % threads;
    let start_chunk = i * per + i.min(extra);
    let end_chunk = start_chunk + per + usize::from(i < extra);
    (start_chunk * align).min(n)..(end_chunk * align).min(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_once() {
        for n in [0usize, 1, 7, 64, 576, 1000] {
            for threads in 1..5 {
                for align in [1usize, 4, 32] {
                    let mut next = 0;
                    for i in 0..threads {
                        let r = split_range(n, threads, i, align);
                        assert_eq!(r.start, next, "n={n} threads={threads} align={align}");
                        next = r.end;
                    }
                    assert_eq!(next, n);
                }
            }
        }
    }
}
