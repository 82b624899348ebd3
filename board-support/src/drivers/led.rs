//! The status LED: blinks a cluster id, or a fast alert for a novel frame.

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;

/// What the LED shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Pattern {
    /// `id % 8 + 1` slow blinks, then a pause: readable by eye.
    Cluster(u32),
    /// Five fast blinks.
    Novelty,
}

impl Pattern {
    /// (blinks, on ms, off ms, pause ms after).
    pub fn timing(self) -> (u32, u32, u32, u32) {
        match self {
            Pattern::Cluster(id) => (id % 8 + 1, 150, 150, 600),
            Pattern::Novelty => (5, 50, 50, 300),
        }
    }
}

#[derive(Debug)]
pub struct StatusLed<P, D> {
    pin: P,
    delay: D,
}

impl<P: OutputPin, D: DelayNs> StatusLed<P, D> {
    pub fn new(mut pin: P, delay: D) -> Result<Self, P::Error> {
        pin.set_low()?;
        Ok(Self { pin, delay })
    }

    /// Plays `pattern` once (blocking) and leaves the LED off.
    pub fn show(&mut self, pattern: Pattern) -> Result<(), P::Error> {
        let (blinks, on, off, pause) = pattern.timing();
        for _ in 0..blinks {
            self.pin.set_high()?;
            self.delay.delay_ms(on);
            self.pin.set_low()?;
            self.delay.delay_ms(off);
        }
        self.delay.delay_ms(pause);
        Ok(())
    }

    pub fn release(self) -> (P, D) {
        (self.pin, self.delay)
    }
}
