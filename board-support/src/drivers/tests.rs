//! The drivers against embedded-hal-mock pins and delays, and the link over an in-memory pipe.

use embedded_hal_mock::eh1::delay::{CheckedDelay, NoopDelay, Transaction as Delay};
use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction as Pin};

use super::*;
use crate::test_pipe::Pipe;
use crate::wire::{Message, WireError};

#[test]
fn camera_trigger_pulses_high_for_the_configured_time() {
    let pin = PinMock::new(&[
        Pin::set(State::Low),
        Pin::set(State::High),
        Pin::set(State::Low),
    ]);
    let delay = CheckedDelay::new(&[Delay::delay_us(500)]);
    let mut cam = CameraTrigger::new(pin, delay, 500).unwrap();
    cam.fire().unwrap();
    let (mut pin, mut delay) = cam.release();
    pin.done();
    delay.done();
}

#[test]
fn the_led_blinks_the_cluster_id_and_an_alert() {
    // Cluster 2: three slow blinks, then the pause.
    let mut pins = std::vec![Pin::set(State::Low)];
    let mut delays = std::vec![];
    for _ in 0..3 {
        pins.extend([Pin::set(State::High), Pin::set(State::Low)]);
        delays.extend([Delay::delay_ms(150), Delay::delay_ms(150)]);
    }
    delays.push(Delay::delay_ms(600));
    let mut led = StatusLed::new(PinMock::new(&pins), CheckedDelay::new(&delays)).unwrap();
    led.show(Pattern::Cluster(10)).unwrap();
    let (mut pin, mut delay) = led.release();
    pin.done();
    delay.done();
    assert_eq!(Pattern::Novelty.timing().0, 5);
}

#[test]
fn frame_sync_reports_each_rising_edge_once() {
    let levels = [
        State::Low,
        State::High,
        State::High,
        State::Low,
        State::High,
    ];
    let pins: std::vec::Vec<_> = levels.iter().map(|&s| Pin::get(s)).collect();
    let mut sync = FrameSync::new(PinMock::new(&pins)).unwrap();
    let edges: std::vec::Vec<bool> = (0..4).map(|_| sync.poll().unwrap()).collect();
    assert_eq!(edges, [true, false, false, true]);
    sync.release().done();
}

#[test]
fn the_link_numbers_frames_and_survives_a_damaged_one() {
    let mut link = Link::new(Pipe::default());
    let event = Message::ClusterEvent {
        frame_id: 9,
        cluster_id: 3,
        distance: 0.25,
        novel: false,
    };
    assert_eq!(link.send(Message::FrameReady { frame_id: 9 }).unwrap(), 0);
    assert_eq!(link.send(event).unwrap(), 1);
    // Damage the first frame on the "wire".
    let mut pipe = link.release();
    pipe.data[3] ^= 0x10;
    let mut link = Link::new(pipe);
    assert_eq!(link.receive(), Err(LinkError::Wire(WireError::Crc)));
    let e = link.receive().unwrap();
    assert_eq!((e.seq, e.message), (1, event));
    assert_eq!(link.receive(), Err(LinkError::Closed));
    let _ = NoopDelay::new();
}
