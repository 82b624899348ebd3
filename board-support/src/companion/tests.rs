//! The companion against a board session, with host pins: trigger, exposure, event, LED.

use core::cell::Cell;
use core::convert::Infallible;
use std::rc::Rc;
use std::vec::Vec;

use super::*;
use crate::session::Session;
use crate::test_pipe::Pipe;

/// An output pin that counts rising edges and remembers its level.
#[derive(Clone, Default)]
struct Out {
    high: Rc<Cell<bool>>,
    rises: Rc<Cell<u32>>,
}

impl digital::ErrorType for Out {
    type Error = Infallible;
}

impl OutputPin for Out {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.high.set(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        if !self.high.get() {
            self.rises.set(self.rises.get() + 1);
        }
        self.high.set(true);
        Ok(())
    }
}

/// The camera's frame-sync output: one high poll per camera pulse not yet reported.
struct Sync {
    pulses: Rc<Cell<u32>>,
    reported: u32,
    was_high: bool,
}

impl digital::ErrorType for Sync {
    type Error = Infallible;
}

impl InputPin for Sync {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        let high = !self.was_high && self.reported < self.pulses.get();
        if high {
            self.reported += 1;
        }
        self.was_high = high;
        Ok(high)
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        self.is_high().map(|h| !h)
    }
}

struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

type Mcu = Companion<Out, NoDelay, Out, (), Sync, 4>;

/// A board session and the two directions of the line.
struct Rig {
    board: Session<4>,
    m2b: Pipe,
    b2m: Pipe,
    board_got: Vec<SessionEvent>,
    mcu_got: Vec<Activity>,
}

impl Rig {
    /// Delivers what each side wrote, the MCU's first.
    fn exchange(&mut self, mcu: &mut Mcu, now: u32) {
        while !(self.m2b.data.is_empty() && self.b2m.data.is_empty()) {
            for b in self.m2b.data.drain(..).collect::<Vec<_>>() {
                let event = self.board.push(b, now, &mut self.b2m).unwrap();
                self.board_got.extend(event);
            }
            for b in self.b2m.data.drain(..).collect::<Vec<_>>() {
                self.mcu_got
                    .extend(mcu.on_byte(b, now, &mut self.m2b).unwrap());
            }
        }
    }
}

/// An MCU and a board session after their handshake, with the camera and LED lines.
fn connected() -> (Mcu, Rig, Out, Out) {
    let (cam, led) = (Out::default(), Out::default());
    let sync = Sync {
        pulses: cam.rises.clone(),
        reported: 0,
        was_high: false,
    };
    let mut mcu: Mcu = Companion::new(
        CameraTrigger::new(cam.clone(), NoDelay, 100).unwrap(),
        StatusLed::new(led.clone(), ()).unwrap(),
        FrameSync::new(sync).unwrap(),
        CompanionConfig::default(),
        0,
    );
    let mut rig = Rig {
        board: Session::new(Role::Board, SessionConfig::default()),
        m2b: Pipe::default(),
        b2m: Pipe::default(),
        board_got: Vec::new(),
        mcu_got: Vec::new(),
    };
    mcu.start(0, &mut rig.m2b).unwrap();
    rig.exchange(&mut mcu, 0);
    assert!(mcu.session().is_connected() && rig.board.is_connected());
    (mcu, rig, cam, led)
}

#[test]
fn the_status_carries_the_temperature_the_firmware_set() {
    let (mut mcu, mut rig, _, _) = connected();
    mcu.set_temperature(2315);
    let now = CompanionConfig::default().status_every_ms + 1;
    mcu.poll(now, &mut rig.m2b).unwrap();
    rig.exchange(&mut mcu, now);
    assert!(
        rig.board_got.iter().any(|e| matches!(
            e,
            SessionEvent::Received {
                message: Message::Status {
                    temperature_centi_c: 2315,
                    ..
                },
                ..
            }
        )),
        "{:?}",
        rig.board_got
    );
}

#[test]
fn a_trigger_becomes_frame_ready_and_the_event_plays_on_the_led() {
    let (mut mcu, mut rig, cam, led) = connected();
    assert_eq!(mcu.trigger().unwrap(), 0);
    assert_eq!(cam.rises.get(), 1, "the camera fired");
    assert!(!cam.high.get(), "the pulse ended");
    // The next poll sees the frame-sync edge and announces the frame.
    assert_eq!(
        mcu.poll(1, &mut rig.m2b).unwrap(),
        Some(Activity::FrameReady { frame_id: 0 })
    );
    rig.exchange(&mut mcu, 1);
    assert!(rig.board_got.iter().any(|e| matches!(
        e,
        SessionEvent::Received {
            message: Message::FrameReady { frame_id: 0 },
            ..
        }
    )));
    let event = Message::ClusterEvent {
        frame_id: 0,
        cluster_id: 2,
        distance: 0.3,
        novel: false,
    };
    rig.board.send(event, 2, &mut rig.b2m).unwrap();
    rig.exchange(&mut mcu, 2);
    assert!(rig.mcu_got.iter().any(|a| matches!(
        a,
        Activity::Session(SessionEvent::Received { message, .. }) if *message == event
    )));
    assert_eq!(rig.board.in_flight(), 0, "the MCU acknowledged the event");
    // Cluster 2: three blinks, then the pause; the LED is off once it is over.
    assert!(led.high.get() && mcu.led_is_playing());
    let mut now = 2;
    while mcu.led_is_playing() {
        now += 10;
        mcu.poll(now, &mut rig.m2b).unwrap();
        assert!(now < 10_000, "the pattern never ended");
    }
    assert_eq!(led.rises.get(), 3);
    assert!(!led.high.get());
    assert_eq!(now - 2, 3 * (150 + 150) + 600, "slow blinks and the pause");
}

#[test]
fn a_sync_edge_without_a_trigger_sends_nothing() {
    let cam = Out::default();
    let pulses = Rc::new(Cell::new(1)); // A stray edge.
    let sync = Sync {
        pulses,
        reported: 0,
        was_high: false,
    };
    let mut mcu: Mcu = Companion::new(
        CameraTrigger::new(cam, NoDelay, 100).unwrap(),
        StatusLed::new(Out::default(), ()).unwrap(),
        FrameSync::new(sync).unwrap(),
        CompanionConfig::default(),
        0,
    );
    let mut wire = Pipe::default();
    assert_eq!(mcu.poll(0, &mut wire).unwrap(), None);
    assert!(wire.data.is_empty());
}
