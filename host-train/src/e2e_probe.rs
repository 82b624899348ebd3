//! PROBE (temporary): SCAN's clustering step with the encoder trained too.
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Module, Optimizer, ParamsAdamW, VarMap};
use models::rng::Rng;

use crate::cluster_head::{scan_loss, ClusterHead};
use crate::dataset::TrainSet;
use crate::eval::evaluate;
use crate::features::extract;
use crate::pretrain::{build_encoder, RunConfig};
use crate::run_dir::RunDir;
use crate::TrainError;

#[allow(clippy::too_many_arguments)]
pub fn e2e_probe(
    run: &RunDir,
    cfg: &RunConfig,
    head: &ClusterHead,
    nb: &[u32],
    train: &TrainSet,
    val: Option<&TrainSet>,
    steps: usize,
    lr: f64,
    batch: usize,
) -> Result<(), TrainError> {
    let dev = Device::Cpu;
    let mut vm = VarMap::new();
    let encoder = build_encoder(cfg, &vm, &dev)?;
    run.load_model(&mut vm)?;
    let (k, dim) = (head.config.clusters, head.dim);
    let w = Var::from_tensor(&Tensor::from_vec(head.weight.clone(), (k, dim), &dev)?)?;
    let b = Var::from_tensor(&Tensor::from_vec(head.bias.clone(), k, &dev)?)?;
    let linear = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
    let mut vars = vm.all_vars();
    vars.push(w.clone());
    vars.push(b.clone());
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let n = train.len();
    let k_nb = nb.len() / n;
    let mut rng = Rng::new(cfg.seed ^ 0xE2E);
    let t0 = std::time::Instant::now();
    let mut acc = [0f64; 3];
    for step in 0..steps {
        let anchors: Vec<usize> = (0..batch).map(|_| rng.below(n)).collect();
        let others: Vec<usize> = anchors
            .iter()
            .map(|&i| nb[i * k_nb + rng.below(k_nb)] as usize)
            .collect();
        let all: Vec<usize> = anchors.iter().chain(&others).copied().collect();
        let x = train.batch(&all, &cfg.augment, rng.next_u64(), &dev)?;
        let emb = encoder.embed(&x, true)?;
        let norm = emb.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let unit = emb.broadcast_div(&norm)?;
        let logits = linear.forward(&unit)?;
        let (t, c, e) = scan_loss(
            &logits.narrow(0, 0, batch)?,
            &logits.narrow(0, batch, batch)?,
            head.config.entropy_weight,
        )?;
        opt.backward_step(&t)?;
        for (a, v) in acc.iter_mut().zip([&t, &c, &e]) {
            *a += f64::from(v.to_scalar::<f32>()?);
        }
        if (step + 1) % 100 == 0 {
            println!(
                "e2e step {}: loss {:.4} consistency {:.4} entropy {:.4} ({:.0} s)",
                step + 1,
                acc[0] / 100.0,
                acc[1] / 100.0,
                acc[2] / 100.0,
                t0.elapsed().as_secs_f64()
            );
            acc = [0.0; 3];
        }
        if (step + 1) % 1000 == 0 || step + 1 == steps {
            let mut h = head.clone();
            h.weight = w.as_tensor().flatten_all()?.to_vec1()?;
            h.bias = b.as_tensor().to_vec1()?;
            report(&*encoder, &h, train, val, cfg.seed, &dev)?;
        }
    }
    let _ = DType::F32;
    Ok(())
}

fn report(
    encoder: &dyn crate::encoders::Encoder,
    h: &ClusterHead,
    train: &TrainSet,
    val: Option<&TrainSet>,
    seed: u64,
    dev: &Device,
) -> Result<(), TrainError> {
    use models::metrics::{clustering_accuracy, normalized_mutual_info};
    let Some(val) = val else { return Ok(()) };
    let tr = extract(encoder, train, 512, dev, "e2e train")?;
    let te = extract(encoder, val, 512, dev, "e2e val")?;
    let (tl, vl) = (
        train.images.labels.as_deref().unwrap(),
        val.images.labels.as_deref().unwrap(),
    );
    let assigned = h.assign(&te);
    let r = evaluate(&tr, tl, &te, vl, h.dim, seed)?;
    println!(
        "e2e: head validation NMI {:.4} accuracy {:.4}; kNN {:.4} (whitened {:?}), k-means train NMI {:.4} acc {:.4}",
        normalized_mutual_info(vl, &assigned)?,
        clustering_accuracy(vl, &assigned)?,
        r.knn_top1,
        r.knn_top1_whitened,
        r.nmi,
        r.accuracy
    );
    Ok(())
}
