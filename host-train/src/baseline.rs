//! The pixel baseline: what PCA-whitening and k-means find without any learning.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use host_train::dataset::{load_images, DataSpec};
use models::cluster::KMeansParams;
use models::data::ImageSet;
use models::linalg::{l2_normalize_rows, PcaParams};
use models::metrics::{
    adjusted_rand_index, clustering_accuracy, normalized_mutual_info, purity, WeightedKnnParams,
};
use models::MatRef;
use serde_json::json;

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// `fashion-mnist` (Debian's dataset-fashion-mnist), a folder of IDX files, or a folder of
    /// JPEG/PNG images (class sub-folders give labels for the report).
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    /// Clusters (default: the number of classes, or 10 for unlabeled data).
    #[arg(long)]
    k: Option<usize>,
    /// PCA-whitening output dimension (capped at the input dimension); 0 clusters the raw
    /// pixels without PCA or normalisation.
    #[arg(long, default_value_t = 256)]
    pca_dim: usize,
    /// Use only the first N training images.
    #[arg(long)]
    limit: Option<usize>,
    /// Image size for folders of images (square).
    #[arg(long, default_value_t = 28)]
    size: u32,
    /// Read folders of images as RGB instead of grayscale.
    #[arg(long)]
    rgb: bool,
    /// Skip unreadable images (counted) instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    #[command(flatten)]
    split: crate::pretrain_cmd::SplitArgs,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Training images and, when there is one, a held-out labeled query set for kNN.
fn load(args: &Args) -> Result<(ImageSet, Option<ImageSet>)> {
    let spec = DataSpec {
        source: args.data.clone(),
        size: args.size,
        rgb: args.rgb,
        skip_bad: args.skip_bad,
        limit: None,
        val: args.split.val.clone(),
        val_fraction: args.split.val_fraction,
        split_seed: args.seed,
    };
    let (train, test) = load_images(&spec)?;
    for s in &train.skipped {
        eprintln!("skipped {}: {}", s.path.display(), s.reason);
    }
    Ok((train, test))
}

pub fn run(args: &Args) -> Result<()> {
    let t0 = Instant::now();
    let (mut train, test) = load(args)?;
    if let Some(n) = args.limit {
        train = train.take(n);
    }
    let d = train.image_len();
    let n = train.len();
    let k = args.k.unwrap_or(if train.class_names.is_empty() {
        10
    } else {
        train.class_names.len()
    });
    let d_out = if args.pca_dim == 0 {
        d
    } else {
        args.pca_dim.min(d)
    };
    if args.pca_dim > 0 && n <= d_out {
        bail!("{n} images are too few for a {d_out}-dimensional PCA: lower --pca-dim");
    }
    println!(
        "data: {} ({n} images of {}x{}x{}, {}){}",
        args.data,
        train.channels,
        train.height,
        train.width,
        if train.labels.is_some() {
            "labeled"
        } else {
            "unlabeled"
        },
        if train.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} skipped", train.skipped.len())
        }
    );

    let x = train.to_f32();
    let xm = MatRef::new(&x, d)?;
    let t = Instant::now();
    let pca = if args.pca_dim == 0 {
        None
    } else {
        Some(PcaParams::new(d_out).fit(xm).context("fitting PCA")?)
    };
    let features = |x: &[f32]| -> Result<Vec<f32>> {
        Ok(match &pca {
            Some(p) => {
                let mut f = p.transform(MatRef::new(x, d)?)?;
                l2_normalize_rows(&mut f, d_out);
                f
            }
            None => x.to_vec(),
        })
    };
    let feats = features(&x)?;
    let pca_s = t.elapsed().as_secs_f64();
    match &pca {
        Some(_) => println!("PCA-whitening {d} -> {d_out}, L2: {pca_s:.2} s"),
        None => println!("raw pixels, no PCA"),
    }

    let t = Instant::now();
    let fit = KMeansParams::new(k)
        .seed(args.seed)
        .check()?
        .fit(MatRef::new(&feats, d_out)?)
        .context("k-means")?;
    let kmeans_s = t.elapsed().as_secs_f64();
    println!(
        "k-means k={k}: {kmeans_s:.2} s, objective {:.1}, {} empty-cluster splits",
        fit.objective(),
        fit.n_splits()
    );

    let mut report = json!({
        "data": args.data, "n": n, "dim": d, "pca_dim": args.pca_dim.min(d), "k": k,
        "pca_s": pca_s, "kmeans_s": kmeans_s, "objective": fit.objective(),
    });
    if let Some(labels) = &train.labels {
        let nmi = normalized_mutual_info(labels, &fit.labels)?;
        let ari = adjusted_rand_index(labels, &fit.labels)?;
        let acc = clustering_accuracy(labels, &fit.labels)?;
        let pur = purity(labels, &fit.labels)?;
        println!(
            "k-means vs labels: NMI {nmi:.4}  ARI {ari:.4}  accuracy {acc:.4}  purity {pur:.4}"
        );
        report["nmi"] = json!(nmi);
        report["ari"] = json!(ari);
        report["accuracy"] = json!(acc);
        report["purity"] = json!(pur);
    } else {
        let mut sizes = vec![0usize; k];
        fit.labels.iter().for_each(|&l| sizes[l as usize] += 1);
        println!("cluster sizes: {sizes:?}");
    }

    if let (Some(test), Some(train_labels)) = (&test, &train.labels) {
        let qf = features(&test.to_f32())?;
        let t = Instant::now();
        let knn = WeightedKnnParams::default().check()?;
        let top1 = knn.top1(
            MatRef::new(&feats, d_out)?,
            train_labels,
            MatRef::new(&qf, d_out)?,
            test.labels.as_deref().context("test labels")?,
        )?;
        let knn_s = t.elapsed().as_secs_f64();
        println!(
            "weighted kNN (k=200, tau=0.07) top-1, {} test vs {n} train: {top1:.4} ({knn_s:.2} s)",
            test.len()
        );
        report["knn_top1"] = json!(top1);
        report["knn_s"] = json!(knn_s);
    }
    let total = t0.elapsed().as_secs_f64();
    report["total_s"] = json!(total);
    println!("total {total:.1} s");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
