//! A frame-sync (or button) input: reports each rising edge once.

use embedded_hal::digital::InputPin;

#[derive(Debug)]
pub struct FrameSync<I> {
    pin: I,
    was_high: bool,
}

impl<I: InputPin> FrameSync<I> {
    pub fn new(mut pin: I) -> Result<Self, I::Error> {
        let was_high = pin.is_high()?;
        Ok(Self { pin, was_high })
    }

    /// True once per low-to-high transition since the last poll.
    pub fn poll(&mut self) -> Result<bool, I::Error> {
        let high = self.pin.is_high()?;
        let rising = high && !self.was_high;
        self.was_high = high;
        Ok(rising)
    }

    pub fn release(self) -> I {
        self.pin
    }
}
