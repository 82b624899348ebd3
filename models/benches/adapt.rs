//! The board's adaptation maths, timed: one adapter step (Sinkhorn codes, the swapped-
//! prediction gradient and the update) at the default model's size, the per-frame cost of
//! applying the adapter and the statistics, the whitening refresh, and the adapter's memory.
//! The encoder's forward passes over the views are not in these figures (they are in the edge
//! bench). Prints a table and writes `target/bench/adapt-<arch>.json`; run it under
//! qemu-aarch64 with `./scripts/bench-adapt-aarch64`.
//!
//! `cargo bench -p models --bench adapt`

use std::path::Path;
use std::time::Instant;

use models::adapt::swapped::{self, unit_prototypes, SwappedParams};
use models::adapt::{EmbeddingStats, LinearAdapter, Recentring, RecentringKind};
use models::rng::Rng;

const DIM: usize = 128;
const CLUSTERS: usize = 10;
const BATCH: usize = 32;

fn gaussian(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.next_gaussian() as f32).collect()
}

/// Milliseconds per call: (median, p99, max) over `reps` timed calls.
fn time_ms(reps: usize, mut f: impl FnMut()) -> (f64, f64, f64) {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    let p99 = t[((reps as f64 * 0.99) as usize).min(reps - 1)];
    (t[reps / 2], p99, t[reps - 1])
}

fn main() {
    let mut rng = Rng::new(1);
    let protos = unit_prototypes(&gaussian(&mut rng, CLUSTERS * DIM), DIM);
    let v0 = gaussian(&mut rng, BATCH * DIM);
    let v1: Vec<f32> = v0
        .iter()
        .map(|v| v + 0.1 * rng.next_gaussian() as f32)
        .collect();
    let params = SwappedParams::default();
    let mut adapter = LinearAdapter::identity(DIM);
    let reps = 200;
    let step = time_ms(reps, || {
        swapped::step(&mut adapter, [&v0, &v1], &protos, &params);
    });
    let row = gaussian(&mut rng, DIM);
    let apply = time_ms(1000, || {
        let mut r = row.clone();
        adapter.apply_rows(&mut r);
        std::hint::black_box(&r);
    });
    // Rows drawn with the default model's training covariance (its spectrum and directions),
    // so that the whitening has a realistic matrix to decompose.
    let stats_file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fashion-mnist-small-cnn")
        .join(models::adapt::EMBEDDING_STATS_FILE);
    let model_stats: EmbeddingStats =
        serde_json::from_slice(&std::fs::read(&stats_file).expect("embedding-stats.json"))
            .expect("statistics");
    let cov: Vec<f64> = model_stats.covariance.iter().map(|&v| v as f64).collect();
    let root = models::adapt::matrix_power(&cov, DIM, 0.5);
    let embedding_rows = |rng: &mut Rng, n: usize| -> Vec<f32> {
        (0..n)
            .flat_map(|_| {
                let z: Vec<f64> = (0..DIM).map(|_| rng.next_gaussian()).collect();
                (0..DIM)
                    .map(|i| (0..DIM).map(|j| root[i * DIM + j] * z[j]).sum::<f64>() as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let train = EmbeddingStats::of_rows(&embedding_rows(&mut rng, 2000), DIM);
    let mut stats = Recentring::new(RecentringKind::Diagonal, &train, 2000, 0);
    // Seen statistics to start from, without a map yet (warm-up longer than the rows).
    let mut whiten = Recentring::new(RecentringKind::Full, &train, 2000, u64::MAX);
    whiten.observe_and_adapt(&mut embedding_rows(&mut rng, 300));
    let observe_diag = time_ms(1000, || {
        let mut r = row.clone();
        stats.observe_and_adapt(&mut r);
    });
    // Each refresh after 250 new frames, as on the board.
    let mut refreshes: Vec<f64> = (0..6)
        .map(|_| {
            let more = embedding_rows(&mut rng, 250);
            let Recentring::Full(w) = &mut whiten else {
                unreachable!()
            };
            more.chunks_exact(DIM).for_each(|r| w.seen.observe(r));
            let t = Instant::now();
            w.refresh_map();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    // One 28 x 28 frame deblocked along its 8 x 8 grid, as every frame of a block-coded
    // camera is.
    let frame: Vec<f32> = (0..28 * 28).map(|_| rng.next_gaussian() as f32).collect();
    let deblock = time_ms(1000, || {
        let mut f = frame.clone();
        models::adapt::deblock::deblock_planes(&mut f, 28, 28, 8);
        std::hint::black_box(&f);
    });
    let cold = refreshes.remove(0);
    refreshes.sort_by(f64::total_cmp);
    let refresh = (
        refreshes[refreshes.len() / 2],
        cold,
        refreshes[refreshes.len() - 1],
    );
    let memory = adapter.bytes() + DIM * DIM * (8 + 8 + 4);
    let arch = std::env::consts::ARCH;
    println!("adaptation maths on {arch}, d = {DIM}, k = {CLUSTERS}, batch {BATCH} x 2 views");
    println!("{:<44} {:>9} {:>9} {:>9}", "", "median", "p99", "max");
    for (name, (m, p, x)) in [
        ("adapter step (codes, gradient, update), ms", step),
        ("apply the layer to one frame, ms", apply),
        ("per-dimension statistics, one frame, ms", observe_diag),
        (
            "deblock one 28 x 28 frame, us",
            (deblock.0 * 1e3, deblock.1 * 1e3, deblock.2 * 1e3),
        ),
        (
            "whitening refresh every 250 frames: median / first / max, ms",
            refresh,
        ),
    ] {
        println!("{name:<44} {m:>9.3} {p:>9.3} {x:>9.3}");
    }
    println!(
        "adapter memory: layer {} B; with whitening {} B",
        adapter.bytes(),
        memory
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).expect("target/bench");
    let json = serde_json::json!({
        "arch": arch, "dim": DIM, "clusters": CLUSTERS, "batch": BATCH,
        "step_ms": {"median": step.0, "p99": step.1, "max": step.2},
        "apply_ms": {"median": apply.0, "p99": apply.1},
        "stats_ms": {"median": observe_diag.0, "p99": observe_diag.1},
        "deblock_ms": {"median": deblock.0, "p99": deblock.1},
        "whitening_refresh_ms": {"median": refresh.0, "first": refresh.1, "max_after_first": refresh.2},
        "layer_bytes": adapter.bytes(),
        "bytes_with_whitening": memory,
    });
    let file = out.join(format!("adapt-{arch}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(&json).expect("json")).expect("write");
    println!("wrote {}", file.display());
}
