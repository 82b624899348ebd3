//! `cargo bench -p models --bench kmeans`: our k-means and PCA against faiss-cpu, in one run,
//! on the same data with the same starting centroids and the same number of threads.
//!
//! Data: the Fashion-MNIST train set (60k) as raw pixels (784-d) and PCA-whitened to 256-d
//! then L2-normalised. k = 10, 100, 1000; 20 iterations. The bench sub-samples each case
//! once (at most 256 points per centroid, faiss's default) and hands the very same rows and
//! starting centroids to both sides, so the objectives are comparable to the last digit.
//!
//! Environment: `THREADS` (default 2), `PYTHON` (default `python3`, needs faiss-cpu and
//! numpy), `FASHION_MNIST_DIR`, `KMEANS_BENCH_QUICK=1` (10k points, k <= 100).
//! Writes `target/bench/kmeans.json` (one object per case) and `target/bench/pca.json`.

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use models::cluster::{CpuGemmAssign, KMeans, KMeansParams};
use models::data::{fashion_mnist_dir, load_fashion_mnist, Split};
use models::linalg::{l2_normalize_rows, PcaParams};
use models::metrics::{clustering_accuracy, normalized_mutual_info};
use models::rng::Rng;
use models::MatRef;
use serde_json::{json, Value};

const ITERS: usize = 20;
const MAX_POINTS_PER_CENTROID: usize = 256;
const SEED: u64 = 1234;

struct Case {
    name: String,
    data: &'static str,
    d: usize,
    k: usize,
    train: Vec<f32>,
    init: Vec<f32>,
    repeats: usize,
}

fn write_f32(path: &Path, v: &[f32]) -> std::io::Result<()> {
    std::fs::write(
        path,
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    )
}

fn read_f32(path: &Path) -> std::io::Result<Vec<f32>> {
    let b = std::fs::read(path)?;
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn best_of<T>(repeats: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best: Option<(f64, T)> = None;
    for _ in 0..repeats {
        let t0 = Instant::now();
        let out = f();
        let dt = t0.elapsed().as_secs_f64();
        if best.as_ref().is_none_or(|(b, _)| dt < *b) {
            best = Some((dt, out));
        }
    }
    best.expect("at least one repeat")
}

type BoxError = Box<dyn Error + Send + Sync>;
type BenchResult = Result<(), BoxError>;

/// Our k-means on one case: the best time, the model and its final objective.
struct OurRun {
    secs: f64,
    model: KMeans,
    objective: f64,
}

fn main() -> BenchResult {
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| run(threads))
}

/// The whole bench: data, cases, our runs, faiss's runs, the table and the JSON.
fn run(threads: usize) -> BenchResult {
    let quick = std::env::var("KMEANS_BENCH_QUICK").is_ok_and(|v| v == "1");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    check_reference(&python)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("bench");
    let work = out_dir.join("kmeans-work");
    std::fs::create_dir_all(&work)?;

    let mut set = load_fashion_mnist(&fashion_mnist_dir(), Split::Train)?;
    if quick {
        set = set.take(10_000);
    }
    let labels = set
        .labels
        .clone()
        .ok_or("Fashion-MNIST came without labels")?;
    let raw = set.to_f32();
    let n = set.len();
    eprintln!("data: {n} Fashion-MNIST train images, {threads} threads");

    // PCA-whitening to 256-d, timed as faiss PCAMatrix::train is.
    let raw_m = MatRef::new(&raw, 784)?;
    let (pca_s, pca) = best_of(2, || PcaParams::new(256).fit(raw_m));
    let mut white = pca?.transform(raw_m)?;
    l2_normalize_rows(&mut white, 256);
    write_f32(&work.join("raw784.f32"), &raw)?;
    write_f32(&work.join("pca256.f32"), &white)?;

    let ks: &[usize] = if quick { &[10, 100] } else { &[10, 100, 1000] };
    let data = [
        ("raw784", raw.as_slice(), 784),
        ("pca256", white.as_slice(), 256),
    ];
    let cases = make_cases(&data, ks, &work)?;
    write_jobs(&cases, threads, &work)?;
    // Ours first, then faiss, so the two never compete for the cores.
    let ours = time_ours(&cases)?;
    let faiss = run_faiss(&python, &root, &work, threads)?;

    let mut table = String::new();
    writeln!(table, "k-means, Fashion-MNIST train ({n} points), {ITERS} iterations, {threads} threads, faiss {}", faiss["faiss_version"])?;
    writeln!(table, "| data | k | n_train | ours s | faiss s | ours/faiss | ours objective | faiss objective | obj diff | NMI ours / faiss | acc ours / faiss |")?;
    writeln!(table, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    let mut rows = Vec::new();
    for (c, ours) in cases.iter().zip(&ours) {
        let full = data.iter().find(|(name, ..)| *name == c.data).map(|d| d.1);
        let full = MatRef::new(full.ok_or("a case names no data")?, c.d)?;
        let row = compare_case(c, ours, &faiss, full, &labels, &work, threads)?;
        writeln!(table, "{}", table_row(&row))?;
        rows.push(row);
    }
    let faiss_pca = faiss["pca"][0]["faiss_s"].as_f64().unwrap_or(f64::NAN);
    writeln!(table, "\nPCA fit 784 -> 256 (whitening): ours {pca_s:.3} s, faiss PCAMatrix {faiss_pca:.3} s, ratio {:.2}", pca_s / faiss_pca)?;
    print!("{table}");
    std::fs::write(
        out_dir.join("kmeans.json"),
        serde_json::to_vec_pretty(&rows)?,
    )?;
    std::fs::write(
        out_dir.join("pca.json"),
        serde_json::to_vec_pretty(
            &json!([{ "data": "raw784", "d_out": 256, "n": n, "threads": threads, "ours_s": pca_s, "faiss_s": faiss_pca }]),
        )?,
    )?;
    eprintln!("wrote {}", out_dir.join("kmeans.json").display());
    Ok(())
}

/// Fails before minutes of our own runs if the reference cannot run.
fn check_reference(python: &str) -> BenchResult {
    let probe = Command::new(python)
        .args(["-c", "import faiss, numpy"])
        .status()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !probe.success() {
        return Err(format!(
            "{python} cannot import faiss and numpy: run ./scripts/bench-kmeans, which sets them up"
        )
        .into());
    }
    Ok(())
}

/// One case per data set and k: the sub-sample and the starting centroids, also written
/// to `work` for faiss.
fn make_cases(
    data: &[(&'static str, &[f32], usize)],
    ks: &[usize],
    work: &Path,
) -> Result<Vec<Case>, BoxError> {
    let mut cases = Vec::new();
    for &(name, x, d) in data {
        let n = x.len() / d;
        for &k in ks {
            let mut rng = Rng::new(SEED ^ k as u64);
            let mut idx: Vec<usize> = if n > k * MAX_POINTS_PER_CENTROID {
                rng.sample_indices(n, k * MAX_POINTS_PER_CENTROID)
            } else {
                (0..n).collect()
            };
            idx.sort_unstable();
            let train: Vec<f32> = idx
                .iter()
                .flat_map(|&i| &x[i * d..(i + 1) * d])
                .copied()
                .collect();
            let init: Vec<f32> = rng
                .sample_indices(idx.len(), k)
                .into_iter()
                .flat_map(|j| &train[j * d..(j + 1) * d])
                .copied()
                .collect();
            let case = format!("{name}_k{k}");
            let idx32: Vec<u8> = idx.iter().flat_map(|&i| (i as u32).to_le_bytes()).collect();
            std::fs::write(work.join(format!("{case}.idx")), idx32)?;
            write_f32(&work.join(format!("{case}.init")), &init)?;
            let flops = 2.0 * idx.len() as f64 * k as f64 * d as f64 * ITERS as f64;
            // Best of several: single runs of faiss moved by 15% between otherwise equal runs.
            let repeats = if flops < 2e11 { 5 } else { 2 };
            cases.push(Case {
                name: case,
                data: name,
                d,
                k,
                train,
                init,
                repeats,
            });
        }
    }
    Ok(cases)
}

/// The job list that `faiss_kmeans.py` reads.
fn write_jobs(cases: &[Case], threads: usize, work: &Path) -> BenchResult {
    let jobs = json!({
        "threads": threads,
        "pca": [{"name": "raw784_to_256", "data_file": "raw784.f32", "d_in": 784, "d_out": 256, "repeats": 2}],
        "cases": cases.iter().map(|c| json!({
            "name": c.name, "data_file": format!("{}.f32", c.data), "d": c.d, "k": c.k,
            "iters": ITERS, "sample_file": format!("{}.idx", c.name),
            "init_file": format!("{}.init", c.name), "repeats": c.repeats,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(work.join("jobs.json"), serde_json::to_vec_pretty(&jobs)?)?;
    Ok(())
}

/// Our k-means on every case.
fn time_ours(cases: &[Case]) -> Result<Vec<OurRun>, BoxError> {
    let mut ours = Vec::new();
    for c in cases {
        let params = KMeansParams::new(c.k)
            .max_iter(ITERS)
            .max_points_per_centroid(None)
            .check()?;
        let train = MatRef::new(&c.train, c.d)?;
        let init = MatRef::new(&c.init, c.d)?;
        let (secs, result) = best_of(c.repeats, || {
            params.train(&CpuGemmAssign::default(), train, Some(init))
        });
        let (model, iters, _) = result?;
        eprintln!("ours  {:>12}: {secs:.3} s", c.name);
        ours.push(OurRun {
            secs,
            model,
            objective: iters.last().map_or(f64::NAN, |s| s.objective),
        });
    }
    Ok(ours)
}

/// Runs the faiss reference on the written jobs and reads its results.
fn run_faiss(python: &str, root: &Path, work: &Path, threads: usize) -> Result<Value, BoxError> {
    let script = root.join("models/benches/reference/faiss_kmeans.py");
    let status = Command::new(python)
        .arg(&script)
        .arg(work)
        .env("OMP_NUM_THREADS", threads.to_string())
        .env("OPENBLAS_NUM_THREADS", threads.to_string())
        .env("MKL_NUM_THREADS", threads.to_string())
        .status()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "{} failed ({status}); it needs faiss-cpu and numpy: ./scripts/bench-kmeans sets them up",
            script.display()
        )
        .into());
    }
    Ok(serde_json::from_slice(&std::fs::read(
        work.join("results.json"),
    )?)?)
}

/// One case's JSON row: both timings and objectives, and for k = 10 both clusterings of
/// the full set scored against the labels.
fn compare_case(
    c: &Case,
    ours: &OurRun,
    faiss: &Value,
    full: MatRef<'_>,
    labels: &[u32],
    work: &Path,
    threads: usize,
) -> Result<Value, BoxError> {
    let f = faiss["cases"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == c.name.as_str()))
        .ok_or("faiss results lack a case")?;
    let faiss_s = f["faiss_s"].as_f64().ok_or("faiss_s")?;
    let faiss_obj = f["objective_per_iter"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(Value::as_f64)
        .ok_or("faiss objective")?;
    let OurRun {
        secs,
        ref model,
        objective: obj,
    } = *ours;
    let diff = (obj - faiss_obj) / faiss_obj;
    let mut row = json!({
        "data": c.data, "k": c.k, "d": c.d, "n_train": c.train.len() / c.d, "iters": ITERS,
        "threads": threads, "ours_s": secs, "faiss_s": faiss_s, "ratio": secs / faiss_s,
        "ours_objective": obj, "faiss_objective": faiss_obj, "objective_rel_diff": diff,
    });
    if c.k == 10 {
        let fc = KMeans::from_centroids(
            read_f32(&work.join(format!("{}.faiss_centroids", c.name)))?,
            c.d,
        )?;
        let (lo, _) = model.predict(full)?;
        let (lf, _) = fc.predict(full)?;
        row["nmi_ours"] = json!(normalized_mutual_info(labels, &lo)?);
        row["nmi_faiss"] = json!(normalized_mutual_info(labels, &lf)?);
        row["acc_ours"] = json!(clustering_accuracy(labels, &lo)?);
        row["acc_faiss"] = json!(clustering_accuracy(labels, &lf)?);
    }
    Ok(row)
}

/// A JSON row as a line of the markdown table.
fn table_row(row: &Value) -> String {
    let num = |key: &str| row[key].as_f64().unwrap_or(f64::NAN);
    let quality = if row.get("nmi_ours").is_some() {
        format!(
            "{:.3} / {:.3} | {:.3} / {:.3} |",
            num("nmi_ours"),
            num("nmi_faiss"),
            num("acc_ours"),
            num("acc_faiss")
        )
    } else {
        "| |".into()
    };
    format!(
        "| {} | {} | {} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | {:+.3}% | {quality}",
        row["data"].as_str().unwrap_or("?"),
        row["k"],
        row["n_train"],
        num("ours_s"),
        num("faiss_s"),
        num("ratio"),
        num("ours_objective"),
        num("faiss_objective"),
        100.0 * num("objective_rel_diff"),
    )
}
