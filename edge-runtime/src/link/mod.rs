//! The Linux side of the MCU link: board-support's [`Session`] over a serial port (a USB-CDC
//! `/dev/ttyACM0`, a UART, a pty in the tests), on its own thread so the pipeline never waits
//! on the wire. The pipeline hands it messages ([`BoardLink::send`], bounded: it blocks when
//! the MCU falls behind) and takes [`LinkEvent`]s from it.

mod serve;

use std::io::{ErrorKind, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use board_support::session::{Session, SessionConfig, SessionError, SessionEvent, SessionStats};
use board_support::wire::{Command, Message, NackCode, Role};
use embedded_io_adapters::std::FromStd;
use serialport::{SerialPort, TTYPort};

pub use serve::{apply_command, cluster_event, serve, ServeOptions, ServeSummary};

use crate::EdgeError;

/// Acked messages the board keeps in flight to the MCU.
const OUTBOX: usize = 16;

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub baud: u32,
    pub session: SessionConfig,
    /// How long one read waits; bounds the latency of sends and resends.
    pub read_timeout: Duration,
    /// Messages waiting for the link thread before [`BoardLink::send`] blocks.
    pub queue: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            baud: 115_200,
            session: SessionConfig::default(),
            read_timeout: Duration::from_millis(5),
            queue: 64,
        }
    }
}

/// What the MCU said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkEvent {
    /// A handshake finished (again, after an MCU reset, when `peer_restarted`).
    Connected {
        version: u8,
        peer_restarted: bool,
    },
    /// The camera exposed frame `frame_id`: read it, answer with a `ClusterEvent`.
    FrameReady {
        frame_id: u32,
    },
    Command(Command),
    Status {
        uptime_ms: u32,
        temperature_centi_c: i16,
    },
    /// The MCU acknowledged this message of ours.
    Delivered(Message),
    Refused(Message, NackCode),
}

/// The running link; dropping it stops the thread without waiting for acks
/// (use [`BoardLink::close`] for that).
#[derive(Debug)]
pub struct BoardLink {
    port: String,
    outgoing: Option<SyncSender<Message>>,
    incoming: Receiver<LinkEvent>,
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    stats: SessionStats,
    in_flight: usize,
    queued_done: bool,
    error: Option<String>,
}

impl BoardLink {
    /// Opens the serial device at `path` and starts the handshake.
    pub fn open(path: &str, config: LinkConfig) -> Result<Self, EdgeError> {
        let port = serialport::new(path, config.baud)
            .timeout(config.read_timeout)
            .open_native()
            .map_err(|e| EdgeError::Link {
                port: path.to_string(),
                source: e.into(),
            })?;
        Ok(Self::start(port, path.to_string(), config))
    }

    /// Runs over an already open port (one end of `TTYPort::pair()` in the tests).
    pub fn from_port(mut port: TTYPort, config: LinkConfig) -> Result<Self, EdgeError> {
        let name = port.name().unwrap_or_else(|| "pty".to_string());
        port.set_timeout(config.read_timeout)
            .map_err(|e| EdgeError::Link {
                port: name.clone(),
                source: e.into(),
            })?;
        Ok(Self::start(port, name, config))
    }

    fn start(port: TTYPort, name: String, config: LinkConfig) -> Self {
        let (out_tx, out_rx) = mpsc::sync_channel(config.queue);
        let (in_tx, in_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let worker = Worker {
            session: Session::new(Role::Board, config.session),
            io: FromStd::new(port),
            outgoing: out_rx,
            incoming: in_tx,
            stop: Arc::clone(&stop),
            shared: Arc::clone(&shared),
            epoch: Instant::now(),
            port: name.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("mcu-link".into())
            .spawn(move || worker.run())
            .ok();
        Self {
            port: name,
            outgoing: Some(out_tx),
            incoming: in_rx,
            stop,
            shared,
            thread,
        }
    }

    pub fn port(&self) -> &str {
        &self.port
    }

    /// Queues `message` for the MCU; blocks while the queue is full (backpressure).
    pub fn send(&self, message: Message) -> Result<(), EdgeError> {
        let gone = || EdgeError::Link {
            port: self.port.clone(),
            source: self
                .failure()
                .unwrap_or_else(|| "link thread stopped".into())
                .into(),
        };
        let tx = self.outgoing.as_ref().ok_or_else(gone)?;
        match tx.try_send(message) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m)) => tx.send(m).map_err(|_| gone()),
            Err(TrySendError::Disconnected(_)) => Err(gone()),
        }
    }

    pub fn try_recv(&self) -> Option<LinkEvent> {
        self.incoming.try_recv().ok()
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Option<LinkEvent> {
        // Disconnected only after the link thread ended; the caller sees `failure()`.
        self.incoming.recv_timeout(timeout).ok()
    }

    pub fn stats(&self) -> SessionStats {
        self.lock().stats
    }

    /// Messages queued or sent and not yet acknowledged.
    pub fn pending(&self) -> usize {
        let s = self.lock();
        s.in_flight + usize::from(!s.queued_done)
    }

    /// Why the link thread stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// Stops after everything queued is acknowledged, or after `drain`; returns the counters
    /// and how many messages were still unacknowledged.
    pub fn close(mut self, drain: Duration) -> (SessionStats, usize) {
        self.outgoing = None; // The worker sees the queue end.
        let deadline = Instant::now() + drain;
        while Instant::now() < deadline && self.pending() > 0 && self.failure().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.shutdown();
        let s = self.lock();
        (s.stats, s.in_flight)
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding it cannot leave the counters inconsistent.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for BoardLink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The link thread: reads, hands events over, sends what the pipeline queued, resends.
struct Worker {
    session: Session<OUTBOX>,
    io: FromStd<TTYPort>,
    outgoing: Receiver<Message>,
    incoming: mpsc::Sender<LinkEvent>,
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    epoch: Instant,
    port: String,
}

impl Worker {
    fn now_ms(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }

    fn run(mut self) {
        if let Err(e) = self.serve() {
            log::error!("{}: link stopped: {e}", self.port);
            self.shared.lock().unwrap_or_else(|e| e.into_inner()).error = Some(e);
        }
    }

    fn serve(&mut self) -> Result<(), String> {
        let now = self.now_ms();
        self.session.connect(now, &mut self.io).or_else(tolerate)?;
        let mut buf = [0u8; 256];
        let mut held: Option<Message> = None;
        let mut queue_open = true;
        while !self.stop.load(Ordering::Relaxed) {
            match self.io.inner_mut().read(&mut buf) {
                Ok(n) => {
                    for &b in &buf[..n] {
                        let now = self.now_ms();
                        if let Some(e) =
                            self.session.push(b, now, &mut self.io).or_else(tolerate)?
                        {
                            self.dispatch(e);
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                    ) => {}
                // A pty whose other end is closed (the MCU is resetting, or unplugged): wait.
                Err(e) => {
                    log::debug!("{}: read: {e}", self.port);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let now = self.now_ms();
            while self.session.has_room() && self.session.is_connected() {
                let next = held.take().or_else(|| match self.outgoing.try_recv() {
                    Ok(m) => Some(m),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        queue_open = false;
                        None
                    }
                });
                let Some(m) = next else { break };
                match self.session.send(m, now, &mut self.io) {
                    Ok(_) => {}
                    Err(SessionError::OutboxFull) => {
                        held = Some(m);
                        break;
                    }
                    Err(e) => tolerate::<()>(e)?,
                }
            }
            self.session.poll(now, &mut self.io).or_else(tolerate)?;
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            s.stats = self.session.stats();
            s.in_flight = self.session.in_flight();
            s.queued_done = !queue_open && held.is_none();
        }
        Ok(())
    }

    fn dispatch(&self, event: SessionEvent) {
        let e = match event {
            SessionEvent::Connected {
                version,
                peer_restarted,
                ..
            } => LinkEvent::Connected {
                version,
                peer_restarted,
            },
            SessionEvent::Received { message, .. } => match message {
                Message::FrameReady { frame_id } => LinkEvent::FrameReady { frame_id },
                Message::Command(c) => LinkEvent::Command(c),
                Message::Status {
                    uptime_ms,
                    temperature_centi_c,
                    ..
                } => LinkEvent::Status {
                    uptime_ms,
                    temperature_centi_c,
                },
                other => {
                    log::debug!("{}: ignored {other:?}", self.port);
                    return;
                }
            },
            SessionEvent::Delivered { message, .. } => LinkEvent::Delivered(message),
            SessionEvent::Refused { message, code, .. } => LinkEvent::Refused(message, code),
            SessionEvent::Damaged(_) => return,
        };
        // The receiver is gone only when the link is being dropped.
        let _ = self.incoming.send(e);
    }
}

/// Write errors on a serial line are transient (a pty with no reader, a replugged cable):
/// the session resends. Encoding errors are bugs and stop the link.
fn tolerate<T: Default>(e: SessionError<std::io::Error>) -> Result<T, String> {
    match e {
        SessionError::Io(e) => {
            log::debug!("link write: {e}");
            Ok(T::default())
        }
        SessionError::OutboxFull => Ok(T::default()),
        e => Err(format!("cannot send a frame: {e}")),
    }
}
