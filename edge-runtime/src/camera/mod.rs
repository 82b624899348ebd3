//! Live cameras as a frame source: `--input v4l2:/dev/videoN` (feature `v4l2`).

pub mod frame;
#[cfg(feature = "v4l2")]
mod v4l2;

#[cfg(feature = "v4l2")]
pub use self::v4l2::V4l2Camera;

/// Why a camera could not be opened or a frame not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CameraError {
    #[error("{call}: {source}")]
    Io {
        /// What was being done: the ioctl, or opening the device.
        call: &'static str,
        source: std::io::Error,
    },
    #[error("{card} ({driver}) is not a streaming capture device")]
    NotCapture { card: String, driver: String },
    #[error(
        "offers none of the pixel formats we decode (GREY, YUYV, RGB3, BGR3, MJPG): {offered}"
    )]
    NoKnownFormat { offered: String },
    #[error("the driver switched to {0} instead")]
    FormatSwitched(String),
    #[error("frame {sequence}: {source}")]
    Frame {
        sequence: u32,
        source: frame::FrameError,
    },
    /// Resizing or converting a decoded frame (`models::data::image_pixels`) failed.
    #[error("frame {sequence}: {source}")]
    Pixels {
        sequence: u32,
        #[source]
        source: models::data::DecodeError,
    },
}

/// The prefix that names a V4L2 device as input.
pub const V4L2_PREFIX: &str = "v4l2:";

/// `v4l2:/dev/video0` -> `/dev/video0`; anything else is not a camera.
pub fn v4l2_device(input: &str) -> Option<&str> {
    input.strip_prefix(V4L2_PREFIX).filter(|p| !p.is_empty())
}
