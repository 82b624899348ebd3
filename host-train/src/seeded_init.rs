//! Initial weights from a seeded generator.
//!
//! candle draws a `VarBuilder`'s initial values from its CPU generator, which cannot be
//! seeded (`Device::Cpu.set_seed` fails), so two runs with the same `--seed` started from
//! different weights (an untrained small-cnn's kNN moved between 0.733 and 0.750). This
//! backend fills a `VarMap` with the distributions candle would use, each variable from a
//! generator seeded by the run's seed and the variable's name: the same seed gives the same
//! weights, whatever order the variables are created in.

use candle_core::{bail, DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use models::rng::Rng;

/// A `VarBuilder` whose new variables go into `vars`, drawn from generators seeded by `seed`.
pub fn seeded_var_builder(
    vars: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend = SeededInit {
        vars: vars.clone(),
        seed,
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

struct SeededInit {
    vars: VarMap,
    seed: u64,
}

impl SimpleBackend for SeededInit {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut vars = self.vars.data().lock().expect("VarMap lock");
        if let Some(var) = vars.get(name) {
            if var.shape() != &s {
                bail!("shape mismatch on {name}: {s:?} <> {:?}", var.shape());
            }
            return Ok(var.as_tensor().clone());
        }
        let mut rng = Rng::new(self.seed ^ fnv1a(name));
        let values = draw(&h, &s, &mut rng);
        let var = Var::from_tensor(
            &Tensor::from_vec(values, s, &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(dev)?,
        )?;
        let tensor = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        bail!("{name}: a seeded VarMap creates variables with `get`, not `get_unchecked`")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars
            .data()
            .lock()
            .expect("VarMap lock")
            .contains_key(name)
    }
}

/// `shape.elem_count()` values of `init`'s distribution, with candle's parameters.
fn draw(init: &Init, shape: &Shape, rng: &mut Rng) -> Vec<f32> {
    let n = shape.elem_count();
    let uniform = |rng: &mut Rng, lo: f64, up: f64| (lo + (up - lo) * rng.next_f64()) as f32;
    match *init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => (0..n).map(|_| uniform(rng, lo, up)).collect(),
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| (mean + stdev * normal(rng)) as f32)
            .collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n).map(|_| uniform(rng, -bound, bound)).collect()
                }
                NormalOrUniform::Normal => (0..n).map(|_| (std * normal(rng)) as f32).collect(),
            }
        }
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut Rng) -> f64 {
    let u1 = 1.0 - rng.next_f64(); // (0, 1]: ln stays finite
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// FNV-1a: a hash of the variable's name that no Rust release changes.
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoders::Arch;

    fn untrained(seed: u64) -> (VarMap, Vec<f32>) {
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu);
        let net = Arch::SmallCnn.build((1, 28, 28), 16, false, vb).unwrap();
        let x = Tensor::arange(0f32, 2.0 * 784.0, &Device::Cpu)
            .unwrap()
            .affine(1.0 / 1568.0, -0.5)
            .unwrap()
            .reshape((2, 1, 28, 28))
            .unwrap();
        let y = net.forward_t(&x, false).unwrap();
        (vm, y.flatten_all().unwrap().to_vec1().unwrap())
    }

    #[test]
    fn the_seed_fixes_the_initial_weights() {
        let (_, a) = untrained(7);
        let (_, b) = untrained(7);
        let (_, c) = untrained(8);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn draws_follow_candles_distributions() {
        let (vm, _) = untrained(1);
        let vars = vm.data().lock().unwrap();
        let values = |name: &str| -> Vec<f32> {
            vars[name]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        // Kaiming normal on block1's 3x3 conv: fan-in 32 * 9, gain sqrt(2).
        let w = values("block1.conv.weight");
        let mean = w.iter().map(|&v| f64::from(v)).sum::<f64>() / w.len() as f64;
        let std = (w
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / w.len() as f64)
            .sqrt();
        let want = (2.0f64 / 288.0).sqrt();
        assert!(mean.abs() < 0.1 * want, "mean {mean}");
        assert!((std / want - 1.0).abs() < 0.05, "std {std} vs {want}");
        // BatchNorm's scale starts at 1, and names that differ get different draws.
        assert!(values("block0.bn.weight").iter().all(|&v| v == 1.0));
        assert_ne!(
            values("block1.conv.weight")[..9],
            values("block2.conv.weight")[..9]
        );
    }

    #[test]
    fn an_existing_variable_is_returned_and_its_shape_checked() {
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, 3, DType::F32, &Device::Cpu);
        let a = vb
            .get_with_hints((4, 2), "w", candle_nn::init::DEFAULT_KAIMING_NORMAL)
            .unwrap();
        let b = vb.get_with_hints((4, 2), "w", Init::Const(0.0)).unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        let err = vb
            .get_with_hints((2, 4), "w", Init::Const(0.0))
            .unwrap_err();
        assert!(err.to_string().contains("shape mismatch on w"), "{err}");
    }
}
