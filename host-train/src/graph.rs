//! The inference graph of an encoder with BatchNorm folded into the convolutions: a list of
//! layers (residual blocks nest two more) that the ONNX writer, the calibrator and the parity
//! checks all read. Convs and linears are numbered in [`FoldedGraph::quantized`] order, the
//! order the calibrator observes them and the writer quantises them.

use candle_core::{Device, Result, Tensor};

use crate::ops::{conv2d, instance_norm, max_pool2d, max_pool_2x2, Conv2dGeometry};

/// A layer of the exported graph. Convs and linears are the quantised layers.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    Conv(Conv),
    Relu,
    MaxPool2x2,
    /// Max over `kernel x kernel` windows every `stride` pixels, no padding (AlexNet's 3/2).
    MaxPool {
        kernel: usize,
        stride: usize,
    },
    /// (b, c, h, w) -> (b, c*h*w).
    Flatten,
    /// Mean over height and width, then flatten: (b, c, h, w) -> (b, c).
    GlobalAvgPool,
    Linear(Linear),
    /// Each image's channels normalised by their own spatial mean and variance, then
    /// `scale * x + bias` per channel (ONNX `InstanceNormalization`).
    InstanceNorm(InstanceNorm),
    /// `body(x) + shortcut(x)`: ResNet's basic block before its last ReLU.
    Residual(Residual),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Residual {
    pub body: Vec<Layer>,
    /// Empty: the identity.
    pub shortcut: Vec<Layer>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    pub name: String,
    /// `[out, in, kh, kw]`, row-major.
    pub weight: Vec<f32>,
    pub shape: [usize; 4],
    pub bias: Option<Vec<f32>>,
    pub stride: usize,
    pub padding: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub name: String,
    /// `[out, in]`, row-major (PyTorch's layout; ONNX Gemm with transB = 1).
    pub weight: Vec<f32>,
    pub out_features: usize,
    pub in_features: usize,
    pub bias: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceNorm {
    pub name: String,
    pub scale: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f64,
}

/// An encoder ready to export: input `(c, h, w)`, layers in order, output `(b, embed_dim)`.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedGraph {
    pub input_chw: [usize; 3],
    pub layers: Vec<Layer>,
    pub embed_dim: usize,
}

impl Layer {
    /// The weight name of a quantised layer.
    pub fn quantized_name(&self) -> Option<&str> {
        match self {
            Layer::Conv(c) => Some(&c.name),
            Layer::Linear(l) => Some(&l.name),
            _ => None,
        }
    }
}

impl Conv {
    /// Folds `y = relu?(bn(conv(x)))` with eval-mode statistics into one conv with bias:
    /// `w' = w * gamma / sqrt(var + eps)` per output channel, `b' = beta + (b - mean) * scale`.
    pub fn fold_batch_norm(mut self, bn: &BatchNormParams) -> Self {
        let out = self.shape[0];
        let per = self.weight.len() / out;
        let mut bias = self.bias.take().unwrap_or_else(|| vec![0.0; out]);
        for o in 0..out {
            let scale = bn.gamma[o] as f64 / (bn.var[o] as f64 + bn.eps).sqrt();
            self.weight[o * per..(o + 1) * per]
                .iter_mut()
                .for_each(|w| *w = (*w as f64 * scale) as f32);
            bias[o] = (bn.beta[o] as f64 + (bias[o] as f64 - bn.mean[o] as f64) * scale) as f32;
        }
        self.bias = Some(bias);
        self
    }
}

/// Eval-mode BatchNorm parameters of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormParams {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub eps: f64,
}

impl FoldedGraph {
    /// Runs the graph in candle, calling `observe(k, input)` before the `k`-th conv or linear
    /// of [`Self::quantized`] (the calibrator's hook). Returns the embedding `(b, embed_dim)`.
    pub fn forward(
        &self,
        x: &Tensor,
        mut observe: impl FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let mut next = 0;
        run_layers(&self.layers, x, &mut observe, &mut next)
    }

    /// Every conv and linear, in the order `forward` observes them.
    pub fn quantized(&self) -> Vec<&Layer> {
        fn walk<'a>(layers: &'a [Layer], out: &mut Vec<&'a Layer>) {
            for l in layers {
                match l {
                    Layer::Conv(_) | Layer::Linear(_) => out.push(l),
                    Layer::Residual(r) => {
                        walk(&r.body, out);
                        walk(&r.shortcut, out);
                    }
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.layers, &mut out);
        out
    }
}

/// `layers` on `x`; `next` numbers the convs and linears as they come.
fn run_layers(
    layers: &[Layer],
    x: &Tensor,
    observe: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
    next: &mut usize,
) -> Result<Tensor> {
    let dev = x.device();
    let mut x = x.clone();
    for layer in layers {
        x = match layer {
            Layer::Conv(c) => {
                observe(*next, &x)?;
                *next += 1;
                let w = Tensor::from_slice(&c.weight, c.shape.as_slice(), dev)?;
                let geometry = Conv2dGeometry {
                    stride: c.stride,
                    padding: c.padding,
                };
                let y = conv2d(&x, &w, geometry)?;
                match &c.bias {
                    Some(b) => y.broadcast_add(&bias(b, dev)?.reshape((1, (), 1, 1))?)?,
                    None => y,
                }
            }
            Layer::Relu => x.relu()?,
            Layer::MaxPool2x2 => max_pool_2x2(&x)?,
            Layer::MaxPool { kernel, stride } => max_pool2d(&x, *kernel, *stride)?,
            Layer::Flatten => x.flatten_from(1)?,
            Layer::GlobalAvgPool => x.mean((2, 3))?,
            Layer::InstanceNorm(n) => {
                instance_norm(&x, &bias(&n.scale, dev)?, &bias(&n.bias, dev)?, n.eps)?
            }
            Layer::Linear(l) => {
                observe(*next, &x)?;
                *next += 1;
                let w = Tensor::from_slice(&l.weight, (l.out_features, l.in_features), dev)?;
                x.matmul(&w.t()?)?.broadcast_add(&bias(&l.bias, dev)?)?
            }
            Layer::Residual(r) => {
                let body = run_layers(&r.body, &x, observe, next)?;
                let shortcut = run_layers(&r.shortcut, &x, observe, next)?;
                (body + shortcut)?
            }
        };
    }
    Ok(x)
}

fn bias(b: &[f32], dev: &Device) -> Result<Tensor> {
    Tensor::from_slice(b, b.len(), dev)
}
