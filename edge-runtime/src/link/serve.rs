//! Frames paced by the MCU: each `FrameReady` takes the next capture through the pipeline
//! and answers with a `ClusterEvent`; commands act on the pipeline. `edge-runtime run
//! --link PORT --link-frames` and the hardware-in-the-loop tests run this same loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use board_support::wire::{Command, Message};
use serde_json::json;

use super::{BoardLink, LinkEvent};
use crate::pipeline::{Event, Frame, Pipeline};
use crate::EdgeError;

#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Ask the MCU for a frame this often (the board's schedule); `None`: the MCU's own.
    pub trigger_every: Option<Duration>,
    pub exposure_us: u32,
    /// Stop after this many frames.
    pub limit: Option<usize>,
    /// Stop when the MCU has said nothing for this long.
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeSummary {
    pub frames: usize,
    pub commands: usize,
    pub handshakes: usize,
    /// Cluster events the MCU acknowledged.
    pub delivered: usize,
}

/// The `ClusterEvent` that tells the MCU where a frame went.
pub fn cluster_event(event: &Event) -> Option<Message> {
    match *event {
        Event::Frame {
            frame_id,
            cluster_id,
            distance,
            novel,
            ..
        } => Some(Message::ClusterEvent {
            frame_id: frame_id as u32,
            cluster_id,
            distance,
            novel,
        }),
        Event::Recluster { .. }
        | Event::Adapt { .. }
        | Event::Deblock { .. }
        | Event::Roll { .. }
        | Event::Smoothing { .. } => None,
    }
}

/// Carries out a command from the MCU; returns the event line that records it.
pub fn apply_command(
    pipe: &mut Pipeline,
    command: Command,
) -> Result<serde_json::Value, EdgeError> {
    match command {
        Command::Snapshot => pipe.snapshot()?,
        Command::ResetClusters => pipe.reset_clusters(),
        Command::SetNoveltyThreshold(t) => pipe.set_novelty_threshold(t)?,
        Command::ResetAdaptation => {
            pipe.reset_adaptation()?;
        }
    }
    Ok(json!({ "event": "command", "command": format!("{command:?}") }))
}

/// Runs until `stop`, the input runs out (`next_frame` returns `None`), `limit` frames or the
/// idle timeout. `next_frame(frame_id)` reads the capture the MCU announced; `on_event` gets
/// every pipeline and link event as JSON.
pub fn serve(
    pipe: &mut Pipeline,
    link: &BoardLink,
    next_frame: &mut dyn FnMut(u32) -> Option<Result<Frame, EdgeError>>,
    options: &ServeOptions,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&serde_json::Value) -> Result<(), EdgeError>,
) -> Result<ServeSummary, EdgeError> {
    let mut summary = ServeSummary::default();
    let mut last_heard = Instant::now();
    let mut next_trigger = Instant::now();
    let mut trigger_id = 0u32;
    let mut connected = false;
    while !stop.load(Ordering::Relaxed) && options.limit.is_none_or(|n| summary.frames < n) {
        if let Some(every) = options.trigger_every {
            if connected && Instant::now() >= next_trigger {
                next_trigger += every;
                link.send(Message::CaptureTrigger {
                    frame_id: trigger_id,
                    exposure_us: options.exposure_us,
                })?;
                trigger_id = trigger_id.wrapping_add(1);
            }
        }
        let Some(event) = link.recv_timeout(Duration::from_millis(10)) else {
            if options
                .idle_timeout
                .is_some_and(|t| last_heard.elapsed() > t)
            {
                break;
            }
            continue;
        };
        last_heard = Instant::now();
        match event {
            LinkEvent::FrameReady { frame_id } => {
                let Some(frame) = next_frame(frame_id) else {
                    break;
                };
                for e in pipe.process(&[frame?], None)? {
                    if let Some(m) = cluster_event(&e) {
                        link.send(m)?;
                    }
                    on_event(&serde_json::to_value(&e).unwrap_or_default())?;
                }
                summary.frames += 1;
            }
            LinkEvent::Command(c) => {
                on_event(&apply_command(pipe, c)?)?;
                summary.commands += 1;
            }
            LinkEvent::Connected {
                version,
                peer_restarted,
            } => {
                connected = true;
                summary.handshakes += 1;
                on_event(&json!({
                    "event": "link_up", "version": version, "mcu_restarted": peer_restarted
                }))?;
            }
            LinkEvent::Delivered(Message::ClusterEvent { .. }) => summary.delivered += 1,
            LinkEvent::Refused(m, code) => {
                on_event(&json!({
                    "event": "refused", "message": format!("{m:?}"), "code": format!("{code:?}")
                }))?;
            }
            LinkEvent::Delivered(_) | LinkEvent::Status { .. } => {}
        }
    }
    Ok(summary)
}
