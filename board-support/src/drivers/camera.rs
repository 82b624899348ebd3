//! The camera trigger: one pulse on an output pin.

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;

#[derive(Debug)]
pub struct CameraTrigger<P, D> {
    pin: P,
    delay: D,
    pulse_us: u32,
}

impl<P: OutputPin, D: DelayNs> CameraTrigger<P, D> {
    /// Drives the pin low (idle) and keeps it for pulses of `pulse_us` microseconds.
    pub fn new(mut pin: P, delay: D, pulse_us: u32) -> Result<Self, P::Error> {
        pin.set_low()?;
        Ok(Self {
            pin,
            delay,
            pulse_us,
        })
    }

    /// One active-high pulse: the camera starts its exposure on the rising edge.
    pub fn fire(&mut self) -> Result<(), P::Error> {
        self.pin.set_high()?;
        self.delay.delay_us(self.pulse_us);
        self.pin.set_low()
    }

    pub fn release(self) -> (P, D) {
        (self.pin, self.delay)
    }
}
