//! Live cameras as a frame source: `--input v4l2:/dev/videoN` (feature `v4l2`).

pub mod frame;
#[cfg(feature = "v4l2")]
mod v4l2;

#[cfg(feature = "v4l2")]
pub use self::v4l2::V4l2Camera;

/// The prefix that names a V4L2 device as input.
pub const V4L2_PREFIX: &str = "v4l2:";

/// `v4l2:/dev/video0` -> `/dev/video0`; anything else is not a camera.
pub fn v4l2_device(input: &str) -> Option<&str> {
    input.strip_prefix(V4L2_PREFIX).filter(|p| !p.is_empty())
}
