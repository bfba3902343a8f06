//! Parallel loops of a forward pass on workers that poll for them instead of sleeping.
//!
//! A pass is a few hundred parallel loops (matrix products, attention, activations) with
//! short serial stretches between them (norms, RoPE, residual adds): a one-token step of
//! the default model is about 200 loops of 20 µs each. Through rayon, an idle worker
//! goes to sleep a few microseconds after its last job, a thread waiting for a stolen
//! half goes to sleep too, and waking either costs about 20 µs on the 2-vCPU machines we
//! measure on (the host has to run a halted vCPU again): a loop of 20 µs of serial work
//! and 20 µs of parallel work took 60 µs a round instead of 40. llama.cpp's thread pool
//! polls between its graph's operations for the same reason (`--poll`).
//!
//! `PollingWorkers` (held through a pass) gives each other worker of the current rayon
//! pool a job that polls one word: `for_each_index` on the pass's thread publishes a
//! loop there, and every worker, the caller included, claims its indices one at a time.
//! While no loop is published the workers run the pool's other jobs (`rayon::yield_now`),
//! so rayon loops started during the pass still find them. Which thread computes an
//! index changes; what it computes does not.

use rayon::prelude::*;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The published loop, in one word so that a claim checks all of it at once: which loop
/// (it changes with every loop, so a late worker cannot claim from the next one), how
/// many indices it has, and the next index to claim.
const INDEX_BITS: u32 = 20;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// Loops of more indices than this go through rayon.
const MAX_INDICES: usize = INDEX_MASK as usize;

fn word(generation: u64, len: usize, next: usize) -> u64 {
    generation << (2 * INDEX_BITS) | (len as u64) << INDEX_BITS | next as u64
}

fn generation(w: u64) -> u64 {
    w >> (2 * INDEX_BITS)
}

/// The next index of the published loop, if it has one left.
fn unclaimed(w: u64) -> Option<usize> {
    let (len, next) = ((w >> INDEX_BITS) & INDEX_MASK, w & INDEX_MASK);
    (next < len).then_some(next as usize)
}

/// The loop a pass's workers share.
struct Team {
    published: AtomicU64,
    /// The loop's body: a `&(dyn Fn(usize) + Sync)` on the publishing thread's stack,
    /// alive until every index is done. Read only after claiming an index of that loop.
    body: AtomicPtr<()>,
    /// Indices done, of the published loop.
    done: AtomicUsize,
    /// Whether an index panicked (the publisher panics in turn, after the loop).
    panicked: AtomicBool,
    /// The pass is over: the workers return to the pool.
    over: AtomicBool,
}

type Body<'a> = &'a (dyn Fn(usize) + Sync);

impl Team {
    /// The next index of loop `generation`, if one is left.
    fn claim(&self, generation_wanted: u64) -> Option<usize> {
        let mut w = self.published.load(Ordering::Acquire);
        loop {
            let next = unclaimed(w).filter(|_| generation(w) == generation_wanted)?;
            match self.published.compare_exchange_weak(
                w,
                w + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(next),
                Err(now) => w = now,
            }
        }
    }

    /// Runs claimed indices of loop `generation` until none is left.
    fn work(&self, generation: u64) {
        while let Some(i) = self.claim(generation) {
            // SAFETY: an index of this loop is claimed and not yet counted done, so its
            // publisher is still waiting and the body it points to is alive.
            let body: Body = unsafe { *(self.body.load(Ordering::Acquire) as *const Body) };
            if catch_unwind(AssertUnwindSafe(|| body(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    /// A worker's poll until the pass is over.
    fn poll(&self) {
        while !self.over.load(Ordering::Acquire) {
            let w = self.published.load(Ordering::Acquire);
            if unclaimed(w).is_some() {
                self.work(generation(w));
            } else if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    }

    /// Publishes `body` over `0..len`, works on it, and returns once every index is done.
    fn run(&self, len: usize, body: Body) {
        let generation = generation(self.published.load(Ordering::Relaxed)) + 1;
        self.done.store(0, Ordering::Relaxed);
        self.body
            .store(&body as *const Body as *mut (), Ordering::Relaxed);
        self.published
            .store(word(generation, len, 0), Ordering::Release);
        self.work(generation);
        while self.done.load(Ordering::Acquire) < len {
            std::hint::spin_loop();
        }
        if self.panicked.swap(false, Ordering::Relaxed) {
            resume_unwind(Box::new("a task of a parallel loop panicked"));
        }
    }
}

thread_local! {
    /// The team of the pass this thread runs, if it holds a `PollingWorkers` (none
    /// while it runs one of the team's loops).
    static TEAM: Cell<Option<*const Team>> = const { Cell::new(None) };
    /// Whether this thread holds a `PollingWorkers`.
    static IN_PASS: Cell<bool> = const { Cell::new(false) };
}

/// While alive, the other workers of the current rayon pool poll for the loops of
/// `for_each_index` on this thread. Outside a pool's worker thread, in a pool of one
/// thread, or inside another `PollingWorkers`, it does nothing.
pub struct PollingWorkers {
    team: Option<Arc<Team>>,
}

impl PollingWorkers {
    /// Starts the polling; it ends when the guard is dropped.
    pub fn start() -> PollingWorkers {
        let idle = PollingWorkers { team: None };
        let Some(caller) = rayon::current_thread_index() else {
            return idle;
        };
        if rayon::current_num_threads() < 2 || IN_PASS.with(Cell::get) {
            return idle;
        }
        let team = Arc::new(Team {
            published: AtomicU64::new(0),
            body: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            over: AtomicBool::new(false),
        });
        let polled = team.clone();
        rayon::spawn_broadcast(move |worker| {
            // The caller's own copy runs when it next waits on a rayon job, or after
            // the pass: it must not poll. Nor may a worker in a pass of its own (two
            // passes at once on one pool), which it would not finish while polling.
            if worker.index() != caller && !IN_PASS.with(Cell::get) {
                polled.poll();
            }
        });
        TEAM.with(|t| t.set(Some(Arc::as_ptr(&team))));
        IN_PASS.with(|p| p.set(true));
        PollingWorkers { team: Some(team) }
    }
}

impl Drop for PollingWorkers {
    fn drop(&mut self) {
        if let Some(team) = &self.team {
            team.over.store(true, Ordering::Release);
            TEAM.with(|t| t.set(None));
            IN_PASS.with(|p| p.set(false));
        }
    }
}

/// Runs `body(i)` for every `i` in `0..len` on all threads: through the polling workers
/// where this thread holds a `PollingWorkers` (a loop started inside `body` runs through
/// rayon), through rayon otherwise.
pub fn for_each_index(len: usize, body: impl Fn(usize) + Sync + Send) {
    let team = TEAM.with(Cell::get);
    match team {
        Some(team) if len <= MAX_INDICES && len > 1 => {
            TEAM.with(|t| t.set(None));
            // SAFETY: the team outlives the guard that set it, and the guard is on
            // this thread's stack below this call.
            let result = catch_unwind(AssertUnwindSafe(|| unsafe { &*team }.run(len, &body)));
            TEAM.with(|t| t.set(Some(team)));
            if let Err(panic) = result {
                resume_unwind(panic);
            }
        }
        _ => (0..len).into_par_iter().for_each(body),
    }
}

/// `body(item)` for every item of `items` on all threads, as `for_each_index` runs
/// indices (each item is borrowed by one thread at a time).
pub fn for_each_mut<T: Send>(items: &mut [T], body: impl Fn(&mut T) + Sync + Send) {
    let cells: Vec<Mutex<&mut T>> = items.iter_mut().map(Mutex::new).collect();
    for_each_index(cells.len(), |i| {
        body(&mut cells[i].lock().unwrap_or_else(|e| e.into_inner()))
    });
}

/// `body(scratch, i)` for every `i` in `0..len` on all threads, as `for_each_index`
/// runs them, collected in order; each thread takes a scratch of `init`'s for the
/// indices it runs (as rayon's `map_init`).
pub fn map_indices<T: Send, S: Send>(
    len: usize,
    init: impl Fn() -> S + Sync + Send,
    body: impl Fn(&mut S, usize) -> T + Sync + Send,
) -> Vec<T> {
    if TEAM.with(Cell::get).is_none() {
        return (0..len)
            .into_par_iter()
            .map_init(init, |scratch, i| body(scratch, i))
            .collect();
    }
    // One scratch per worker of the pool (every thread of the team is one).
    let scratches: Vec<Mutex<Option<S>>> = (0..rayon::current_num_threads())
        .map(|_| Mutex::new(None))
        .collect();
    let slots: Vec<Mutex<Option<T>>> = (0..len).map(|_| Mutex::new(None)).collect();
    for_each_index(len, |i| {
        let worker = rayon::current_thread_index().unwrap_or(0) % scratches.len();
        let mut scratch = scratches[worker].lock().unwrap_or_else(|e| e.into_inner());
        let value = body(scratch.get_or_insert_with(&init), i);
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
    });
    slots
        .into_iter()
        .map(|slot| {
            let value = slot.into_inner().unwrap_or_else(|e| e.into_inner());
            value.expect("every index ran")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a pool")
    }

    /// Each index once, `rounds` loops of `len` indices: the sums of what each saw.
    fn loops(rounds: usize, len: usize) -> Vec<usize> {
        (0..rounds)
            .map(|round| {
                let seen = Mutex::new(vec![0usize; len]);
                for_each_index(len, |i| seen.lock().unwrap()[i] += round + 1);
                let seen = seen.into_inner().unwrap();
                assert!(seen.iter().all(|&s| s == round + 1), "{seen:?}");
                seen.iter().sum()
            })
            .collect()
    }

    #[test]
    fn every_index_runs_once_whether_workers_poll_or_not() {
        for threads in [1, 2, 3] {
            let pool = pool(threads);
            let polled = pool.install(|| {
                let _polling = PollingWorkers::start();
                loops(300, 37)
            });
            let plain = pool.install(|| loops(300, 37));
            assert_eq!(polled, plain, "{threads} threads");
            // The workers were released: the pool still runs jobs.
            assert_eq!(pool.install(|| (0..10u32).into_par_iter().sum::<u32>()), 45);
        }
        // Outside a pool, through rayon's global pool.
        let _polling = PollingWorkers::start();
        assert_eq!(loops(3, 5), vec![5, 10, 15]);
    }

    #[test]
    fn every_item_is_changed_once() {
        for threads in [1, 2, 3] {
            let pool = pool(threads);
            let mut items: Vec<u64> = (0..300).collect();
            pool.install(|| {
                let _polling = PollingWorkers::start();
                for_each_mut(&mut items, |v| *v = *v * 2 + 1);
            });
            let expected: Vec<u64> = (0..300).map(|v| v * 2 + 1).collect();
            assert_eq!(items, expected, "{threads} threads");
        }
    }

    #[test]
    fn mapped_values_come_back_in_order() {
        for threads in [1, 2, 3] {
            let pool = pool(threads);
            let squares = |polled: bool| {
                pool.install(|| {
                    let _polling = polled.then(PollingWorkers::start);
                    map_indices(
                        1000,
                        || 0usize,
                        |calls, i| {
                            *calls += 1;
                            (i * i, *calls >= 1)
                        },
                    )
                })
            };
            let want: Vec<(usize, bool)> = (0..1000).map(|i| (i * i, true)).collect();
            assert_eq!(squares(true), want, "{threads} threads");
            assert_eq!(squares(false), want, "{threads} threads");
        }
    }

    #[test]
    fn rayon_loops_inside_a_polled_pass_still_run() {
        let pool = pool(2);
        let sums = pool.install(|| {
            let _polling = PollingWorkers::start();
            let inner = Mutex::new(Vec::new());
            for_each_index(4, |i| {
                let s: u64 = (0..1000u64).into_par_iter().map(|v| v * i as u64).sum();
                inner.lock().unwrap().push(s);
            });
            let outer: u64 = (0..100u64).into_par_iter().sum();
            let mut inner = inner.into_inner().unwrap();
            inner.sort();
            (inner, outer)
        });
        assert_eq!(sums, (vec![0, 499_500, 999_000, 1_498_500], 4950));
    }

    #[test]
    fn two_passes_at_once_on_one_pool_both_finish() {
        let pool = pool(3);
        let (a, b) = pool.install(|| {
            rayon::join(
                || {
                    let _polling = PollingWorkers::start();
                    loops(200, 16)
                },
                || {
                    let _polling = PollingWorkers::start();
                    loops(200, 9)
                },
            )
        });
        assert_eq!(a, (1..=200).map(|r| 16 * r).collect::<Vec<_>>());
        assert_eq!(b, (1..=200).map(|r| 9 * r).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_index_panics_the_loop_not_the_pool() {
        let pool = pool(2);
        let caught = pool.install(|| {
            let _polling = PollingWorkers::start();
            let caught = catch_unwind(|| for_each_index(64, |i| assert_ne!(i, 40)));
            // The team still works after it.
            (caught.is_err(), loops(2, 8))
        });
        assert_eq!(caught, (true, vec![8, 16]));
    }
}
