//! The default backend: tract, pure Rust. The model is typed with the batch made concrete,
//! two of its op kinds swapped for faster forms (2x2 max pools, [`super::tract_pool`]; 3x3
//! convolutions of few input channels, [`super::tract_conv`]), then optimised; the input and
//! output shapes are checked against the manifest.

use std::sync::{Mutex, TryLockError};

use tract_linalg::multithread::{multithread_tract_scope, par_chunks_mut, Executor};
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
        prepare(model, options, true)
    }
}

/// `bytes` (ONNX) typed for NCHW input `[batch, c, h, w]` and optimised. With `swap_ops`,
/// plain 2x2 max pools and 3x3 convolutions of few input channels run as this crate's ops
/// (`false` keeps tract's own, for comparison). Also returns how many ops were swapped.
pub fn optimized_model(
    bytes: &[u8],
    input: [usize; 4],
    swap_ops: bool,
) -> TractResult<(TypedModel, usize)> {
    optimize(
        tract_onnx::onnx().model_for_read(&mut &*bytes)?,
        input,
        swap_ops,
    )
}

/// [`optimized_model`] of an already parsed model.
fn optimize(
    model: InferenceModel,
    input: [usize; 4],
    swap_ops: bool,
) -> TractResult<(TypedModel, usize)> {
    // Decluttered first, so QDQ weights are folded into constants the swaps can read.
    let mut typed = model
        .with_input_fact(0, f32::fact(input).into())?
        .into_typed()?
        .into_decluttered()?;
    let mut swapped = 0;
    if swap_ops {
        swapped += super::tract_pool::use_fast_max_pools(&mut typed)?;
        swapped += super::tract_conv::use_direct_convs(&mut typed)?;
    }
    Ok((typed.into_optimized()?, swapped))
}

/// Splits each matrix product of a one-image run in as many chunks as threads, not tract's
/// default four per thread: a frame's products are small (64x288x196 and 128x576x49 on the
/// default model), and every extra chunk packs its share of the lazy im2col input again.
/// One image on two threads: 5,141 -> 5,930 frames/s (`./scripts/bench-edge`). Set as a
/// process-wide config, below the environment, so `TRACT_MMM_CHUNKS_PER_THREAD` still wins;
/// a different value already configured by the host program is kept.
fn one_chunk_per_thread() {
    // An error only says another value was configured first: that one stays.
    let _ = tract_onnx::tract_core::knobs::set_config_global("TRACT_MMM_CHUNKS_PER_THREAD", "1");
}

fn prepare(
    model: &ModelBundle,
    options: &PrepareOptions,
    swap_ops: bool,
) -> Result<Box<dyn Runnable>, EdgeError> {
    let err = |e: TractError| EdgeError::Model {
        path: model.path.clone(),
        source: e.into(),
    };
    let [c, h, w] = model.manifest.input_chw();
    let batch = options.batch.max(1);
    // The plan takes one image at a time: at batch 16 tract switches to an explicit im2col
    // that made each image 1.3x slower than alone (examples/tract_profile). Threads run
    // images side by side, each with its own state.
    let plan_batch = 1;
    let inference = tract_onnx::onnx()
        .model_for_read(&mut model.bytes.as_slice())
        .map_err(err)?;
    check_declared_input(&inference, model, [c, h, w])?;
    let (typed, _) = optimize(inference, [plan_batch, c, h, w], swap_ops).map_err(err)?;
    let out = typed
        .output_fact(0)
        .map_err(err)?
        .shape
        .as_concrete()
        .map(|s| s.to_vec());
    let dim = model.manifest.embedding.dim as usize;
    if out.as_deref() != Some(&[plan_batch, dim][..]) {
        return Err(shape_error(
            model,
            "output shape",
            vec![plan_batch, dim],
            out.unwrap_or_default(),
        ));
    }
    let plan = typed.into_runnable().map_err(err)?;
    // States are kept: spawning one per run costs allocations each time.
    let states = (0..options.threads.max(1))
        .map(|_| plan.spawn().map(Mutex::new))
        .collect::<TractResult<Vec<_>>>()
        .map_err(err)?;
    let executor = (options.threads > 1).then(|| {
        one_chunk_per_thread();
        Executor::multithread(options.threads)
    });
    Ok(Box::new(TractRunnable {
        states,
        executor,
        shape: BatchShape {
            batch,
            chw: [c, h, w],
            dim,
        },
    }))
}

/// The ONNX file's own input declaration must agree with the manifest (batch left free).
fn check_declared_input(
    model: &InferenceModel,
    bundle: &ModelBundle,
    chw: [usize; 3],
) -> Result<(), EdgeError> {
    let fact = model.input_fact(0).map_err(|e| EdgeError::Model {
        path: bundle.path.clone(),
        source: e.into(),
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
    /// One plan state per thread; each plan runs one image.
    states: Vec<Mutex<TypedSimpleState>>,
    /// tract's thread pool, with more than one thread: a batch's images go over its threads,
    /// and a single image's matrix products and direct convolutions are split over them.
    executor: Option<Executor>,
    shape: BatchShape,
}

impl TractRunnable {
    fn run_one(
        &self,
        state: &mut TypedSimpleState,
        image: &[f32],
        out: &mut [f32],
    ) -> Result<(), EdgeError> {
        let [c, h, w] = self.shape.chw;
        let inputs = tvec!(Tensor::from_shape(&[1, c, h, w], image)
            .map_err(inference_error)?
            .into_tvalue());
        let result = state.run(inputs).map_err(inference_error)?;
        let view = result[0]
            .to_plain_array_view::<f32>()
            .map_err(inference_error)?;
        for (o, v) in out.iter_mut().zip(view.iter()) {
            *o = *v;
        }
        Ok(())
    }

    /// `f` on one of the pool's own threads with the pool installed as tract's executor, so
    /// the splits inside run on that thread and its siblings: one hand-over per run rather
    /// than one per matrix product (the caller would otherwise sit idle, a third thread on
    /// two cores, while the pool is woken for every product). The siblings are kept awake
    /// through a one-image run by [`with_siblings_polling`].
    fn on_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.executor {
            Some(ex @ Executor::MultiThread(pool)) => {
                pool.install(|| multithread_tract_scope(ex.clone(), f))
            }
            _ => f(),
        }
    }

    /// A state no other thread holds: there are as many states as pool threads, and each
    /// thread holds at most one at a time.
    fn free_state(&self) -> std::sync::MutexGuard<'_, TypedSimpleState> {
        loop {
            for state in &self.states {
                match state.try_lock() {
                    Ok(guard) => return guard,
                    Err(TryLockError::Poisoned(e)) => return e.into_inner(),
                    Err(TryLockError::WouldBlock) => {}
                }
            }
            std::thread::yield_now();
        }
    }
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
        let (per, dim) = (self.shape.image_len(), self.shape.dim);
        let mut out = vec![0f32; n * dim];
        if n == 1 || self.executor.is_none() {
            // One image at a time, each split over the pool's threads (if any).
            return self.on_pool(|| {
                with_siblings_polling(|| {
                    let mut state = self.free_state();
                    for (image, o) in images.chunks_exact(per).zip(out.chunks_exact_mut(dim)) {
                        self.run_one(&mut state, image, o)?;
                    }
                    Ok(out)
                })
            });
        }
        // Several images: whole images go to the pool's threads, each image on one thread
        // (the splits inside it stay off: the images already fill the threads).
        let failure = Mutex::new(None);
        let split = self.on_pool(|| {
            par_chunks_mut(&mut out, dim, usize::MAX, |first, outs| {
                multithread_tract_scope(Executor::SingleThread, || {
                    let mut state = self.free_state();
                    let images = &images[first * per..][..outs.len() / dim * per];
                    for (image, o) in images.chunks_exact(per).zip(outs.chunks_exact_mut(dim)) {
                        if let Err(e) = self.run_one(&mut state, image, o) {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            return Err(TractError::msg("stopped"));
                        }
                    }
                    Ok(())
                })
            })
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        split.map_err(inference_error)?;
        Ok(out)
    }
}

/// `f` while the pool's other threads poll for work instead of going to sleep between the
/// run's parallel steps. A one-image run splits each op anew, every few microseconds; a
/// sleeping thread takes about as long to wake as a whole op takes, so the caller would do
/// most of each split alone.
fn with_siblings_polling<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Off the pool (one thread, no executor) there is nobody to keep awake.
    let Some(caller) = rayon::current_thread_index() else {
        return f();
    };
    let siblings = rayon::current_num_threads().saturating_sub(1);
    let done = std::sync::atomic::AtomicBool::new(false);
    let poll = || {
        // The caller may pick up its own polling job while it waits inside `f` for a split
        // to finish: it must not spin there for the `done` that only `f`'s end sets.
        if rayon::current_thread_index() == Some(caller) {
            return;
        }
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    };
    rayon::scope(|scope| {
        for _ in 0..siblings {
            scope.spawn(|_| poll());
        }
        let result = f();
        done.store(true, std::sync::atomic::Ordering::Release);
        result
    })
}

fn inference_error(e: TractError) -> EdgeError {
    EdgeError::Inference {
        backend: NAME,
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::manifest::Precision;

    /// The swapped ops must change nothing but the time: both precisions, a short batch.
    /// (Pools are exact; the direct convolution sums in another order.)
    #[test]
    fn swapped_ops_give_the_same_embeddings() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/fashion-mnist-small-cnn");
        for precision in [Precision::Fp32, Precision::Int8] {
            let bundle = ModelBundle::load(&dir, precision).unwrap();
            let options = PrepareOptions {
                batch: 4,
                threads: 1,
            };
            let [c, h, w] = bundle.manifest.input_chw();
            let (typed, swapped) = optimized_model(&bundle.bytes, [4, c, h, w], true).unwrap();
            assert_eq!(
                swapped, 3,
                "two 2x2 pools and the 1-channel first convolution"
            );
            // The first pool is taken into the convolution before it, the second stays.
            let ops: Vec<_> = typed.nodes().iter().map(|n| n.op().name()).collect();
            let count = |name: &str| ops.iter().filter(|o| *o == name).count();
            assert_eq!(count("DirectConv3x3+MaxPool2x2Relu"), 1, "{ops:?}");
            assert_eq!(count("MaxPool2x2Relu"), 1, "{ops:?}");
            let fast = prepare(&bundle, &options, true).unwrap();
            let two_threads = PrepareOptions {
                batch: 4,
                threads: 2,
            };
            let parallel = prepare(&bundle, &two_threads, true).unwrap();
            let stock = prepare(&bundle, &options, false).unwrap();
            let len = bundle.manifest.input_chw().iter().product::<usize>();
            let mut rng = models::rng::Rng::new(7);
            let images: Vec<f32> = (0..3 * len)
                .map(|_| rng.next_f64() as f32 * 4.0 - 2.0)
                .collect();
            let (a, b) = (
                fast.run(&images, 3).unwrap(),
                stock.run(&images, 3).unwrap(),
            );
            // Images split across threads come back in order, exactly as on one thread.
            assert_eq!(parallel.run(&images, 3).unwrap(), a);
            assert_eq!(parallel.run(&images[..len], 1).unwrap(), a[..a.len() / 3]);
            // Many one-image runs back to back, the sibling thread polling through each: the
            // same result every time, and no run waits on a poller.
            for _ in 0..200 {
                let again = parallel.run(&images[len..2 * len], 1).unwrap();
                assert_eq!(again, a[a.len() / 3..2 * a.len() / 3]);
            }
            assert_eq!(a.len(), 3 * bundle.manifest.embedding.dim as usize);
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max);
            assert!(
                worst <= 1e-5 * scale.max(1.0),
                "{precision:?}: {worst} (scale {scale})"
            );
        }
    }
}
