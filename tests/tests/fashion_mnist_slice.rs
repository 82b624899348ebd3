//! The `models` pipeline on a slice of the real Fashion-MNIST: the readers see the Debian
//! package's files, and PCA-whitening, k-means and the metrics find the structure a correct
//! implementation finds (full-set figures are in the README).

use integration_tests::fashion_mnist_dir;
use models::cluster::KMeansParams;
use models::data::{load_fashion_mnist, DataSource, Split};
use models::linalg::{l2_normalize_rows, PcaParams};
use models::metrics::{clustering_accuracy, normalized_mutual_info, WeightedKnnParams};
use models::MatRef;

#[test]
fn reads_the_whole_debian_package() {
    let dir = fashion_mnist_dir();
    assert!(matches!(
        DataSource::resolve(dir.to_str().unwrap()).unwrap(),
        DataSource::FashionMnist(_)
    ));
    let train = load_fashion_mnist(&dir, Split::Train).unwrap();
    let test = load_fashion_mnist(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!((train.channels, train.height, train.width), (1, 28, 28));
    let mut per_class = [0usize; 10];
    for &l in train.labels.as_ref().unwrap() {
        per_class[l as usize] += 1;
    }
    assert_eq!(per_class, [6000; 10], "Fashion-MNIST is balanced");
}

#[test]
fn whitened_pixels_support_knn_and_raw_pixels_cluster() {
    let dir = fashion_mnist_dir();
    let train = load_fashion_mnist(&dir, Split::Train).unwrap().take(10_000);
    let test = load_fashion_mnist(&dir, Split::Test).unwrap().take(2_000);
    let (x, q) = (train.to_f32(), test.to_f32());
    let (ytr, yte) = (train.labels.unwrap(), test.labels.unwrap());

    let pca = PcaParams::new(256)
        .fit(MatRef::new(&x, 784).unwrap())
        .unwrap();
    let mut fx = pca.transform(MatRef::new(&x, 784).unwrap()).unwrap();
    let mut fq = pca.transform(MatRef::new(&q, 784).unwrap()).unwrap();
    l2_normalize_rows(&mut fx, 256);
    l2_normalize_rows(&mut fq, 256);
    let knn = WeightedKnnParams::default().check().unwrap();
    let top1 = knn
        .top1(
            MatRef::new(&fx, 256).unwrap(),
            &ytr,
            MatRef::new(&fq, 256).unwrap(),
            &yte,
        )
        .unwrap();
    // 0.881 with all 60k references; a 10k slice loses a little.
    assert!(top1 > 0.82, "weighted kNN top-1 {top1}");

    let fit = KMeansParams::new(10)
        .check()
        .unwrap()
        .fit(MatRef::new(&x, 784).unwrap())
        .unwrap();
    let nmi = normalized_mutual_info(&ytr, &fit.labels).unwrap();
    let acc = clustering_accuracy(&ytr, &fit.labels).unwrap();
    // Raw-pixel k-means reaches NMI 0.50 on the full set.
    assert!(nmi > 0.45, "NMI {nmi}");
    assert!(acc > 0.45, "accuracy {acc}");
}
