//! Drivers generic over the embedded-hal 1.0 and embedded-io traits, so one firmware runs on
//! any HAL (and on the host, with mock pins, in the tests).

mod camera;
mod led;
mod link;
mod sync;

pub use camera::CameraTrigger;
pub use led::{Pattern, StatusLed};
pub use link::{Link, LinkError};
pub use sync::FrameSync;

#[cfg(test)]
mod tests;
