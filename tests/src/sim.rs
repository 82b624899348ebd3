//! A simulated MCU for the hardware-in-the-loop tests: board-support's real `Companion`
//! running on the host, with host pins (the camera's frame-sync output follows the trigger
//! pin, as a real camera's strobe does) and one end of a pty as its UART, optionally through
//! a noisy line.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use board_support::companion::{Activity, Companion, CompanionConfig};
use board_support::drivers::{CameraTrigger, FrameSync, StatusLed};
use board_support::session::{SessionEvent, SessionStats};
use board_support::wire::{Command, Message};
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use serialport::TTYPort;

/// An output pin that counts its rising edges.
#[derive(Debug, Clone, Default)]
pub struct SimOut {
    high: Arc<AtomicBool>,
    pub rises: Arc<AtomicU32>,
}

impl ErrorType for SimOut {
    type Error = Infallible;
}

impl OutputPin for SimOut {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.high.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Infallible> {
        if !self.high.swap(true, Ordering::Relaxed) {
            self.rises.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The camera's frame-sync output: high for one poll per trigger pulse not yet reported.
#[derive(Debug)]
pub struct SimFrameSync {
    pulses: Arc<AtomicU32>,
    reported: u32,
    was_high: bool,
}

impl ErrorType for SimFrameSync {
    type Error = Infallible;
}

impl InputPin for SimFrameSync {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        let high = !self.was_high && self.reported < self.pulses.load(Ordering::Relaxed);
        self.reported += u32::from(high);
        self.was_high = high;
        Ok(high)
    }

    fn is_low(&mut self) -> Result<bool, Infallible> {
        self.is_high().map(|h| !h)
    }
}

/// The trigger pulse is microseconds; the simulation does not wait for it.
#[derive(Debug)]
pub struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

/// Line noise, per byte in each direction: a flipped bit, a dropped byte, or a burst of 2-8
/// random bytes inserted.
#[derive(Debug, Clone, Copy)]
pub struct Noise {
    pub flip: f64,
    pub drop: f64,
    pub burst: f64,
    pub seed: u64,
}

impl Noise {
    /// 1% of bytes damaged, split between the three kinds.
    pub fn one_percent(seed: u64) -> Self {
        Self {
            flip: 0.005,
            drop: 0.003,
            burst: 0.002,
            seed,
        }
    }
}

/// The MCU's UART: a pty end, with noise on both directions.
#[derive(Debug)]
pub struct NoisyPort {
    port: TTYPort,
    noise: Option<Noise>,
    rng: u64,
    pub damaged_bytes: u64,
}

impl NoisyPort {
    pub fn new(port: TTYPort, noise: Option<Noise>) -> Self {
        let rng = noise.map_or(1, |n| n.seed | 1);
        Self {
            port,
            noise,
            rng,
            damaged_bytes: 0,
        }
    }

    fn uniform(&mut self) -> f64 {
        // xorshift64*: reproducible noise from the seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `bytes` as the line delivers them.
    fn corrupt(&mut self, bytes: &[u8]) -> Vec<u8> {
        let Some(n) = self.noise else {
            return bytes.to_vec();
        };
        let mut out = Vec::with_capacity(bytes.len() + 8);
        for &b in bytes {
            let u = self.uniform();
            if u < n.flip {
                self.damaged_bytes += 1;
                out.push(b ^ (1 << (self.uniform() * 8.0) as u32));
            } else if u < n.flip + n.drop {
                self.damaged_bytes += 1;
            } else if u < n.flip + n.drop + n.burst {
                self.damaged_bytes += 1;
                let len = 2 + (self.uniform() * 7.0) as usize;
                out.push(b);
                out.extend((0..len).map(|_| (self.uniform() * 256.0) as u8));
            } else {
                out.push(b);
            }
        }
        out
    }

    /// Reads what arrived (waiting up to the port's timeout), noise applied.
    fn read_some(&mut self, buf: &mut [u8]) -> Vec<u8> {
        match self.port.read(buf) {
            Ok(n) => {
                let got = buf[..n].to_vec();
                self.corrupt(&got)
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => vec![],
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                vec![]
            }
        }
    }
}

impl embedded_io::ErrorType for NoisyPort {
    type Error = std::io::Error;
}

impl embedded_io::Write for NoisyPort {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        let line = self.corrupt(buf);
        self.port.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.port.flush()
    }
}

/// What the simulated MCU is asked to do.
#[derive(Debug, Clone)]
pub struct McuScript {
    /// Frames to trigger (across boots).
    pub frames: u32,
    pub trigger_every: Duration,
    /// Reset the MCU (a new `Companion`, a new handshake) after this many cluster events.
    pub reset_after_events: Option<usize>,
    /// Send this command once this many cluster events have arrived.
    pub command_after_events: Option<(usize, Command)>,
    pub noise: Option<Noise>,
    /// Give up after this long.
    pub deadline: Duration,
}

/// What the simulated MCU saw. Frame ids are `boot * 1_000_000 + n`.
#[derive(Debug, Default)]
pub struct McuLog {
    pub boots: u32,
    pub fired: BTreeSet<u32>,
    /// Frames whose `FrameReady` the board acknowledged.
    pub announced: BTreeSet<u32>,
    /// Cluster events handed to the application (each acknowledged), first copy.
    pub events: Vec<(u32, u32, bool)>,
    pub handshakes: u32,
    pub camera_pulses: u32,
    pub led_blinks: u32,
    pub commands_delivered: u32,
    pub stats: Vec<SessionStats>,
    pub damaged_bytes: u64,
    pub timed_out: bool,
}

impl McuLog {
    pub fn event_frames(&self) -> BTreeSet<u32> {
        self.events.iter().map(|e| e.0).collect()
    }
}

/// How long the MCU keeps answering after its script is done.
const LINGER: Duration = Duration::from_millis(400);

type SimCompanion = Companion<SimOut, NoDelay, SimOut, (), SimFrameSync, 8>;

fn boot(camera: &SimOut, led: &SimOut, first_frame_id: u32, now: u32) -> SimCompanion {
    let sync = SimFrameSync {
        pulses: Arc::clone(&camera.rises),
        reported: camera.rises.load(Ordering::Relaxed),
        was_high: false,
    };
    let config = CompanionConfig {
        first_frame_id,
        ..Default::default()
    };
    Companion::new(
        CameraTrigger::new(camera.clone(), NoDelay, 100).unwrap_or_else(|e| match e {}),
        StatusLed::new(led.clone(), ()).unwrap_or_else(|e| match e {}),
        FrameSync::new(sync).unwrap_or_else(|e| match e {}),
        config,
        now,
    )
}

/// Runs the MCU on `port` until every announced frame has its cluster event and `frames`
/// were fired, or the deadline.
pub fn run_mcu(mut port: TTYPort, script: &McuScript) -> McuLog {
    serialport::SerialPort::set_timeout(&mut port, Duration::from_millis(2)).expect("pty timeout");
    let mut io = NoisyPort::new(port, script.noise);
    let (camera, led) = (SimOut::default(), SimOut::default());
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_millis() as u32;
    let mut log = McuLog::default();
    let mut mcu = boot(&camera, &led, 0, now());
    mcu.start(now(), &mut io).expect("hello");
    let mut next_trigger = Instant::now();
    let mut command_sent = false;
    let mut buf = [0u8; 256];
    let mut done_at: Option<Instant> = None;
    loop {
        let done = log.fired.len() as u32 >= script.frames
            && log.announced.is_subset(&log.event_frames())
            && log.announced.len() == log.fired.len();
        // Once done, stay on the line a little: an ack the noise ate is asked for again.
        match (done, done_at) {
            (true, None) => done_at = Some(Instant::now()),
            (true, Some(t)) if t.elapsed() > LINGER => break,
            _ => {}
        }
        if epoch.elapsed() > script.deadline {
            log.timed_out = true;
            break;
        }
        for b in io.read_some(&mut buf) {
            if let Ok(Some(a)) = mcu.on_byte(b, now(), &mut io) {
                record(&mut log, a);
            }
        }
        if let Ok(Some(a)) = mcu.poll(now(), &mut io) {
            record(&mut log, a);
        }
        if mcu.session().is_connected()
            && (log.fired.len() as u32) < script.frames
            && Instant::now() >= next_trigger
        {
            if let Ok(id) = mcu.trigger() {
                log.fired.insert(id);
                next_trigger = Instant::now() + script.trigger_every;
            }
        }
        if let Some((after, command)) = script.command_after_events {
            if !command_sent
                && log.events.len() >= after
                && mcu.command(command, now(), &mut io).is_ok()
            {
                command_sent = true;
            }
        }
        if script
            .reset_after_events
            .is_some_and(|n| log.events.len() >= n)
            && log.boots == 0
        {
            // Power-cycle: state and unsent frames are gone; frames it fired but never
            // announced will never get an event, so they leave the books.
            log.stats.push(mcu.session().stats());
            let lost: Vec<u32> = log.fired.difference(&log.announced).copied().collect();
            for id in lost {
                log.fired.remove(&id);
            }
            log.boots = 1;
            mcu = boot(&camera, &led, 1_000_000, now());
            mcu.start(now(), &mut io).expect("hello");
        }
    }
    log.stats.push(mcu.session().stats());
    log.camera_pulses = camera.rises.load(Ordering::Relaxed);
    log.led_blinks = led.rises.load(Ordering::Relaxed);
    log.damaged_bytes = io.damaged_bytes;
    log
}

fn record(log: &mut McuLog, activity: Activity) {
    let Activity::Session(event) = activity else {
        return;
    };
    match event {
        SessionEvent::Connected { .. } => log.handshakes += 1,
        SessionEvent::Received {
            message:
                Message::ClusterEvent {
                    frame_id,
                    cluster_id,
                    novel,
                    ..
                },
            ..
        } if !log.events.iter().any(|e| e.0 == frame_id) => {
            log.events.push((frame_id, cluster_id, novel));
        }
        SessionEvent::Delivered {
            message: Message::FrameReady { frame_id },
            ..
        } => {
            log.announced.insert(frame_id);
        }
        SessionEvent::Delivered {
            message: Message::Command(_),
            ..
        } => log.commands_delivered += 1,
        _ => {}
    }
}
