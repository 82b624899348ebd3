//! Where tract spends a run of the default model: each node of the optimised plan (as the
//! `tract` backend builds it), timed over many runs of one reused state, plus the cost of
//! spawning a fresh state per run.
//!
//! `[TRACT_THREADS=2] cargo run --release -p edge-runtime --example tract_profile -- [MODEL_DIR|FILE.onnx] [fp32|int8] [BATCH]`
//! (an `.onnx` file is taken as is, with the committed model's input shape: for trying
//! rewrites of the graph).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use edge_runtime::bundle::ModelBundle;
use models::manifest::Precision;
use tract_onnx::prelude::*;

const RUNS: usize = 2000;

fn main() -> TractResult<()> {
    // TRACT_THREADS=n: run on an n-thread pool installed as tract's executor, as the
    // backend does for one image with `--threads n`.
    let threads: usize = std::env::var("TRACT_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    if threads > 1 {
        let ex = tract_linalg::multithread::Executor::multithread(threads);
        let tract_linalg::multithread::Executor::MultiThread(pool) = ex.clone() else {
            unreachable!("a multithread executor")
        };
        return pool.install(|| tract_linalg::multithread::multithread_tract_scope(ex, profile));
    }
    profile()
}

fn profile() -> TractResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.first().map_or("models/fashion-mnist-small-cnn", |s| s));
    let precision = match args.get(1).map(String::as_str) {
        Some("int8") => Precision::Int8,
        _ => Precision::Fp32,
    };
    let batch: usize = args.get(2).and_then(|b| b.parse().ok()).unwrap_or(1);
    let (bytes, [c, h, w]) = if dir.extension().is_some_and(|e| e == "onnx") {
        let committed = ModelBundle::load("models/fashion-mnist-small-cnn".as_ref(), precision)?;
        (std::fs::read(&dir)?, committed.manifest.input_chw())
    } else {
        let bundle = ModelBundle::load(&dir, precision)?;
        let chw = bundle.manifest.input_chw();
        (bundle.bytes, chw)
    };
    // As the backend prepares it; TRACT_STOCK_OPS=1 keeps tract's own pool and convolution.
    let swap_ops = std::env::var_os("TRACT_STOCK_OPS").is_none();
    let (model, _) = edge_runtime::backend::optimized_model(&bytes, [batch, c, h, w], swap_ops)?;
    let plan = model.into_runnable()?;
    let input = Tensor::from_shape(&[batch, c, h, w], &vec![0.5f32; batch * c * h * w])?;

    let mut state = plan.spawn()?;
    let mut per_node = vec![Duration::ZERO; plan.model().nodes.len()];
    for _ in 0..RUNS {
        state.run_plan_with_eval(
            tvec!(input.clone().into_tvalue()),
            |ctx, st, node, inputs| {
                let t = Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, st, node, inputs);
                per_node[node.id] += t.elapsed();
                out
            },
        )?;
    }
    let timed = |f: &mut dyn FnMut() -> TractResult<()>| -> TractResult<f64> {
        let t = Instant::now();
        for _ in 0..RUNS {
            f()?;
        }
        Ok(t.elapsed().as_secs_f64() * 1e6 / RUNS as f64)
    };
    let reused = timed(&mut || state.run(tvec!(input.clone().into_tvalue())).map(drop))?;
    let fresh = timed(&mut || plan.run(tvec!(input.clone().into_tvalue())).map(drop))?;
    let total: Duration = per_node.iter().sum();
    println!("{precision:?} batch {batch}: {RUNS} runs; us per run: reused state {reused:.1}, fresh state {fresh:.1}");
    println!("| node | op | us/run | share |");
    println!("|---|---|---|---|");
    for node in plan.model().nodes() {
        let us = per_node[node.id].as_secs_f64() * 1e6 / RUNS as f64;
        if us >= 0.05 {
            println!(
                "| {} {} | {} | {us:.1} | {:.0}% |",
                node.id,
                node.name,
                node.op().name(),
                100.0 * per_node[node.id].as_secs_f64() / total.as_secs_f64()
            );
        }
    }
    Ok(())
}
