//! Frames from a V4L2 capture device (`--input v4l2:/dev/video0`), through the `v4l` crate:
//! memory-mapped streaming, the first pixel format the device offers in
//! [`PixelFormat::PREFERENCE`], at the device's current frame size.

use std::time::Duration;

use models::data::{image_pixels, ImageFolderOptions};
use v4l::buffer::Type;
use v4l::capability::Flags;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::frame::{decode_frame, FrameLayout, PixelFormat};
use super::CameraError;
use crate::EdgeError;

/// Buffers the driver fills in turn: enough to capture while one is being embedded.
const BUFFERS: u32 = 4;

pub struct V4l2Camera {
    path: String,
    layout: FrameLayout,
    opts: ImageFolderOptions,
    // Declared before `device`, so it is dropped (and the stream stopped) first.
    stream: Stream<'static>,
    _device: Device,
}

impl std::fmt::Debug for V4l2Camera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Camera")
            .field("path", &self.path)
            .field("layout", &self.layout)
            .finish()
    }
}

impl V4l2Camera {
    /// Opens `path` for streaming capture; frames come out at `opts`' size and colour.
    pub fn open(path: &str, opts: ImageFolderOptions) -> Result<Self, EdgeError> {
        let err = |source: CameraError| EdgeError::Camera {
            device: path.into(),
            source,
        };
        let io = |call: &'static str, source: std::io::Error| err(CameraError::Io { call, source });
        let device = Device::with_path(path).map_err(|e| io("cannot open the camera", e))?;
        let caps = device.query_caps().map_err(|e| io("VIDIOC_QUERYCAP", e))?;
        if !caps
            .capabilities
            .contains(Flags::VIDEO_CAPTURE | Flags::STREAMING)
        {
            return Err(err(CameraError::NotCapture {
                card: caps.card,
                driver: caps.driver,
            }));
        }
        let offered: Vec<[u8; 4]> = device
            .enum_formats()
            .map_err(|e| io("VIDIOC_ENUM_FMT", e))?
            .iter()
            .map(|d| d.fourcc.repr)
            .collect();
        let format = PixelFormat::PREFERENCE
            .into_iter()
            .find(|f| offered.contains(&f.fourcc()))
            .ok_or_else(|| {
                err(CameraError::NoKnownFormat {
                    offered: offered
                        .iter()
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            })?;
        let mut fmt = device.format().map_err(|e| io("VIDIOC_G_FMT", e))?;
        fmt.fourcc = FourCC::new(&format.fourcc());
        let fmt = device.set_format(&fmt).map_err(|e| io("VIDIOC_S_FMT", e))?;
        let format = PixelFormat::from_fourcc(fmt.fourcc.repr).ok_or_else(|| {
            err(CameraError::FormatSwitched(
                String::from_utf8_lossy(&fmt.fourcc.repr).into_owned(),
            ))
        })?;
        let mut stream = Stream::with_buffers(&device, Type::VideoCapture, BUFFERS)
            .map_err(|e| io("VIDIOC_REQBUFS / mmap", e))?;
        // A camera that stops delivering is an error, not a hang.
        stream.set_timeout(Duration::from_secs(5));
        Ok(Self {
            path: path.into(),
            layout: FrameLayout {
                format,
                width: fmt.width,
                height: fmt.height,
                stride: fmt.stride,
            },
            opts,
            stream,
            _device: device,
        })
    }

    pub fn layout(&self) -> FrameLayout {
        self.layout
    }

    /// The next frame as the model's planar u8 pixels, and the driver's sequence number.
    /// A damaged buffer is an error for that frame only; the stream goes on.
    pub fn next_frame(&mut self) -> Result<(Vec<u8>, u32), EdgeError> {
        let err = |source: CameraError| EdgeError::Camera {
            device: self.path.clone(),
            source,
        };
        let (buf, meta) = self.stream.next().map_err(|source| {
            err(CameraError::Io {
                call: "VIDIOC_DQBUF",
                source,
            })
        })?;
        let used = (meta.bytesused as usize).min(buf.len());
        let sequence = meta.sequence;
        let img = decode_frame(&self.layout, &buf[..used])
            .map_err(|source| err(CameraError::Frame { sequence, source }))?;
        let pixels = image_pixels(img, &self.opts)
            .map_err(|source| err(CameraError::Pixels { sequence, source }))?;
        Ok((pixels, sequence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::data::{ColorMode, ResizeMode};

    fn opts() -> ImageFolderOptions {
        ImageFolderOptions {
            width: 28,
            height: 28,
            color: ColorMode::Gray,
            resize: ResizeMode::ShorterSideCenterCrop,
            skip_bad: false,
        }
    }

    #[test]
    fn missing_and_non_camera_devices_are_clear_errors() {
        let e = V4l2Camera::open("/dev/video-missing", opts())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/dev/video-missing: cannot open the camera"),
            "{e}"
        );
        // A character device that answers no V4L2 ioctl.
        let e = V4l2Camera::open("/dev/null", opts())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/dev/null: VIDIOC_QUERYCAP"), "{e}");
    }
}
