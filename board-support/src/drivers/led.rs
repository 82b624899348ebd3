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
    playing: Option<Playback>,
}

/// Where a non-blocking pattern is: `step` 2b is blink b's on phase, 2b+1 its off phase,
/// 2*blinks the pause.
#[derive(Debug, Clone, Copy)]
struct Playback {
    pattern: Pattern,
    step: u32,
    until_ms: u32,
}

impl<P: OutputPin, D> StatusLed<P, D> {
    pub fn new(mut pin: P, delay: D) -> Result<Self, P::Error> {
        pin.set_low()?;
        Ok(Self {
            pin,
            delay,
            playing: None,
        })
    }

    /// Starts `pattern` without blocking (replacing one that is playing); [`Self::poll`]
    /// moves it on. Firmware uses this so the UART keeps being read while the LED blinks.
    pub fn play(&mut self, pattern: Pattern, now_ms: u32) -> Result<(), P::Error> {
        let (_, on, _, _) = pattern.timing();
        self.pin.set_high()?;
        self.playing = Some(Playback {
            pattern,
            step: 0,
            until_ms: now_ms.wrapping_add(on),
        });
        Ok(())
    }

    /// Advances a pattern started by [`Self::play`]; true while it still plays.
    pub fn poll(&mut self, now_ms: u32) -> Result<bool, P::Error> {
        while let Some(pb) = self.playing.as_mut() {
            // Wrapping clock: "now is at or after until_ms".
            if (now_ms.wrapping_sub(pb.until_ms) as i32) < 0 {
                break;
            }
            let (blinks, on, off, pause) = pb.pattern.timing();
            pb.step += 1;
            let step = pb.step;
            if step == 2 * blinks + 1 {
                self.playing = None;
            } else if step % 2 == 1 {
                self.pin.set_low()?;
                let wait = if step == 2 * blinks - 1 {
                    off + pause
                } else {
                    off
                };
                // The last off phase runs into the pause; skip the pause step's own edge.
                if step == 2 * blinks - 1 {
                    pb.step += 1;
                }
                pb.until_ms = pb.until_ms.wrapping_add(wait);
            } else {
                self.pin.set_high()?;
                pb.until_ms = pb.until_ms.wrapping_add(on);
            }
        }
        Ok(self.playing.is_some())
    }

    pub fn is_playing(&self) -> bool {
        self.playing.is_some()
    }

    pub fn release(self) -> (P, D) {
        (self.pin, self.delay)
    }
}

impl<P: OutputPin, D: DelayNs> StatusLed<P, D> {
    /// Plays `pattern` once (blocking) and leaves the LED off.
    pub fn show(&mut self, pattern: Pattern) -> Result<(), P::Error> {
        self.playing = None;
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
}
