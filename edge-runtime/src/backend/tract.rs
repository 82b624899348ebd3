//! The default backend: tract, pure Rust. The model is typed with the batch made concrete,
//! then optimised; the input and output shapes are checked against the manifest.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::{BatchShape, PrepareOptions, Runnable, Runtime};
use crate::bundle::ModelBundle;
use crate::EdgeError;

const NAME: &str = "tract";

#[derive(Debug, Clone, Copy, Default)]
pub struct TractRuntime;

impl Runtime for TractRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn prepare(
        &self,
        model: &ModelBundle,
        options: &PrepareOptions,
    ) -> Result<Box<dyn Runnable>, EdgeError> {
        let err = |e: TractError| EdgeError::Model {
            path: model.path.clone(),
            message: format!("{e:#}"),
        };
        let [c, h, w] = model.manifest.input_chw();
        let batch = options.batch.max(1);
        let inference = tract_onnx::onnx()
            .model_for_read(&mut model.bytes.as_slice())
            .map_err(err)?;
        check_declared_input(&inference, model, [c, h, w])?;
        let typed = inference
            .with_input_fact(0, f32::fact([batch, c, h, w]).into())
            .map_err(err)?
            .into_optimized()
            .map_err(err)?;
        let out = typed
            .output_fact(0)
            .map_err(err)?
            .shape
            .as_concrete()
            .map(|s| s.to_vec());
        let dim = model.manifest.embedding.dim as usize;
        if out.as_deref() != Some(&[batch, dim][..]) {
            return Err(shape_error(
                model,
                "output shape",
                vec![batch, dim],
                out.unwrap_or_default(),
            ));
        }
        let plan = typed.into_runnable().map_err(err)?;
        let executor = (options.threads > 1)
            .then(|| tract_linalg::multithread::Executor::multithread(options.threads));
        Ok(Box::new(TractRunnable {
            plan,
            executor,
            shape: BatchShape {
                batch,
                chw: [c, h, w],
                dim,
            },
        }))
    }
}

/// The ONNX file's own input declaration must agree with the manifest (batch left free).
fn check_declared_input(
    model: &InferenceModel,
    bundle: &ModelBundle,
    chw: [usize; 3],
) -> Result<(), EdgeError> {
    let fact = model.input_fact(0).map_err(|e| EdgeError::Model {
        path: bundle.path.clone(),
        message: format!("{e:#}"),
    })?;
    let dims: Vec<Option<usize>> = fact
        .shape
        .dims()
        .map(|d| d.concretize().and_then(|d| d.as_i64().map(|v| v as usize)))
        .collect();
    let declared: Vec<usize> = dims.iter().skip(1).map(|d| d.unwrap_or(0)).collect();
    if dims.len() != 4 || declared != chw {
        return Err(shape_error(
            bundle,
            "input shape (c, h, w)",
            chw.to_vec(),
            declared,
        ));
    }
    Ok(())
}

fn shape_error(
    bundle: &ModelBundle,
    what: &str,
    expected: Vec<usize>,
    actual: Vec<usize>,
) -> EdgeError {
    EdgeError::Manifest {
        path: bundle.path.clone(),
        source: models::manifest::ManifestError::Shape {
            file: bundle.file().file.clone(),
            what: what.into(),
            expected,
            actual,
        },
    }
}

struct TractRunnable {
    plan: Arc<TypedRunnableModel>,
    /// A private thread pool for tract's matrix products, when more than one thread.
    executor: Option<tract_linalg::multithread::Executor>,
    shape: BatchShape,
}

impl Runnable for TractRunnable {
    fn batch(&self) -> usize {
        self.shape.batch
    }

    fn embed_dim(&self) -> usize {
        self.shape.dim
    }

    fn run(&self, images: &[f32], n: usize) -> Result<Vec<f32>, EdgeError> {
        self.shape.check(images, n)?;
        let BatchShape { batch, chw, dim } = self.shape;
        // Shapes are concrete: pad a short batch with zeros and drop the extra rows after.
        let mut data = images.to_vec();
        data.resize(batch * self.shape.image_len(), 0.0);
        let [c, h, w] = chw;
        let err = |e: TractError| EdgeError::Inference {
            backend: NAME,
            message: format!("{e:#}"),
        };
        let input = Tensor::from_shape(&[batch, c, h, w], &data).map_err(err)?;
        let inputs = tvec!(input.into_tvalue());
        let out = match &self.executor {
            Some(ex) => tract_linalg::multithread::multithread_tract_scope(ex.clone(), || {
                self.plan.run(inputs)
            }),
            None => self.plan.run(inputs),
        }
        .map_err(err)?;
        let view = out[0].to_plain_array_view::<f32>().map_err(err)?;
        Ok(view.iter().take(n * dim).copied().collect())
    }
}
