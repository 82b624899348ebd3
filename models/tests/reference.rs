//! Metrics, PCA and kNN against scikit-learn, scipy and numpy. The numbers come from
//! `reference/make_reference.py`, kept beside this file.

use models::linalg::PcaParams;
use models::metrics::{
    adjusted_rand_index, clustering_accuracy, normalized_mutual_info, purity, WeightedKnnParams,
};
use models::MatRef;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    metrics: Vec<MetricCase>,
    pca: PcaCase,
    knn: KnnCase,
}

#[derive(Deserialize)]
struct MetricCase {
    labels_true: Vec<u32>,
    labels_pred: Vec<u32>,
    nmi: f64,
    ari: f64,
    accuracy: f64,
    purity: f64,
}

#[derive(Deserialize)]
struct PcaCase {
    d: usize,
    d_out: usize,
    x: Vec<f64>,
    eigenvalues: Vec<f64>,
    components: Vec<f64>,
    whitened: Vec<f64>,
}

#[derive(Deserialize)]
struct KnnCase {
    reference: Vec<f64>,
    reference_labels: Vec<u32>,
    queries: Vec<f64>,
    d: usize,
    k: usize,
    predictions: std::collections::BTreeMap<String, Vec<u32>>,
}

fn reference() -> Reference {
    let text = include_str!("reference/reference.json");
    serde_json::from_str(text).expect("reference.json parses")
}

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, scikit-learn {want}"
    );
}

#[test]
fn label_metrics_match_scikit_learn_and_scipy() {
    for (i, c) in reference().metrics.iter().enumerate() {
        let (t, p) = (&c.labels_true, &c.labels_pred);
        close(
            normalized_mutual_info(t, p).unwrap(),
            c.nmi,
            1e-6,
            &format!("case {i} NMI"),
        );
        close(
            adjusted_rand_index(t, p).unwrap(),
            c.ari,
            1e-6,
            &format!("case {i} ARI"),
        );
        close(
            clustering_accuracy(t, p).unwrap(),
            c.accuracy,
            1e-6,
            &format!("case {i} accuracy"),
        );
        close(
            purity(t, p).unwrap(),
            c.purity,
            1e-6,
            &format!("case {i} purity"),
        );
    }
}

#[test]
fn pca_matches_scikit_learn_up_to_sign() {
    let r = reference().pca;
    let x: Vec<f32> = r.x.iter().map(|&v| v as f32).collect();
    let data = MatRef::new(&x, r.d).unwrap();
    let pca = PcaParams::new(r.d_out).fit(data).unwrap();
    for (i, (&got, &want)) in pca.eigenvalues().iter().zip(&r.eigenvalues).enumerate() {
        close(got / want, 1.0, 1e-6, &format!("eigenvalue {i} (relative)"));
    }
    let y = pca.transform(data).unwrap();
    for c in 0..r.d_out {
        let ours = &pca.components()[c * r.d..(c + 1) * r.d];
        let theirs = &r.components[c * r.d..(c + 1) * r.d];
        let dot: f64 = ours.iter().zip(theirs).map(|(a, b)| a * b).sum();
        let sign = dot.signum();
        for (j, (&a, &b)) in ours.iter().zip(theirs).enumerate() {
            close(a * sign, b, 1e-6, &format!("component {c}, coordinate {j}"));
        }
        for (row, w) in r.whitened.chunks(r.d_out).enumerate() {
            let got = y[row * r.d_out + c] as f64 * sign;
            close(
                got,
                w[c],
                1e-6 * w[c].abs().max(1.0),
                &format!("whitened row {row} col {c}"),
            );
        }
    }
}

#[test]
fn weighted_knn_matches_numpy() {
    let r = reference().knn;
    let refs: Vec<f32> = r.reference.iter().map(|&v| v as f32).collect();
    let qs: Vec<f32> = r.queries.iter().map(|&v| v as f32).collect();
    for (tau, want) in &r.predictions {
        let knn = WeightedKnnParams {
            k: r.k,
            temperature: tau.parse().unwrap(),
        }
        .check()
        .unwrap();
        let got = knn
            .predict(
                MatRef::new(&refs, r.d).unwrap(),
                &r.reference_labels,
                MatRef::new(&qs, r.d).unwrap(),
            )
            .unwrap();
        assert_eq!(&got, want, "tau {tau}");
    }
}
