//! Rockchip NPUs through rknn-rs and Rockchip's `librknnrt.so` (feature `rknn`).
//!
//! The runtime runs a `.rknn` file converted from the bundle's fp32 ONNX by rknn-toolkit2
//! (`scripts/export-rknn`); [`RknnModel::open`] checks it belongs to the manifest first.
//! Preprocessing stays ours (the conversion sets mean 0 and std 1), so every backend sees the
//! same tensors; they go in as f32 NHWC and the runtime quantises them as the model asks.
//! librknnrt is linked at build time: set `RKNN_LIB_DIR` to the folder that holds it (the
//! board's `/usr/lib`, or a copy of it in a cross sysroot).

use rknn_rs::prelude::{Rknn, RknnCoreMask, RknnTensorFormat, RknnTensorType};

use super::rknn_card::{self, InputLayout, RknnModel};
use super::{BatchShape, PrepareOptions, Runnable, Runtime};
use crate::bundle::ModelBundle;
use crate::EdgeError;

const NAME: &str = "rknn";

fn inference_error(e: rknn_rs::prelude::Error) -> EdgeError {
    EdgeError::Inference {
        backend: NAME,
        source: e.to_string().into(),
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RknnRuntime;

impl Runtime for RknnRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn prepare(
        &self,
        model: &ModelBundle,
        options: &PrepareOptions,
    ) -> Result<Box<dyn Runnable>, EdgeError> {
        let path = rknn_card::rknn_path(model);
        let npu_model = RknnModel::open(model, &path)?;
        let model_error = |message: String| EdgeError::Model {
            path: path.clone(),
            source: message.into(),
        };
        let rknn = Rknn::new(&npu_model.path).map_err(|e| model_error(e.to_string()))?;
        let info = rknn.model_info().map_err(|e| model_error(e.to_string()))?;
        if info.io_num.n_input != 1 || info.io_num.n_output != 1 {
            return Err(model_error(format!(
                "expected one input and one output, found {} and {}",
                info.io_num.n_input, info.io_num.n_output
            )));
        }
        let input = &info.input_attrs[0];
        let layout = match input.fmt {
            RknnTensorFormat::NCHW => InputLayout::Nchw,
            _ => InputLayout::Nhwc,
        };
        let chw = model.manifest.input_chw();
        let model_batch =
            rknn_card::model_batch(&input.dims, layout, chw).map_err(|(expected, actual)| {
                model_error(format!(
                    "input is {actual:?} ({layout:?}, batch dropped), but the manifest says \
                     {expected:?}"
                ))
            })?;
        let dim = model.manifest.embedding.dim as usize;
        let output = &info.output_attrs[0];
        if output.n_elems as usize != model_batch * dim {
            return Err(model_error(format!(
                "output has {} values, expected batch {model_batch} x {dim}",
                output.n_elems
            )));
        }
        let mask = match rknn_card::core_mask_bits(options.threads) {
            0 => RknnCoreMask::Auto,
            3 => RknnCoreMask::Core0_1,
            _ => RknnCoreMask::Core0_1_2,
        };
        if options.threads > 1 {
            // Only multi-core NPUs (RK3588, RK3576) accept this; say so instead of failing later.
            rknn.set_core_mask(mask).map_err(|e| {
                model_error(format!(
                    "{e}: {} NPU cores requested; this SoC may have fewer",
                    options.threads
                ))
            })?;
        }
        Ok(Box::new(RknnRunnable {
            rknn,
            layout,
            model_batch,
            shape: BatchShape {
                batch: options.batch.max(1),
                chw,
                dim,
            },
        }))
    }
}

struct RknnRunnable {
    rknn: Rknn,
    layout: InputLayout,
    /// The batch the `.rknn` file was converted with; a run goes through it in steps.
    model_batch: usize,
    shape: BatchShape,
}

impl Runnable for RknnRunnable {
    fn batch(&self) -> usize {
        self.shape.batch
    }

    fn embed_dim(&self) -> usize {
        self.shape.dim
    }

    fn run(&self, images: &[f32], n: usize) -> Result<Vec<f32>, EdgeError> {
        self.shape.check(images, n)?;
        let per = self.shape.image_len();
        let dim = self.shape.dim;
        let mut out = Vec::with_capacity(n * dim);
        for chunk in images.chunks(self.model_batch * per) {
            let k = chunk.len() / per;
            // Fixed shapes: pad a short step with zeros and drop the extra rows after.
            let mut data = chunk.to_vec();
            data.resize(self.model_batch * per, 0.0);
            let (data, fmt) = match self.layout {
                InputLayout::Nchw => (data, RknnTensorFormat::NCHW),
                InputLayout::Nhwc => (
                    rknn_card::nchw_to_nhwc(&data, self.model_batch, self.shape.chw),
                    RknnTensorFormat::NHWC,
                ),
            };
            self.rknn
                .input_set_slice(0, &data, false, RknnTensorType::Float32, fmt)
                .map_err(inference_error)?;
            self.rknn.run().map_err(inference_error)?;
            let values = self.rknn.outputs_get::<f32>().map_err(inference_error)?;
            if values.len() != self.model_batch * dim {
                return Err(EdgeError::InputShape {
                    what: "rknn output".into(),
                    expected: self.model_batch * dim,
                    actual: values.len(),
                });
            }
            out.extend_from_slice(&values[..k * dim]);
        }
        Ok(out)
    }
}
