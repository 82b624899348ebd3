//! `edge-runtime run --link PTY`: the CLI against an MCU end made of board-support's session,
//! in both modes (frames paced by the MCU, and a free-running stream).

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use board_support::session::{Session, SessionConfig, SessionEvent};
use board_support::wire::{Command, Message, Role};
use embedded_io_adapters::std::FromStd;
use serialport::{SerialPort, TTYPort};

fn model_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/fashion-mnist-small-cnn")
        .display()
        .to_string()
}

/// The MCU end: a session on the pty master.
struct Mcu {
    session: Session<8>,
    io: FromStd<TTYPort>,
    epoch: Instant,
    events: Vec<u32>,
}

impl Mcu {
    /// Greets at once. Broken pipe until the CLI has opened its end; the Hello is resent
    /// until answered.
    fn new(mut master: TTYPort) -> Self {
        master.set_timeout(Duration::from_millis(5)).unwrap();
        let mut mcu = Self {
            session: Session::new(Role::Mcu, SessionConfig { retry_ms: 50 }),
            io: FromStd::new(master),
            epoch: Instant::now(),
            events: Vec::new(),
        };
        let _ = mcu.session.connect(0, &mut mcu.io);
        mcu
    }

    fn now(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }

    /// Reads and answers for `wait`, or until `until` holds.
    fn pump(&mut self, wait: Duration, until: impl Fn(&Self) -> bool) {
        let end = Instant::now() + wait;
        let mut buf = [0u8; 256];
        while Instant::now() < end && !until(self) {
            let n = self.io.inner_mut().read(&mut buf).unwrap_or(0);
            for &b in &buf[..n] {
                let now = self.now();
                if let Ok(Some(SessionEvent::Received {
                    message: Message::ClusterEvent { frame_id, .. },
                    ..
                })) = self.session.push(b, now, &mut self.io)
                {
                    self.events.push(frame_id);
                }
            }
            let now = self.now();
            let _ = self.session.poll(now, &mut self.io);
        }
    }

    fn send(&mut self, m: Message) {
        let now = self.now();
        self.session.send(m, now, &mut self.io).unwrap();
    }
}

/// `edge-runtime run` on Fashion-MNIST with a bank in `dir`, linked to the pty `port`.
fn spawn_run(dir: &Path, port: &str, extra: &[&str]) -> Child {
    let (model, bank) = (model_dir(), dir.join("bank"));
    Process::new(env!("CARGO_BIN_EXE_edge-runtime"))
        .args(["run", "--model", &model, "--input", "fashion-mnist"])
        .args(["--bank", bank.to_str().unwrap(), "--link", port])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child) -> String {
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    err
}

/// A pty: the master end for the MCU, the slave's path for the CLI. The slave is closed here
/// (the CLI opens it with an exclusive lock); the pty lives on while the master is open.
fn pty() -> (TTYPort, String) {
    let (master, slave) = TTYPort::pair().unwrap();
    let name = slave.name().unwrap();
    (master, name)
}

#[test]
fn frames_paced_by_the_mcu_come_back_as_cluster_events() {
    let dir = tempfile::tempdir().unwrap();
    let (master, name) = pty();
    let events = dir.path().join("events.jsonl");
    let ev = events.display().to_string();
    let child = spawn_run(
        dir.path(),
        &name,
        &["--events", &ev, "--link-frames", "--link-idle-s", "1"],
    );
    let mut mcu = Mcu::new(master);
    mcu.pump(Duration::from_secs(20), |m| m.session.is_connected());
    assert!(mcu.session.is_connected(), "no handshake with the CLI");
    for id in 100..105 {
        mcu.send(Message::FrameReady { frame_id: id });
    }
    mcu.pump(Duration::from_secs(20), |m| m.events.len() == 5);
    mcu.send(Message::Command(Command::ResetClusters));
    mcu.pump(Duration::from_millis(300), |m| m.session.in_flight() == 0);
    mcu.send(Message::Command(Command::ResetAdaptation));
    mcu.pump(Duration::from_millis(300), |m| m.session.in_flight() == 0);
    assert_eq!(mcu.events, (100..105).collect::<Vec<_>>());
    assert_eq!(
        mcu.session.in_flight(),
        0,
        "the CLI acknowledged the command"
    );
    drop(mcu); // Silence: the CLI's idle timeout ends the run.
    let err = finish(child);
    // The MCU resends its Hello every 50 ms until answered; when the CLI starts slowly (a
    // cold first run), Hellos queued in the pty are each answered: one handshake or more.
    assert!(
        err.contains(" handshakes, 5 acknowledged, 0 unacknowledged")
            && !err.contains(" 0 handshakes"),
        "{err}"
    );
    let log = std::fs::read_to_string(&events).unwrap();
    assert_eq!(log.matches("\"event\":\"frame\"").count(), 5, "{log}");
    assert!(log.contains("\"command\":\"ResetClusters\""), "{log}");
    assert!(log.contains("\"command\":\"ResetAdaptation\""), "{log}");
    assert!(log.contains("\"event\":\"link_up\""), "{log}");
}

#[test]
fn a_free_running_stream_sends_an_event_per_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (master, name) = pty();
    let child = spawn_run(dir.path(), &name, &["--limit", "30"]);
    let mut mcu = Mcu::new(master);
    mcu.pump(Duration::from_secs(30), |m| m.events.len() == 30);
    mcu.pump(Duration::from_millis(200), |_| false);
    let err = finish(child);
    assert_eq!(mcu.events, (0..30).collect::<Vec<_>>());
    assert!(err.contains("30 acknowledged, 0 unacknowledged"), "{err}");
}
