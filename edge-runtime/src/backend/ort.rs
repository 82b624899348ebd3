//! onnxruntime through the `ort` crate, loaded at run time: [`OrtRuntime::new`] (or
//! `ORT_DYLIB_PATH`) points at a `libonnxruntime.so`, such as the one in the PyPI wheel
//! (`site-packages/onnxruntime/capi/libonnxruntime.so.*`). Nothing is downloaded or linked at
//! build time, so the default build stays pure Rust.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::Tensor;

use super::{BatchShape, PrepareOptions, Runnable, Runtime};
use crate::bundle::ModelBundle;
use crate::error::LibraryError;
use crate::EdgeError;

const NAME: &str = "onnxruntime";

fn inference_error(e: impl Into<LibraryError>) -> EdgeError {
    EdgeError::Inference {
        backend: NAME,
        source: e.into(),
    }
}

/// onnxruntime allows one environment per process, and a library once loaded stays.
static LOADED: OnceLock<OrtRuntime> = OnceLock::new();

#[derive(Debug, Clone)]
pub struct OrtRuntime {
    env: Environment,
    library: PathBuf,
    provider: Provider,
}

/// Which onnxruntime execution provider runs the model. A GPU provider that the library lacks,
/// or that fails to register (no CUDA, no TensorRT libraries), is an error: never a silent
/// fall-back to the CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Provider {
    #[default]
    Cpu,
    Cuda {
        device: i32,
    },
    TensorRt(TensorRtOptions),
}

/// What Jetson users set for TensorRT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TensorRtOptions {
    pub device: i32,
    /// Let TensorRT pick fp16 kernels.
    pub fp16: bool,
    /// int8 kernels: the Q/DQ scales of an int8 (QDQ) model, or this calibration table for an
    /// fp32 one.
    pub int8: bool,
    pub int8_calibration_table: Option<PathBuf>,
    /// Where built engines are kept, so a restart skips the (minutes-long) engine build.
    pub engine_cache: Option<PathBuf>,
}

impl Provider {
    /// onnxruntime's name for it.
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda { .. } => "CUDAExecutionProvider",
            Provider::TensorRt(_) => "TensorrtExecutionProvider",
        }
    }

    fn dispatch(&self) -> Option<ExecutionProviderDispatch> {
        match self {
            Provider::Cpu => None,
            Provider::Cuda { device } => Some(ep::CUDA::default().with_device_id(*device).build()),
            Provider::TensorRt(o) => {
                let mut trt = ep::TensorRT::default()
                    .with_device_id(o.device)
                    .with_fp16(o.fp16)
                    .with_int8(o.int8 || o.int8_calibration_table.is_some());
                if let Some(table) = &o.int8_calibration_table {
                    trt = trt.with_int8_calibration_table_name(table.display());
                }
                if let Some(dir) = &o.engine_cache {
                    trt = trt
                        .with_engine_cache(true)
                        .with_engine_cache_path(dir.display())
                        .with_timing_cache(true)
                        .with_timing_cache_path(dir.display());
                }
                Some(trt.build())
            }
        }
        .map(ExecutionProviderDispatch::error_on_failure)
    }

    fn available(&self) -> Result<bool, ort::Error> {
        use ort::ep::ExecutionProvider;
        match self {
            Provider::Cpu => Ok(true),
            Provider::Cuda { .. } => ep::CUDA::is_available(),
            Provider::TensorRt(_) => ep::TensorRT::is_available(),
        }
    }
}

impl OrtRuntime {
    /// Loads onnxruntime from `library`; later calls with the same path share it, and a
    /// different path is refused (one library per process).
    pub fn new(library: &Path) -> Result<Self, EdgeError> {
        if let Some(loaded) = LOADED.get() {
            if loaded.library == library {
                return Ok(loaded.clone());
            }
            return Err(EdgeError::Model {
                path: library.to_path_buf(),
                source: format!(
                    "onnxruntime is already loaded from {}; one library per process",
                    loaded.library.display()
                )
                .into(),
            });
        }
        let env = ort::init_from(library)
            .map_err(|e| EdgeError::Model {
                path: library.to_path_buf(),
                source: format!("cannot load onnxruntime: {e}").into(),
            })?
            .with_name("edge-runtime")
            .build()
            .map_err(inference_error)?;
        let runtime = Self {
            env,
            library: library.to_path_buf(),
            provider: Provider::Cpu,
        };
        // Two threads racing here: the loser's environment is dropped, the winner's kept.
        Ok(LOADED.get_or_init(|| runtime).clone())
    }

    /// The library named by `ORT_DYLIB_PATH`.
    pub fn from_env() -> Result<Self, EdgeError> {
        let path = std::env::var_os("ORT_DYLIB_PATH").ok_or_else(|| EdgeError::Inference {
            backend: NAME,
            source: "set ORT_DYLIB_PATH to a libonnxruntime.so (pip install onnxruntime ships \
                     one in onnxruntime/capi/)"
                .into(),
        })?;
        Self::new(Path::new(&path))
    }

    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The same library, running models on `provider`.
    pub fn with_provider(mut self, provider: Provider) -> Self {
        self.provider = provider;
        self
    }

    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    fn provider_error(&self, source: LibraryError) -> EdgeError {
        EdgeError::ProviderUnavailable {
            provider: self.provider.name(),
            library: self.library.clone(),
            source,
        }
    }

    /// `builder` with the chosen provider registered; an error when it cannot be.
    fn register(&self, builder: SessionBuilder) -> Result<SessionBuilder, EdgeError> {
        let Some(dispatch) = self.provider.dispatch() else {
            return Ok(builder);
        };
        match self.provider.available() {
            Ok(true) => {}
            Ok(false) => {
                return Err(self.provider_error(
                    "this onnxruntime build does not include it (the PyPI `onnxruntime` wheel \
                     is CPU-only; use onnxruntime-gpu, or JetPack's build on a Jetson)"
                        .into(),
                ))
            }
            Err(e) => return Err(self.provider_error(e.into())),
        }
        builder
            .with_execution_providers([dispatch])
            .map_err(|e| self.provider_error(e.to_string().into()))
    }
}

impl Runtime for OrtRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn prepare(
        &self,
        model: &ModelBundle,
        options: &PrepareOptions,
    ) -> Result<Box<dyn Runnable>, EdgeError> {
        let model_error = |e: LibraryError| EdgeError::Model {
            path: model.path.clone(),
            source: e,
        };
        let builder = Session::builder(&self.env).map_err(|e| model_error(e.into()))?;
        let session = self
            .register(builder)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| model_error(e.to_string().into()))?
            .with_intra_threads(options.threads.max(1))
            .map_err(|e| model_error(e.to_string().into()))?
            .commit_from_memory(&model.bytes)
            .map_err(|e| model_error(e.into()))?;
        let (inputs, outputs) = (session.inputs(), session.outputs());
        if inputs.len() != 1 || outputs.len() != 1 {
            return Err(model_error(
                format!(
                    "expected one input and one output, found {} and {}",
                    inputs.len(),
                    outputs.len()
                )
                .into(),
            ));
        }
        let input = inputs[0].name().to_string();
        Ok(Box::new(OrtRunnable {
            session: Mutex::new(session),
            input,
            shape: BatchShape {
                batch: options.batch.max(1),
                chw: model.manifest.input_chw(),
                dim: model.manifest.embedding.dim as usize,
            },
        }))
    }
}

struct OrtRunnable {
    /// `Session::run` takes `&mut self`; one run at a time, as with tract's plan.
    session: Mutex<Session>,
    input: String,
    shape: BatchShape,
}

impl Runnable for OrtRunnable {
    fn batch(&self) -> usize {
        self.shape.batch
    }

    fn embed_dim(&self) -> usize {
        self.shape.dim
    }

    fn run(&self, images: &[f32], n: usize) -> Result<Vec<f32>, EdgeError> {
        self.shape.check(images, n)?;
        if n == 0 {
            return Ok(Vec::new()); // onnxruntime has no use for an empty batch.
        }
        let BatchShape {
            chw: [c, h, w],
            dim,
            ..
        } = self.shape;
        // The exported graph's batch is symbolic: a short last batch needs no padding.
        let tensor =
            Tensor::from_array(([n, c, h, w], images.to_vec())).map_err(inference_error)?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(inference_error)?;
        let (_, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(inference_error)?;
        if values.len() != n * dim {
            return Err(EdgeError::InputShape {
                what: "onnxruntime output".into(),
                expected: n * dim,
                actual: values.len(),
            });
        }
        Ok(values.to_vec())
    }
}
