//! Criterion benchmarks of single operations, ours and the plain baselines, per backend.
//!
//! ```text
//! cargo bench --bench ops                                   # SQLite
//! DIESEL_L2_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench ops --features postgres
//! cargo bench --bench ops -- 'sqlite/'                       # a filter, as usual with criterion
//! ```
//!
//! The side-by-side ratios and targets are in the `compare` bench; these give criterion's
//! confidence intervals for each operation on its own. `DIESEL_L2_BENCH_QUICK=1` shortens
//! every measurement.

mod support;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use diesel_l2::CachedOps;
use moka::sync::Cache;

use support::{random_ids, BenchDb, BenchRow, PoolOptions, Raw};

const ROWS: i64 = 100_000;

fn rows() -> i64 {
    if support::quick() {
        10_000
    } else {
        ROWS
    }
}

fn config() -> Criterion {
    let c = Criterion::default();
    if support::quick() {
        c.warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(300))
            .sample_size(10)
    } else {
        c.warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
    }
}

/// Every benchmark of one backend, named `<backend>/<operation>`.
fn backend<C>(c: &mut Criterion, name: &str, bdb: &BenchDb<C>)
where
    C: Raw,
    BenchRow: CachedOps<C>,
{
    let rows = rows();
    let pool = bdb.pool(PoolOptions::default(), None);
    let (db, moka) = support::cached_pair(pool.clone(), rows);
    let keys = random_ids(1 << 16, rows, 1);
    let mask = keys.len() - 1;
    let mut g = c.benchmark_group(name);

    let mut i = 0;
    g.bench_function("find_hit", |b| {
        b.iter(|| {
            i += 1;
            black_box(db.find::<BenchRow>(keys[i & mask]).expect("find"))
        })
    });
    g.bench_function("moka_get_arc_clone", |b| {
        b.iter(|| {
            i += 1;
            black_box(moka.get(&keys[i & mask]))
        })
    });
    g.bench_function("diesel_point_select", |b| {
        b.iter(|| {
            i += 1;
            let mut conn = pool.get().expect("checkout");
            black_box(conn.select_one(keys[i & mask]).expect("select"))
        })
    });
    let first: Vec<i64> = keys[..1000].to_vec();
    g.bench_function("find_many_1000_hits", |b| {
        b.iter(|| black_box(db.find_many::<BenchRow>(&first).expect("find_many")))
    });
    g.bench_function("diesel_eq_any_select_1000", |b| {
        b.iter(|| {
            let mut conn = pool.get().expect("checkout");
            black_box(conn.select_many(&first).expect("select"))
        })
    });

    // Writes: ours on the lower half of the table, the plain UPDATE on the upper half.
    let half = rows / 2;
    g.bench_function("tx_update", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                i += 1;
                let id = keys[i & mask] % half + 1;
                let mut next = (*db.find::<BenchRow>(id).expect("find").expect("row")).clone();
                next.score += 1;
                let t = std::time::Instant::now();
                black_box(db.transaction(|tx| tx.update(&next)).expect("update"));
                took += t.elapsed();
            }
            took
        })
    });
    let mut current: HashMap<i64, BenchRow> = HashMap::new();
    g.bench_function("diesel_versioned_update_tx", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                i += 1;
                let id = keys[i & mask] % half + half + 1;
                let mut conn = pool.get().expect("checkout");
                let mut next = match current.get(&id) {
                    Some(r) => r.clone(),
                    None => conn.select_one(id).expect("select").expect("row"),
                };
                drop(conn);
                next.score += 1;
                let t = std::time::Instant::now();
                let mut conn = pool.get().expect("checkout");
                let stored = conn.versioned_update(&next).expect("update").expect("row");
                drop(conn);
                took += t.elapsed();
                current.insert(id, stored);
            }
            took
        })
    });
    g.finish();
}

/// The moka operations the write and fill paths are made of, on a cache holding 100,000
/// rows, with and without an eviction listener (which makes moka lock each key it writes):
/// the numbers behind the recommendations in BENCHMARKS.md.
fn moka_store(c: &mut Criterion) {
    let rows = rows();
    let value = Arc::new([7u8; 300]);
    let keys = random_ids(1 << 16, rows, 9);
    let mut g = c.benchmark_group("moka_store");
    for listener in [false, true] {
        let mut b = Cache::builder().max_capacity(2_000_000);
        if listener {
            b = b.eviction_listener(|_: Arc<i64>, _: Arc<[u8; 300]>, _| {});
        }
        let cache: Cache<i64, Arc<[u8; 300]>> = b.build();
        for id in 1..=rows {
            cache.insert(id, Arc::clone(&value));
        }
        let tag = if listener {
            "with_listener"
        } else {
            "no_listener"
        };
        let mut i = 0;
        // Each timed operation runs on a batch of 1,000 random keys prepared untimed.
        let mut batch = |prepare: &dyn Fn(i64), op: &dyn Fn(i64), iters: u64| {
            let mut took = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(1000) as usize;
                let ks: Vec<i64> = (0..n).map(|j| keys[(i + j) & (keys.len() - 1)]).collect();
                i += n;
                ks.iter().for_each(|&k| prepare(k));
                let t = std::time::Instant::now();
                ks.iter().for_each(|&k| op(k));
                took += t.elapsed();
                left -= n as u64;
            }
            took
        };
        g.bench_function(format!("{tag}/invalidate"), |b| {
            b.iter_custom(|n| {
                batch(
                    &|k| cache.insert(k, Arc::clone(&value)),
                    &|k| cache.invalidate(&k),
                    n,
                )
            })
        });
        g.bench_function(format!("{tag}/insert_absent"), |b| {
            b.iter_custom(|n| {
                batch(
                    &|k| cache.invalidate(&k),
                    &|k| cache.insert(k, Arc::clone(&value)),
                    n,
                )
            })
        });
        g.bench_function(format!("{tag}/insert_replace"), |b| {
            b.iter_custom(|n| {
                batch(
                    &|k| cache.insert(k, Arc::clone(&value)),
                    &|k| cache.insert(k, Arc::clone(&value)),
                    n,
                )
            })
        });
        g.bench_function(format!("{tag}/and_compute_with_absent"), |b| {
            b.iter_custom(|n| {
                batch(
                    &|k| cache.invalidate(&k),
                    &|k| {
                        let v = Arc::clone(&value);
                        cache.entry(k).and_compute_with(|e| match e {
                            None => moka::ops::compute::Op::Put(v),
                            Some(_) => moka::ops::compute::Op::Nop,
                        });
                    },
                    n,
                )
            })
        });
        g.bench_function(format!("{tag}/get_then_insert_absent"), |b| {
            b.iter_custom(|n| {
                batch(
                    &|k| cache.invalidate(&k),
                    &|k| {
                        if cache.get(&k).is_none() {
                            cache.insert(k, Arc::clone(&value));
                        }
                    },
                    n,
                )
            })
        });
    }
    g.finish();
}

fn sqlite(c: &mut Criterion) {
    let bdb = support::sqlite(rows());
    backend(c, "sqlite", &bdb);
}

#[cfg(feature = "postgres")]
fn postgres(c: &mut Criterion) {
    match support::postgres(rows()) {
        Some(bdb) => backend(c, "postgres", &bdb),
        None => eprintln!("postgres: SKIPPED (set DIESEL_L2_PG_URL)"),
    }
}

#[cfg(not(feature = "postgres"))]
fn postgres(_: &mut Criterion) {}

criterion_group! {
    name = benches;
    config = config();
    targets = moka_store, sqlite, postgres
}
criterion_main!(benches);
