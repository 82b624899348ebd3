//! Two-epoch smoke runs on 1,000 real Fashion-MNIST images: the loss falls, checkpoints
//! reload to the same outputs, runs resume, and bad checkpoints give clear errors.

use candle_core::{Device, Tensor};
use host_train::augment::AugmentConfig;
use host_train::dataset::{load_images, DataSpec, Normalization, TrainSet};
use host_train::encoders::{Arch, Encoder};
use host_train::methods::deepcluster::DeepClusterConfig;
use host_train::methods::Method;
use host_train::pretrain::{load_encoder, pretrain, MetricsRow, Pretrained, RunConfig};
use host_train::run_dir::RunDir;

fn fashion_mnist() -> String {
    let dir = models::data::fashion_mnist_dir();
    assert!(
        models::data::looks_like_fashion_mnist(&dir),
        "Fashion-MNIST not in {}: run ./scripts/test, which installs dataset-fashion-mnist",
        dir.display()
    );
    dir.to_string_lossy().into_owned()
}

fn config(epochs: usize) -> (RunConfig, TrainSet, TrainSet) {
    config_for(Method::Deepcluster, epochs)
}

fn config_for(method: Method, epochs: usize) -> (RunConfig, TrainSet, TrainSet) {
    let spec = DataSpec {
        limit: Some(1000),
        ..DataSpec::new(fashion_mnist(), 28)
    };
    let (train, test) = load_images(&spec).unwrap();
    let norm = Normalization::measure(&train);
    let cfg = RunConfig {
        method,
        arch: Arch::SmallCnn,
        data: spec,
        epochs,
        batch_size: 64,
        embed_dim: 32,
        sobel: false,
        seed: 7,
        normalization: norm.clone(),
        input: (1, 28, 28),
        augment: AugmentConfig::default(),
        deepcluster: DeepClusterConfig {
            k: 20,
            ..Default::default()
        },
        npid: Default::default(),
        la: Default::default(),
        swav: Default::default(),
        figure_pairs: Default::default(),
        eval_every: 1,
    };
    (
        cfg,
        TrainSet::new(train, norm.clone()).unwrap(),
        TrainSet::new(test.unwrap(), norm).unwrap(),
    )
}

/// `pretrain` on the CPU with no logging.
fn train_run(
    cfg: &RunConfig,
    train: &TrainSet,
    test: Option<&TrainSet>,
    run: &RunDir,
    resume: bool,
) -> Pretrained {
    pretrain(cfg, train, test, run, &Device::Cpu, resume, &mut |_| {}).unwrap()
}

fn rows(run: &RunDir) -> Vec<MetricsRow> {
    run.read_metrics().unwrap()
}

fn train_losses(rows: &[MetricsRow]) -> Vec<(usize, f64)> {
    rows.iter()
        .filter_map(|r| match r {
            MetricsRow::Train { epoch, loss, .. } => Some((*epoch, *loss)),
            _ => None,
        })
        .collect()
}

/// The encoder in memory and the one reloaded from the run's checkpoint give identical
/// embeddings for the same images.
fn assert_reloads_to_same_outputs(run: &RunDir, trained: &dyn Encoder, train: &TrainSet) {
    let x: Tensor = train
        .batch(&[0, 1, 2, 3], &AugmentConfig::none(), 0, &Device::Cpu)
        .unwrap();
    let want: Vec<f32> = trained
        .embed(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (_, reloaded) = load_encoder(run, &Device::Cpu).unwrap();
    let got: Vec<f32> = reloaded
        .embed(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got, want);
}

#[test]
fn deepcluster_loss_falls_and_the_checkpoint_reloads_to_the_same_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let (cfg, train, test) = config(2);
    let done = train_run(&cfg, &train, Some(&test), &run, false);
    let rows = rows(&run);
    assert_eq!(
        train_losses(&rows).iter().map(|l| l.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // Each epoch starts a fresh head on new pseudo-labels, so the epoch means need not fall
    // from one epoch to the next; within every epoch the loss must, by a clear margin (on
    // this data it falls by about 30%: 3.19 -> 2.31 and 3.39 -> 2.05).
    for r in &rows {
        if let MetricsRow::Train {
            epoch,
            loss_start,
            loss_end,
            ..
        } = r
        {
            assert!(
                loss_end < loss_start,
                "epoch {epoch}: loss {loss_start} -> {loss_end}"
            );
        }
    }
    assert!(done.last_eval.is_some());
    // The per-epoch plot is there and is a real image.
    let plot = image::open(run.path("plots/metrics.png")).unwrap();
    assert!(plot.width() > 100 && plot.height() > 100);

    assert_reloads_to_same_outputs(&run, done.encoder.as_ref(), &train);
}

#[test]
fn a_run_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let (cfg, train, _) = config(1);
    train_run(&cfg, &train, None, &run, false);
    let mut more = cfg.clone();
    more.epochs = 2;
    train_run(&more, &train, None, &run, true);
    let rows = rows(&run);
    assert_eq!(
        train_losses(&rows).iter().map(|l| l.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // The resumed epoch compared its pseudo-labels with the saved ones.
    let last_train = rows
        .iter()
        .rev()
        .find(|r| matches!(r, MetricsRow::Train { .. }));
    assert!(matches!(
        last_train,
        Some(MetricsRow::Train {
            epoch: 2,
            nmi_vs_previous: Some(_),
            ..
        })
    ));
    // Without labels, the run ends with label-free figures.
    assert!(matches!(
        rows.last(),
        Some(MetricsRow::LabelFree { epoch: 2, .. })
    ));
}

#[test]
fn mismatched_or_truncated_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let (cfg, train, _) = config(1);
    train_run(&cfg, &train, None, &run, false);

    // A config that asks for another shape than the weights have.
    let mut wrong = cfg.clone();
    wrong.embed_dim = 64;
    run.write_json("config.json", &wrong).unwrap();
    let msg = load_encoder(&run, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
    run.write_json("config.json", &cfg).unwrap();

    // Truncated weights.
    let p = run.path("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_encoder(&run, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");

    // Not a run directory at all.
    let empty = tempfile::tempdir().unwrap();
    let msg = RunDir::open(empty.path()).unwrap_err().to_string();
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn npid_loss_falls_the_bank_is_saved_and_a_run_resumes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    // Three epochs: with the bank initialised at random, the first epoch's mean loss is low
    // for a bad reason (a sample's own row is still random while rows written earlier in
    // the epoch resemble the current embeddings), so epoch 2 sits near it; from epoch 3 on
    // the loss falls, as in the paper's curves.
    let (mut cfg, train, test) = config_for(Method::Npid, 3);
    cfg.eval_every = 2;
    let done = train_run(&cfg, &train, Some(&test), &run, false);
    let losses = train_losses(&rows(&run));
    assert_eq!(losses.len(), 3);
    assert_eq!(
        eval_epochs(&rows(&run)),
        vec![0, 2, 3],
        "every 2nd epoch and the last"
    );
    assert!(losses[2].1 < losses[0].1, "loss did not fall: {losses:?}");

    let state = run.load_state(&Device::Cpu).unwrap();
    assert_eq!(state["memory_bank"].dims(), &[1000, 32]);
    assert_reloads_to_same_outputs(&run, done.encoder.as_ref(), &train);

    let mut more = cfg.clone();
    more.epochs = 4;
    train_run(&more, &train, Some(&test), &run, true);
    assert_eq!(train_losses(&rows(&run)).len(), 4);
    // The resumed run does not evaluate epoch 3 again.
    assert_eq!(eval_epochs(&rows(&run)), vec![0, 2, 3, 4]);
}

fn eval_epochs(rows: &[MetricsRow]) -> Vec<usize> {
    rows.iter()
        .filter_map(|r| match r {
            MetricsRow::Eval { epoch, .. } => Some(*epoch),
            _ => None,
        })
        .collect()
}

#[test]
fn npid_with_nce_trains_and_refuses_more_noise_than_images() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let (mut cfg, train, _) = config_for(Method::Npid, 3);
    cfg.npid.nce_noise = 256;
    // A constant rate, as when the figures below were measured: with the default schedule
    // the rate drops tenfold for epoch 3, and fixed-Z NCE's loss then still climbs in it.
    cfg.npid.lr_steps = vec![];
    train_run(&cfg, &train, None, &run, false);
    let losses = train_losses(&rows(&run));
    assert_eq!(losses.len(), 3);
    assert!(losses.iter().all(|l| l.1.is_finite()), "{losses:?}");
    // Z comes from the first batch, against a random bank, so the loss rises during the
    // first epoch as the bank fills with embeddings, and the second epoch is still settling
    // (it fell 6% in one run and rose 3% in another: thread timing changes f32 sums); by the
    // third the loss falls clearly within the epoch (by about 25% in the runs looked at).
    for r in &rows(&run) {
        if let MetricsRow::Train {
            epoch,
            loss_start,
            loss_end,
            ..
        } = r
        {
            if *epoch > 2 {
                assert!(
                    loss_end < loss_start,
                    "epoch {epoch}: NCE loss {loss_start} -> {loss_end}"
                );
            }
        }
    }

    // Z estimated on every batch follows the bank as it fills: the first epoch ends with a
    // lower loss than with Z fixed against the random initial bank.
    let loss_end_of_first = |run: &RunDir| {
        rows(run)
            .iter()
            .find_map(|r| match r {
                MetricsRow::Train {
                    epoch: 1, loss_end, ..
                } => Some(*loss_end),
                _ => None,
            })
            .unwrap()
    };
    let fixed = loss_end_of_first(&run);
    let dir = tempfile::tempdir().unwrap();
    let per_batch = RunDir::create(dir.path()).unwrap();
    let mut tracking = cfg.clone();
    tracking.epochs = 1;
    tracking.npid.nce_z_every_batch = true;
    train_run(&tracking, &train, None, &per_batch, false);
    let tracked = loss_end_of_first(&per_batch);
    assert!(
        tracked.is_finite() && tracked < fixed,
        "per-batch Z {tracked} vs fixed {fixed}"
    );

    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    cfg.npid.nce_noise = 1000;
    let err = pretrain(&cfg, &train, None, &run, &Device::Cpu, false, &mut |_| {})
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("noise samples"), "{err}");
}

#[test]
fn local_aggregation_warms_up_with_npid_then_its_loss_falls() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let (mut cfg, train, test) = config_for(Method::La, 4);
    cfg.la.background_k = Some(200);
    cfg.la.kmeans_k = 20;
    let done = train_run(&cfg, &train, Some(&test), &run, false);
    let rows = rows(&run);
    let losses = train_losses(&rows);
    assert_eq!(losses.len(), 4);
    // Epoch 1 is the NPID warm start. The LA loss falls from epoch to epoch (on this data
    // about 7.1, 2.6, 2.0) and, after the first LA epoch, within each epoch.
    assert!(losses[3].1 < 0.7 * losses[1].1, "{losses:?}");
    for r in &rows {
        if let MetricsRow::Train {
            epoch,
            loss_start,
            loss_end,
            ..
        } = r
        {
            assert!(loss_start.is_finite() && loss_end.is_finite());
            if *epoch > 2 {
                assert!(
                    loss_end < loss_start,
                    "epoch {epoch}: LA loss {loss_start} -> {loss_end}"
                );
            }
        }
    }
    assert!(done.last_eval.is_some());
    let state = run.load_state(&Device::Cpu).unwrap();
    assert_eq!(state["memory_bank"].dims(), &[1000, 32]);
}

/// The isotropy penalty reaches training: the embeddings of a run trained with it are
/// closer to white than those of the same run without it.
#[test]
fn deepcluster_with_the_isotropy_penalty_learns_a_whiter_embedding() {
    let spread = |isotropy: f64| {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let (mut cfg, train, _) = config(2);
        cfg.deepcluster.isotropy = isotropy;
        let done = train_run(&cfg, &train, None, &run, false);
        let idx: Vec<usize> = (0..512).collect();
        let x = train
            .batch(&idx, &AugmentConfig::none(), 0, &Device::Cpu)
            .unwrap();
        let z = done.encoder.embed(&x, false).unwrap();
        host_train::methods::isotropy::isotropy_loss(&z)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    // On this data: about 14.6 without, 8.2 with the weight the recipes use.
    let (plain, penalised) = (spread(0.0), spread(0.3));
    assert!(
        penalised < 0.75 * plain,
        "isotropy loss {plain} without the penalty, {penalised} with it"
    );
}
