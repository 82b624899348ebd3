//! The adapter's label-free objective: SwAV's swapped prediction (Caron et al. 2020), with
//! the online k-means centroids as the prototypes.
//!
//! Two augmented views of each stored frame are embedded by the frozen encoder and mapped by
//! the adapter. Each view's cosine scores against the (unit) centroids give, through
//! Sinkhorn-Knopp, balanced codes over the batch; each view is then trained to predict the
//! *other* view's codes with a softmax cross-entropy. Why this rather than a cross-entropy on
//! the online pseudo-labels: the pseudo-labels come from the adapter itself and would only
//! confirm themselves, while a shifted camera typically crowds its frames into a few clusters.
//! The equal-partition codes push the frames back across every cluster, and agreement
//! between views keeps the map tied to what the image shows. A pull towards the identity
//! keeps the adapter near the shipped model.
//!
//! The gradient is written by hand; `tests` checks it against finite differences.

use alloc::vec;
use alloc::vec::Vec;

use super::linear::{dot, LinearAdapter, LinearGrad};
use crate::cluster::sinkhorn;

/// Settings of the objective and its optimiser.
#[derive(Debug, Clone, PartialEq)]
pub struct SwappedParams {
    /// Softmax temperature of the predictions (SwAV: 0.1).
    pub temperature: f32,
    /// Sinkhorn's entropy weight (SwAV: 0.05) and iterations (3).
    pub epsilon: f64,
    pub sinkhorn_iters: usize,
    /// Weight of 0.5 * ||W - I||^2 + 0.5 * ||b||^2.
    pub identity_weight: f32,
    pub learning_rate: f32,
}

impl Default for SwappedParams {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            epsilon: 0.05,
            sinkhorn_iters: 3,
            identity_weight: 0.05,
            learning_rate: 0.2,
        }
    }
}

/// The centroids as unit rows (the prototypes).
pub fn unit_prototypes(centroids: &[f32], dim: usize) -> Vec<f32> {
    let mut p = centroids.to_vec();
    for row in p.chunks_exact_mut(dim) {
        let n = libm::sqrtf(dot(row, row)).max(1e-12);
        row.iter_mut().for_each(|v| *v /= n);
    }
    p
}

/// One view mapped by the adapter: unit embeddings, their norms before normalising, and the
/// cosine scores against the prototypes (rows x k).
struct Forward {
    unit: Vec<f32>,
    norms: Vec<f32>,
    scores: Vec<f32>,
}

fn forward(adapter: &LinearAdapter, x: &[f32], prototypes: &[f32]) -> Forward {
    let d = adapter.dim();
    let k = prototypes.len() / d;
    let rows = x.len() / d;
    let mut unit = vec![0.0; x.len()];
    let mut norms = Vec::with_capacity(rows);
    let mut scores = Vec::with_capacity(rows * k);
    for (xr, ur) in x.chunks_exact(d).zip(unit.chunks_exact_mut(d)) {
        adapter.apply_row(xr, ur);
        let n = libm::sqrtf(dot(ur, ur)).max(1e-12);
        ur.iter_mut().for_each(|v| *v /= n);
        norms.push(n);
        scores.extend(prototypes.chunks_exact(d).map(|p| dot(ur, p)));
    }
    Forward {
        unit,
        norms,
        scores,
    }
}

/// Sinkhorn codes of one view (`x`: rows of dim) under `adapter`.
pub fn codes(
    adapter: &LinearAdapter,
    x: &[f32],
    prototypes: &[f32],
    params: &SwappedParams,
) -> Vec<f32> {
    let k = prototypes.len() / adapter.dim();
    sinkhorn(
        &forward(adapter, x, prototypes).scores,
        k,
        params.epsilon,
        params.sinkhorn_iters,
    )
}

/// The swapped-prediction loss of two views (`views[v]`: rows of dim, row i of each the same
/// frame) given fixed `codes` (codes[v] of view v), plus the identity pull; and its gradient
/// with respect to the adapter's parameters.
pub fn loss_and_grad(
    adapter: &LinearAdapter,
    views: [&[f32]; 2],
    codes: [&[f32]; 2],
    prototypes: &[f32],
    params: &SwappedParams,
) -> (f32, LinearGrad) {
    let d = adapter.dim();
    let k = prototypes.len() / d;
    let rows = views[0].len() / d;
    let mut grad = LinearGrad {
        weight: vec![0.0; d * d],
        bias: vec![0.0; d],
    };
    let mut loss = 0.0f32;
    let scale = 1.0 / (2 * rows.max(1)) as f32;
    let inv_t = 1.0 / params.temperature;
    for v in 0..2 {
        let fwd = forward(adapter, views[v], prototypes);
        let target = codes[1 - v];
        for r in 0..rows {
            let logits: Vec<f32> = fwd.scores[r * k..(r + 1) * k]
                .iter()
                .map(|s| s * inv_t)
                .collect();
            let p = softmax(&logits);
            let q = &target[r * k..(r + 1) * k];
            loss -= scale
                * q.iter()
                    .zip(&p)
                    .map(|(qj, pj)| qj * libm::logf(pj.max(1e-30)))
                    .sum::<f32>();
            // d loss / d logits = (p - q) * scale; logits = (u . proto_j) / t.
            let g_logit: Vec<f32> = p.iter().zip(q).map(|(pj, qj)| (pj - qj) * scale).collect();
            let mut g_unit = vec![0.0; d];
            for (gj, proto) in g_logit.iter().zip(prototypes.chunks_exact(d)) {
                g_unit
                    .iter_mut()
                    .zip(proto)
                    .for_each(|(g, pv)| *g += gj * inv_t * pv);
            }
            // u = z / |z|: dL/dz = (g - u (u . g)) / |z|.
            let u = &fwd.unit[r * d..(r + 1) * d];
            let ug = dot(u, &g_unit);
            let x = &views[v][r * d..(r + 1) * d];
            for o in 0..d {
                let gz = (g_unit[o] - u[o] * ug) / fwd.norms[r];
                grad.bias[o] += gz;
                grad.weight[o * d..(o + 1) * d]
                    .iter_mut()
                    .zip(x)
                    .for_each(|(g, xi)| *g += gz * xi);
            }
        }
    }
    let lambda = params.identity_weight;
    for (i, (g, w)) in grad.weight.iter_mut().zip(&adapter.weight).enumerate() {
        let delta = w - if i / d == i % d { 1.0 } else { 0.0 };
        loss += 0.5 * lambda * delta * delta;
        *g += lambda * delta;
    }
    for (g, b) in grad.bias.iter_mut().zip(&adapter.bias) {
        loss += 0.5 * lambda * b * b;
        *g += lambda * b;
    }
    (loss, grad)
}

/// One training step on a batch of two views: codes from the current adapter (no gradient
/// through them, as in SwAV), then a gradient step. Returns the loss before the step.
pub fn step(
    adapter: &mut LinearAdapter,
    views: [&[f32]; 2],
    prototypes: &[f32],
    params: &SwappedParams,
) -> f32 {
    let q0 = codes(adapter, views[0], prototypes, params);
    let q1 = codes(adapter, views[1], prototypes, params);
    let (loss, grad) = loss_and_grad(adapter, views, [&q0, &q1], prototypes, params);
    adapter.descend(&grad, params.learning_rate);
    loss
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| libm::expf(v - m)).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.next_gaussian() as f32).collect()
    }

    /// The loss in f64 for finite differences (same maths, higher precision).
    fn loss_f64(
        adapter: &LinearAdapter,
        views: [&[f32]; 2],
        codes: [&[f32]; 2],
        protos: &[f32],
        params: &SwappedParams,
    ) -> f64 {
        let d = adapter.dim();
        let k = protos.len() / d;
        let rows = views[0].len() / d;
        let mut loss = 0.0f64;
        for v in 0..2 {
            for r in 0..rows {
                let x = &views[v][r * d..(r + 1) * d];
                let z: Vec<f64> = (0..d)
                    .map(|o| {
                        adapter.bias[o] as f64
                            + (0..d)
                                .map(|i| adapter.weight[o * d + i] as f64 * x[i] as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let n = z.iter().map(|a| a * a).sum::<f64>().sqrt();
                let logits: Vec<f64> = (0..k)
                    .map(|j| {
                        (0..d)
                            .map(|o| z[o] / n * protos[j * d + o] as f64)
                            .sum::<f64>()
                            / params.temperature as f64
                    })
                    .collect();
                let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
                let q = &codes[1 - v][r * k..(r + 1) * k];
                loss -= (0..k).map(|j| q[j] as f64 * (logits[j] - lse)).sum::<f64>()
                    / (2 * rows) as f64;
            }
        }
        let lambda = params.identity_weight as f64;
        for (i, w) in adapter.weight.iter().enumerate() {
            let delta = *w as f64 - if i / d == i % d { 1.0 } else { 0.0 };
            loss += 0.5 * lambda * delta * delta;
        }
        loss + adapter
            .bias
            .iter()
            .map(|b| 0.5 * lambda * (*b as f64).powi(2))
            .sum::<f64>()
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let (d, k, rows) = (5, 4, 6);
        let mut rng = Rng::new(11);
        let mut adapter = LinearAdapter::identity(d);
        // Move off the identity so that every term of the gradient is exercised.
        adapter
            .weight
            .iter_mut()
            .for_each(|w| *w += 0.2 * rng.next_gaussian() as f32);
        adapter
            .bias
            .iter_mut()
            .for_each(|b| *b += 0.2 * rng.next_gaussian() as f32);
        let protos = unit_prototypes(&random(&mut rng, k * d), d);
        let (v0, v1) = (random(&mut rng, rows * d), random(&mut rng, rows * d));
        let params = SwappedParams {
            temperature: 0.5,
            identity_weight: 0.3,
            ..Default::default()
        };
        let q0 = codes(&adapter, &v0, &protos, &params);
        let q1 = codes(&adapter, &v1, &protos, &params);
        let (loss, grad) = loss_and_grad(&adapter, [&v0, &v1], [&q0, &q1], &protos, &params);
        let exact = loss_f64(&adapter, [&v0, &v1], [&q0, &q1], &protos, &params);
        assert!((loss as f64 - exact).abs() < 1e-4, "{loss} vs {exact}");
        let h = 1e-3f32;
        let numeric = |a: &LinearAdapter| loss_f64(a, [&v0, &v1], [&q0, &q1], &protos, &params);
        let mut worst = 0.0f64;
        for i in 0..d * d + d {
            let (mut plus, mut minus) = (adapter.clone(), adapter.clone());
            let analytic = if i < d * d {
                plus.weight[i] += h;
                minus.weight[i] -= h;
                grad.weight[i]
            } else {
                plus.bias[i - d * d] += h;
                minus.bias[i - d * d] -= h;
                grad.bias[i - d * d]
            };
            let fd = (numeric(&plus) - numeric(&minus)) / (2.0 * h as f64);
            worst = worst.max((fd - analytic as f64).abs());
        }
        assert!(worst < 2e-4, "largest gradient error {worst}");
    }

    #[test]
    fn steps_lower_the_loss_and_spread_a_crowded_batch() {
        // Frames crowded near one prototype: the balanced codes pull them apart.
        let (d, k, rows) = (8, 4, 64);
        let mut rng = Rng::new(2);
        let protos = unit_prototypes(&random(&mut rng, k * d), d);
        let view = |rng: &mut Rng, base: &[f32]| -> Vec<f32> {
            base.iter()
                .map(|v| v + 0.05 * rng.next_gaussian() as f32)
                .collect()
        };
        let base: Vec<f32> = (0..rows)
            .flat_map(|_| {
                let noise = random(&mut rng, d);
                (0..d)
                    .map(|i| protos[i] + 0.3 * noise[i])
                    .collect::<Vec<_>>()
            })
            .collect();
        let (v0, v1) = (view(&mut rng, &base), view(&mut rng, &base));
        let mut adapter = LinearAdapter::identity(d);
        let params = SwappedParams {
            identity_weight: 0.0,
            learning_rate: 0.5,
            ..Default::default()
        };
        let clusters_used = |a: &LinearAdapter| {
            let f = forward(a, &base, &protos);
            let mut used = vec![false; k];
            for row in f.scores.chunks_exact(k) {
                let best = (0..k).max_by(|&x, &y| row[x].total_cmp(&row[y])).unwrap();
                used[best] = true;
            }
            used.iter().filter(|u| **u).count()
        };
        let before = clusters_used(&adapter);
        let first = step(&mut adapter, [&v0, &v1], &protos, &params);
        let mut last = first;
        for _ in 0..200 {
            last = step(&mut adapter, [&v0, &v1], &protos, &params);
        }
        assert!(last < first, "loss {first} -> {last}");
        assert!(
            clusters_used(&adapter) > before,
            "{before} clusters used before"
        );
    }
}
