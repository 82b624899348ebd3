//! Hardware-in-the-loop simulation: the simulated MCU (board-support's `Companion` on host
//! pins) and the board (edge-runtime's link, the pipeline on the committed default model,
//! real Fashion-MNIST frames) talk through a pty pair, as they would through a USB-CDC port.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use board_support::wire::Command;
use edge_runtime::backend::{PrepareOptions, TractRuntime};
use edge_runtime::bank::{BankConfig, CaptureMeta, MemoryBank};
use edge_runtime::bundle::ModelBundle;
use edge_runtime::link::{self, BoardLink, LinkConfig, ServeOptions, ServeSummary};
use edge_runtime::pipeline::{Frame, Pipeline, PipelineConfig};
use edge_runtime::EdgeError;
use integration_tests::sim::{run_mcu, McuLog, McuScript, Noise};
use models::data::{load_fashion_mnist, Split};
use models::manifest::Precision;
use serialport::TTYPort;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fashion-mnist-small-cnn")
}

/// Board and MCU joined by a pty; the board serves until the MCU is done (and a moment of
/// silence). Returns the MCU's log, the board's summary, and the link's unacked count.
fn simulate(script: McuScript) -> (McuLog, ServeSummary, usize, f32) {
    let (master, slave) = TTYPort::pair().expect("a pty pair");
    let bundle = ModelBundle::load(&model_dir(), Precision::Int8).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (bank, _) = MemoryBank::open(dir.path(), BankConfig::default()).unwrap();
    let options = PrepareOptions {
        batch: 1,
        threads: 1,
    };
    let mut pipe = Pipeline::new(
        &bundle,
        &TractRuntime,
        &options,
        bank,
        PipelineConfig::default(),
    )
    .unwrap();
    let set = load_fashion_mnist(&integration_tests::fashion_mnist_dir(), Split::Test).unwrap();
    let config = LinkConfig {
        session: board_support::session::SessionConfig { retry_ms: 30 },
        ..Default::default()
    };
    let link = BoardLink::from_port(slave, config).unwrap();
    let mcu = std::thread::spawn(move || run_mcu(master, &script));
    let mut next = 0usize;
    let mut next_frame = |frame_id: u32| -> Option<Result<Frame, EdgeError>> {
        next += 1;
        Some(Ok(Frame {
            meta: CaptureMeta {
                frame_id: u64::from(frame_id),
                source: "camera".into(),
                ..Default::default()
            },
            pixels: set.image((next - 1) % set.len()).to_vec(),
        }))
    };
    let serve_options = ServeOptions {
        idle_timeout: Some(Duration::from_millis(1500)),
        ..Default::default()
    };
    let summary = link::serve(
        &mut pipe,
        &link,
        &mut next_frame,
        &serve_options,
        &AtomicBool::new(false),
        &mut |_| Ok(()),
    )
    .unwrap();
    let log = mcu.join().expect("the simulated MCU panicked");
    let threshold = pipe.online().params().novelty_threshold;
    let (board_stats, unacked) = link.close(Duration::from_secs(2));
    eprintln!(
        "MCU: {} frames fired, {} events, {} damaged bytes on the line, sessions {:?}\n\
         board: {summary:?}, {board_stats:?}, {unacked} unacknowledged",
        log.fired.len(),
        log.events.len(),
        log.damaged_bytes,
        log.stats
    );
    (log, summary, unacked, threshold)
}

fn script(frames: u32) -> McuScript {
    McuScript {
        frames,
        trigger_every: Duration::from_millis(3),
        reset_after_events: None,
        command_after_events: None,
        noise: None,
        deadline: Duration::from_secs(60),
    }
}

#[test]
fn trigger_frame_and_cluster_event_make_the_round_trip() {
    let mut s = script(40);
    s.command_after_events = Some((10, Command::SetNoveltyThreshold(1.5)));
    let (log, board, unacked, threshold) = simulate(s);
    assert!(!log.timed_out, "{log:?}");
    let fired: Vec<u32> = log.fired.iter().copied().collect();
    assert_eq!(fired, (0..40).collect::<Vec<_>>());
    assert_eq!(log.camera_pulses, 40, "one trigger pulse per frame");
    assert_eq!(
        log.announced, log.fired,
        "every exposed frame was announced"
    );
    assert_eq!(
        log.event_frames(),
        log.fired,
        "every frame came back as a cluster event"
    );
    assert_eq!(board.frames, 40);
    assert!(log.led_blinks >= 1, "events are shown on the LED");
    assert_eq!(board.handshakes, 1);
    assert!(log.handshakes >= 1);
    assert_eq!(log.commands_delivered, 1);
    assert_eq!(board.commands, 1);
    assert_eq!(threshold, 1.5, "the MCU's command reached the clustering");
    assert_eq!(unacked, 0);
    let clusters: std::collections::BTreeSet<u32> = log.events.iter().map(|e| e.1).collect();
    assert!(
        clusters.len() > 1,
        "real frames land in several clusters: {clusters:?}"
    );
}

#[test]
fn one_percent_line_noise_loses_no_acknowledged_event() {
    let mut s = script(150);
    s.noise = Some(Noise::one_percent(7));
    let (log, board, unacked, _) = simulate(s);
    assert!(!log.timed_out, "{log:?}");
    assert!(
        log.damaged_bytes > 20,
        "the line was noisy: {}",
        log.damaged_bytes
    );
    let mcu = log.stats[0];
    assert!(mcu.damaged > 0 && mcu.retransmits > 0, "{mcu:?}");
    assert_eq!(log.fired.len(), 150);
    // Every frame the board acknowledged came back as an event the MCU acknowledged.
    assert_eq!(log.announced, log.fired);
    assert_eq!(log.event_frames(), log.fired);
    assert!(board.frames >= 150, "{board:?}");
    assert_eq!(unacked, 0);
}

#[test]
fn an_mcu_reset_mid_stream_is_a_new_handshake() {
    let mut s = script(60);
    s.reset_after_events = Some(20);
    let (log, board, unacked, _) = simulate(s);
    assert!(!log.timed_out, "{log:?}");
    assert_eq!(log.boots, 1);
    assert_eq!(board.handshakes, 2, "the board saw the MCU greet again");
    assert!(log.handshakes >= 2);
    let second_boot = log.fired.iter().filter(|&&id| id >= 1_000_000).count();
    assert!(second_boot > 0, "frames after the reset: {:?}", log.fired);
    assert_eq!(log.fired.len(), 60);
    assert!(
        log.announced.is_subset(&log.event_frames()),
        "an acknowledged frame lost its event"
    );
    assert_eq!(unacked, 0);
}
