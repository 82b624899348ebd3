//! Property tests of k-means invariants on random data.

use models::cluster::{AssignStep, BruteForceAssign, CpuGemmAssign, KMeansParams};
use models::MatRef;
use proptest::prelude::*;

/// n points of dimension d with k <= n, coordinates in [-10, 10].
fn dataset() -> impl Strategy<Value = (Vec<f32>, usize, usize)> {
    (1usize..6, 1usize..12).prop_flat_map(|(d, k)| {
        (k..160).prop_flat_map(move |n| {
            (
                prop::collection::vec(-10.0f32..10.0, n * d),
                Just(d),
                Just(k),
            )
        })
    })
}

/// Like [`dataset`], but coordinates are small integers, so points repeat and random
/// initialisation often picks the same point twice: clusters start empty and must be split.
/// At least 2k distinct points, so that k non-empty clusters exist.
fn dataset_with_duplicates() -> impl Strategy<Value = (Vec<f32>, usize, usize)> {
    (2usize..4, 2usize..12)
        .prop_flat_map(|(d, k)| {
            (3 * k..200).prop_flat_map(move |n| {
                (
                    prop::collection::vec((-3i8..=3).prop_map(f32::from), n * d),
                    Just(d),
                    Just(k),
                )
            })
        })
        .prop_filter("needs 2k distinct points", |(x, d, k)| {
            let mut rows: Vec<Vec<i32>> = x
                .chunks(*d)
                .map(|r| r.iter().map(|&v| v as i32).collect())
                .collect();
            rows.sort();
            rows.dedup();
            rows.len() >= 2 * k
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn no_cluster_is_empty((x, d, k) in dataset_with_duplicates(), seed in 0u64..1000, sub in any::<bool>()) {
        let mppc = if sub { Some(4) } else { None };
        let fit = KMeansParams::new(k).seed(seed).max_iter(8).max_points_per_centroid(mppc)
            .check().unwrap().fit(MatRef::new(&x, d).unwrap()).unwrap();
        let mut counts = vec![0usize; k];
        for &l in &fit.labels {
            counts[l as usize] += 1;
        }
        prop_assert!(counts.iter().all(|&c| c > 0), "counts {:?}, {} splits", counts, fit.n_splits());
    }

    #[test]
    fn objective_never_rises_between_lloyd_iterations((x, d, k) in dataset(), seed in 0u64..1000) {
        let p = KMeansParams::new(k).seed(seed).max_iter(12).max_points_per_centroid(None)
            .check().unwrap();
        let (_, iters, _) = p.train(&CpuGemmAssign::default(), MatRef::new(&x, d).unwrap(), None).unwrap();
        for w in iters.windows(2) {
            // A split moves centroids apart on purpose; only plain Lloyd steps must descend.
            if w[0].n_splits == 0 {
                prop_assert!(
                    w[1].objective <= w[0].objective * (1.0 + 1e-5) + 1e-4,
                    "{} -> {}", w[0].objective, w[1].objective
                );
            }
        }
    }

    #[test]
    fn gemm_assignment_equals_brute_force(
        (x, d, _) in dataset(),
        c in prop::collection::vec(-10.0f32..10.0, 1..40),
    ) {
        let k = c.len() / d;
        prop_assume!(k >= 1);
        let c = &c[..k * d];
        let (xm, cm) = (MatRef::new(&x, d).unwrap(), MatRef::new(c, d).unwrap());
        let n = xm.rows();
        let (mut lb, mut db) = (vec![0; n], vec![0.0; n]);
        let (mut lg, mut dg) = (vec![0; n], vec![0.0; n]);
        BruteForceAssign.assign(&(), xm, cm, &mut lb, &mut db).unwrap();
        let norms = CpuGemmAssign::default().prepare(xm).unwrap();
        CpuGemmAssign::default().assign(&norms, xm, cm, &mut lg, &mut dg).unwrap();
        for i in 0..n {
            let tol = 1e-4 * (1.0 + db[i].abs()) * 10.0;
            prop_assert!((db[i] - dg[i]).abs() <= tol, "dist {} vs {}", db[i], dg[i]);
            if lb[i] != lg[i] {
                // A different label is only allowed for a tie within rounding.
                let alt: f32 = xm.row(i).iter().zip(cm.row(lg[i] as usize)).map(|(a, b)| (a - b) * (a - b)).sum();
                prop_assert!((alt - db[i]).abs() <= tol, "label {} vs {}", lb[i], lg[i]);
            }
        }
    }
}
