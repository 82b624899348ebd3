//! The MCU application: fire the camera (on its own schedule or when the board asks), tell the
//! board when the camera's frame-sync edge says the frame is exposed, and show each cluster
//! event on the status LED. HAL-agnostic and non-blocking: the firmware
//! calls [`Companion::on_byte`] for every UART byte and [`Companion::poll`] in its main loop;
//! the hardware-in-the-loop simulation runs this same code with host pins and a pty.

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{self, InputPin, OutputPin};
use embedded_io::Write;
use heapless::Deque;

use crate::drivers::{CameraTrigger, FrameSync, Pattern, StatusLed};
use crate::session::{Session, SessionConfig, SessionError, SessionEvent};
use crate::wire::{Command, Message, Role, WireError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CompanionConfig {
    /// A `Status` message this often while connected.
    pub status_every_ms: u32,
    /// The first frame id of this boot. Firmware with a reset counter (a backup register)
    /// can start each boot in its own range, so that events resent after a reset for frames
    /// of the previous boot cannot be mistaken for new ones.
    pub first_frame_id: u32,
    pub session: SessionConfig,
}

impl Default for CompanionConfig {
    fn default() -> Self {
        Self {
            status_every_ms: 1000,
            first_frame_id: 0,
            session: SessionConfig::default(),
        }
    }
}

/// What happened, for the firmware's logs and the simulation's checks.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Activity {
    /// The camera fired for `frame_id`, because the board asked.
    Triggered { frame_id: u32 },
    /// The frame-sync edge came; `FrameReady` is on its way to the board.
    FrameReady { frame_id: u32 },
    /// Everything else the link did: the handshake, a message from the board (a
    /// `ClusterEvent` is acknowledged and already on the LED), an ack or refusal of ours, a
    /// damaged frame.
    Session(SessionEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CompanionError {
    Pin(digital::ErrorKind),
    Io(embedded_io::ErrorKind),
    Wire(WireError),
    /// Too many messages or frames wait; the trigger was not fired.
    OutboxFull,
}

impl core::fmt::Display for CompanionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CompanionError::Pin(k) => write!(f, "pin: {k:?}"),
            CompanionError::Io(k) => write!(f, "link I/O: {k:?}"),
            CompanionError::Wire(e) => write!(f, "link framing: {e}"),
            CompanionError::OutboxFull => f.write_str("too many messages wait; trigger not fired"),
        }
    }
}

impl core::error::Error for CompanionError {}

impl<E: embedded_io::Error> From<SessionError<E>> for CompanionError {
    fn from(e: SessionError<E>) -> Self {
        match e {
            SessionError::Io(e) => CompanionError::Io(e.kind()),
            SessionError::Wire(e) => CompanionError::Wire(e),
            SessionError::OutboxFull => CompanionError::OutboxFull,
        }
    }
}

fn pin_error<E: digital::Error>(e: E) -> CompanionError {
    CompanionError::Pin(e.kind())
}

/// Frames fired but not yet exposed, or exposed but not yet announced.
const FRAMES_IN_FLIGHT: usize = 4;

/// The companion: camera pin `C` with its delay `CD`, LED pin `L`, frame-sync input `S` (the
/// camera's strobe / frame-valid output), and up to `N` unacknowledged messages.
#[derive(Debug)]
pub struct Companion<C, CD, L, LD, S, const N: usize = 8> {
    session: Session<N>,
    camera: CameraTrigger<C, CD>,
    led: StatusLed<L, LD>,
    sync: FrameSync<S>,
    config: CompanionConfig,
    boot_ms: u32,
    last_status_ms: u32,
    next_frame_id: u32,
    /// Fired, waiting for the frame-sync edge.
    exposing: Deque<u32, FRAMES_IN_FLIGHT>,
    /// Exposed, waiting for outbox room to send `FrameReady`.
    exposed: Deque<u32, FRAMES_IN_FLIGHT>,
    temperature_centi_c: i16,
}

impl<C, CD, L, LD, S, const N: usize> Companion<C, CD, L, LD, S, N>
where
    C: OutputPin,
    CD: DelayNs,
    L: OutputPin,
    S: InputPin,
{
    pub fn new(
        camera: CameraTrigger<C, CD>,
        led: StatusLed<L, LD>,
        sync: FrameSync<S>,
        config: CompanionConfig,
        now_ms: u32,
    ) -> Self {
        Self {
            session: Session::new(Role::Mcu, config.session),
            camera,
            led,
            sync,
            config,
            boot_ms: now_ms,
            last_status_ms: now_ms,
            next_frame_id: config.first_frame_id,
            exposing: Deque::new(),
            exposed: Deque::new(),
            temperature_centi_c: 0,
        }
    }

    /// Greets the board (at boot, and after a link reset).
    pub fn start<W: Write>(&mut self, now_ms: u32, tx: &mut W) -> Result<(), CompanionError> {
        Ok(self.session.connect(now_ms, tx)?)
    }

    /// Takes one byte from the board's link.
    pub fn on_byte<W: Write>(
        &mut self,
        byte: u8,
        now_ms: u32,
        tx: &mut W,
    ) -> Result<Option<Activity>, CompanionError> {
        let Some(event) = self.session.push(byte, now_ms, tx)? else {
            return Ok(None);
        };
        if let SessionEvent::Received { message, .. } = event {
            if let Some(activity) = self.on_message(message, now_ms)? {
                return Ok(Some(activity));
            }
        }
        Ok(Some(Activity::Session(event)))
    }

    /// The main-loop tick: LED pattern, resends, the frame-sync input, periodic status.
    pub fn poll<W: Write>(
        &mut self,
        now_ms: u32,
        tx: &mut W,
    ) -> Result<Option<Activity>, CompanionError> {
        self.led.poll(now_ms).map_err(pin_error)?;
        self.session.poll(now_ms, tx)?;
        if self.sync.poll().map_err(pin_error)? {
            match self.exposing.pop_front() {
                // Cannot fail: both queues have the same capacity and a frame is in one.
                Some(frame_id) => {
                    let _ = self.exposed.push_back(frame_id);
                }
                None => warn!("frame-sync edge without a trigger"),
            }
        }
        if self.session.is_connected() && self.session.has_room() {
            if let Some(frame_id) = self.exposed.pop_front() {
                self.session
                    .send(Message::FrameReady { frame_id }, now_ms, tx)?;
                return Ok(Some(Activity::FrameReady { frame_id }));
            }
        }
        if self.session.is_connected()
            && now_ms.wrapping_sub(self.last_status_ms) >= self.config.status_every_ms
        {
            self.last_status_ms = now_ms;
            let status = Message::Status {
                uptime_ms: now_ms.wrapping_sub(self.boot_ms),
                temperature_centi_c: self.temperature_centi_c,
                // The bank lives on the board; the MCU reports none.
                bank_fill_permille: 0,
            };
            self.session.send(status, now_ms, tx)?;
        }
        Ok(None)
    }

    /// Fires the camera on the MCU's own schedule (a timer, a button); returns the frame id.
    /// Refuses (without firing) while too many frames wait.
    pub fn trigger(&mut self) -> Result<u32, CompanionError> {
        let frame_id = self.next_frame_id;
        self.fire(frame_id)?;
        self.next_frame_id = self.next_frame_id.wrapping_add(1);
        Ok(frame_id)
    }

    fn fire(&mut self, frame_id: u32) -> Result<(), CompanionError> {
        if self.exposing.len() + self.exposed.len() >= FRAMES_IN_FLIGHT {
            return Err(CompanionError::OutboxFull);
        }
        self.camera.fire().map_err(pin_error)?;
        let _ = self.exposing.push_back(frame_id);
        debug!("fired frame {}", frame_id);
        Ok(())
    }

    /// Sends a command to the board's clustering (a button, a host tool).
    pub fn command<W: Write>(
        &mut self,
        command: Command,
        now_ms: u32,
        tx: &mut W,
    ) -> Result<u16, CompanionError> {
        Ok(self.session.send(Message::Command(command), now_ms, tx)?)
    }

    /// The on-die sensor's reading, for the next `Status`.
    pub fn set_temperature(&mut self, centi_c: i16) {
        self.temperature_centi_c = centi_c;
    }

    pub fn session(&self) -> &Session<N> {
        &self.session
    }

    pub fn led_is_playing(&self) -> bool {
        self.led.is_playing()
    }

    pub fn release(self) -> (CameraTrigger<C, CD>, StatusLed<L, LD>, FrameSync<S>) {
        (self.camera, self.led, self.sync)
    }

    /// Acts on a message from the board; a camera fired at its request is reported as such.
    fn on_message(
        &mut self,
        message: Message,
        now_ms: u32,
    ) -> Result<Option<Activity>, CompanionError> {
        match message {
            Message::ClusterEvent {
                cluster_id, novel, ..
            } => {
                let pattern = if novel {
                    Pattern::Novelty
                } else {
                    Pattern::Cluster(cluster_id)
                };
                self.led.play(pattern, now_ms).map_err(pin_error)?;
            }
            // The board asks for a frame (its own schedule). Too many in flight: skip this one;
            // the board's ClusterEvent for it never comes and its schedule goes on.
            Message::CaptureTrigger { frame_id, .. } => match self.fire(frame_id) {
                Ok(()) => return Ok(Some(Activity::Triggered { frame_id })),
                Err(CompanionError::OutboxFull) => {
                    warn!("board trigger {} skipped: frames in flight", frame_id)
                }
                Err(e) => return Err(e),
            },
            // Status is only reported; commands go to the board.
            _ => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
