//! host-train's own CUDA kernels (`*.cu` beside the code that launches them), compiled by
//! NVRTC on first use and loaded into candle's device, so a build needs no extra nvcc step.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::cuda::cudarc::driver::CudaFunction;
use candle_core::cuda::CudaDevice;
use candle_core::{bail, Result};

static PTX: Mutex<Option<HashMap<&'static str, String>>> = Mutex::new(None);

/// Function `name` of the kernel module `module` (its CUDA C source `source`); launch it on
/// the device's stream (`dev.cuda_stream().launch_builder(&f)`).
pub fn function(
    dev: &CudaDevice,
    module: &'static str,
    source: &'static str,
    name: &str,
) -> Result<CudaFunction> {
    let mut cache = PTX.lock().expect("not poisoned");
    let cache = cache.get_or_insert_with(HashMap::new);
    if !cache.contains_key(module) {
        match candle_core::cuda::cudarc::nvrtc::compile_ptx(source) {
            Ok(ptx) => cache.insert(module, ptx.to_src()),
            Err(e) => bail!("NVRTC could not compile {module}: {e}"),
        };
    }
    Ok(dev
        .get_or_load_custom_func(name, module, &cache[module])?
        .into_cuda_function())
}

/// One thread per element, 256 to a block.
pub fn elementwise(n: usize) -> candle_core::cuda::cudarc::driver::LaunchConfig {
    candle_core::cuda::cudarc::driver::LaunchConfig {
        grid_dim: ((n as u32).div_ceil(256).max(1), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}
