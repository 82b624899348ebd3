//! Opening the device that training runs on.

use candle_core::{Device, Result};

/// CUDA device `ordinal`, set up for host-train: every op runs on candle's one stream per
/// device, so the per-tensor CUDA events that guard against cross-stream use are switched
/// off (they cost an event record per operand of every op).
pub fn cuda(ordinal: usize) -> Result<Device> {
    let dev = Device::new_cuda(ordinal)?;
    #[cfg(feature = "cuda")]
    // SAFETY: host-train creates no other stream; all work is ordered on the device's one.
    unsafe {
        dev.as_cuda_device()?.disable_event_tracking();
    }
    Ok(dev)
}
