//! Data-parallel workers: `n` copies of one job, each on its own single-threaded rayon pool, kept
//! for the life of the process.
//!
//! A worker must have a pool of its own, not only a thread: the models' custom ops (fused
//! LayerNorm, softmax, GELU, batched matmuls) split their loops with rayon, and from a plain thread
//! those loops would queue on the one global pool, which both workers share, and run one after the
//! other. Inside `pool.install` they run on the worker's own thread. Pair with
//! `RAYON_NUM_THREADS=1 CANDLE_NUM_THREADS=1` (candle's gemm and elementwise threads) so that each
//! worker keeps to one core.

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::{Error, Result};

static POOLS: Mutex<Vec<Arc<ThreadPool>>> = Mutex::new(Vec::new());

/// The first `n` worker pools, built on first use.
fn pools(n: usize) -> Result<Vec<Arc<ThreadPool>>> {
    let mut pools = POOLS.lock().map_err(|_| Error::Optim("a data-parallel worker panicked earlier".into()))?;
    while pools.len() < n {
        let i = pools.len();
        let pool = ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(move |_| format!("superlora-worker-{i}"))
            .build()
            .map_err(|e| Error::Optim(format!("starting data-parallel worker {i}: {e}")))?;
        pools.push(Arc::new(pool));
    }
    Ok(pools[..n].to_vec())
}

static SHARED: Mutex<Vec<(usize, Arc<ThreadPool>)>> = Mutex::new(Vec::new());

/// `job` on one pool of `n` threads (built on first use and kept), so that the serial parts of a
/// data-parallel step (the adapter's tape forward and backward, the optimizer) use every core
/// the workers use, not the one-thread global pool `--workers` asks for (`RAYON_NUM_THREADS=1`).
/// With n ≤ 1 `job` runs on the calling thread. Results do not depend on n: every parallel loop
/// of the tape and the optimizer sums in a fixed order.
pub fn on_all<T: Send>(n: usize, job: impl FnOnce() -> T + Send) -> Result<T> {
    if n <= 1 {
        return Ok(job());
    }
    let pool = {
        let mut shared = SHARED.lock().map_err(|_| Error::Optim("a data-parallel step panicked earlier".into()))?;
        match shared.iter().find(|(k, _)| *k == n) {
            Some((_, p)) => p.clone(),
            None => {
                let pool = ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("superlora-step-{i}"))
                    .build()
                    .map_err(|e| Error::Optim(format!("starting the step's {n} threads: {e}")))?;
                let pool = Arc::new(pool);
                shared.push((n, pool.clone()));
                pool
            }
        }
    };
    Ok(pool.install(job))
}

/// `job(i)` for i in 0..n, each on worker i at the same time; the results in order. With n = 1 the
/// job runs on the calling thread (the plain, single-graph path).
pub fn on_workers<T: Send>(n: usize, job: impl Fn(usize) -> T + Sync) -> Result<Vec<T>> {
    if n <= 1 {
        return Ok((0..n).map(&job).collect());
    }
    let pools = pools(n)?;
    let job = &job;
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            pools.iter().enumerate().map(|(i, pool)| scope.spawn(move || pool.install(|| job(i)))).collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| h.join().map_err(|_| Error::Optim(format!("data-parallel worker {i} panicked"))))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_runs_its_job_once_in_order_on_its_own_thread() {
        let out = on_workers(3, |i| (i * 10, std::thread::current().name().map(str::to_string))).unwrap();
        let ids: Vec<usize> = out.iter().map(|(v, _)| *v).collect();
        assert_eq!(ids, vec![0, 10, 20]);
        let names: Vec<String> = out.into_iter().map(|(_, n)| n.unwrap()).collect();
        assert_eq!(names, vec!["superlora-worker-0", "superlora-worker-1", "superlora-worker-2"]);
        // Inside a worker, rayon sees one thread: the worker's own.
        let threads = on_workers(2, |_| rayon::current_num_threads()).unwrap();
        assert_eq!(threads, vec![1, 1]);
    }

    #[test]
    fn on_all_runs_once_on_n_threads() {
        assert_eq!(on_all(3, rayon::current_num_threads).unwrap(), 3);
        // `install` runs the job on whichever of the pool's threads is free.
        let name = on_all(3, || std::thread::current().name().map(str::to_string)).unwrap().unwrap();
        assert!(name.starts_with("superlora-step-"), "ran on {name}");
        assert_eq!(on_all(1, || 7).unwrap(), 7);
    }

    #[test]
    fn a_panicking_worker_is_an_error_and_the_pools_still_work() {
        let r = on_workers(2, |i| if i == 1 { panic!("worker 1 fails") } else { i });
        assert!(matches!(r, Err(Error::Optim(m)) if m.contains("worker 1")));
        assert_eq!(on_workers(2, |i| i + 1).unwrap(), vec![1, 2]);
    }

    #[test]
    fn one_worker_runs_on_the_calling_thread() {
        let me = std::thread::current().id();
        assert_eq!(on_workers(1, |_| std::thread::current().id()).unwrap(), vec![me]);
        assert!(on_workers(0, |i| i).unwrap().is_empty());
    }
}
