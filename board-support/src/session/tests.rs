//! Two sessions over in-memory pipes: handshake, delivery, loss, duplicates, restarts.

use std::vec::Vec;

use super::*;
use crate::test_pipe::Pipe;

type Board = Session<4>;

const EVENT: Message = Message::ClusterEvent {
    frame_id: 7,
    cluster_id: 2,
    distance: 0.5,
    novel: false,
};

fn config() -> SessionConfig {
    SessionConfig { retry_ms: 10 }
}

/// Feeds everything waiting in `wire` to `to`, whose answers go to `back`.
fn pump<const N: usize>(
    wire: &mut Pipe,
    to: &mut Session<N>,
    back: &mut Pipe,
    now: u32,
) -> Vec<SessionEvent> {
    let bytes: Vec<u8> = wire.data.drain(..).collect();
    bytes
        .into_iter()
        .filter_map(|b| to.push(b, now, back).unwrap())
        .collect()
}

/// A connected pair: (board, mcu, board->mcu wire, mcu->board wire).
fn connected() -> (Board, Board, Pipe, Pipe) {
    let (mut board, mut mcu) = (
        Board::new(Role::Board, config()),
        Board::new(Role::Mcu, config()),
    );
    let (mut b2m, mut m2b) = (Pipe::default(), Pipe::default());
    mcu.connect(0, &mut m2b).unwrap();
    let got = pump(&mut m2b, &mut board, &mut b2m, 0);
    assert_eq!(
        got,
        [SessionEvent::Connected {
            version: 1,
            peer: Role::Mcu,
            peer_restarted: false
        }]
    );
    let got = pump(&mut b2m, &mut mcu, &mut m2b, 0);
    assert_eq!(
        got,
        [SessionEvent::Connected {
            version: 1,
            peer: Role::Board,
            peer_restarted: false
        }]
    );
    assert!(board.is_connected() && mcu.is_connected());
    (board, mcu, b2m, m2b)
}

#[test]
fn a_handshake_then_an_acknowledged_event() {
    let (mut board, mut mcu, mut b2m, mut m2b) = connected();
    let seq = board.send(EVENT, 1, &mut b2m).unwrap();
    assert_eq!(board.in_flight(), 1);
    assert_eq!(
        pump(&mut b2m, &mut mcu, &mut m2b, 1),
        [SessionEvent::Received {
            seq,
            message: EVENT
        }]
    );
    assert_eq!(
        pump(&mut m2b, &mut board, &mut b2m, 1),
        [SessionEvent::Delivered {
            seq,
            message: EVENT
        }]
    );
    assert_eq!(board.in_flight(), 0);
    assert_eq!(board.stats().delivered, 1);
}

#[test]
fn a_lost_frame_is_resent_and_a_lost_ack_does_not_deliver_twice() {
    let (mut board, mut mcu, mut b2m, mut m2b) = connected();
    let seq = board.send(EVENT, 0, &mut b2m).unwrap();
    b2m.data.clear(); // Lost on the line.
    board.poll(5, &mut b2m).unwrap();
    assert!(b2m.data.is_empty(), "resent before retry_ms");
    board.poll(10, &mut b2m).unwrap();
    assert_eq!(
        pump(&mut b2m, &mut mcu, &mut m2b, 10),
        [SessionEvent::Received {
            seq,
            message: EVENT
        }]
    );
    m2b.data.clear(); // The ack is lost: the board resends, the MCU acks again, once delivered.
    board.poll(20, &mut b2m).unwrap();
    assert_eq!(pump(&mut b2m, &mut mcu, &mut m2b, 20), []);
    assert_eq!(mcu.stats().duplicates, 1);
    assert_eq!(
        pump(&mut m2b, &mut board, &mut b2m, 20),
        [SessionEvent::Delivered {
            seq,
            message: EVENT
        }]
    );
    assert_eq!(board.stats().retransmits, 2);
}

#[test]
fn messages_wait_for_the_handshake_and_the_outbox_is_bounded() {
    let mut board = Board::new(Role::Board, config());
    let (mut b2m, mut m2b) = (Pipe::default(), Pipe::default());
    for _ in 0..4 {
        board.send(EVENT, 0, &mut b2m).unwrap();
    }
    assert!(b2m.data.is_empty(), "nothing goes out before the handshake");
    assert_eq!(
        board.send(EVENT, 0, &mut b2m),
        Err(SessionError::OutboxFull)
    );
    let mut mcu = Board::new(Role::Mcu, config());
    mcu.connect(0, &mut m2b).unwrap();
    pump(&mut m2b, &mut board, &mut b2m, 0);
    let got = pump(&mut b2m, &mut mcu, &mut m2b, 0);
    let received = got
        .iter()
        .filter(|e| matches!(e, SessionEvent::Received { .. }))
        .count();
    assert_eq!(received, 4, "{got:?}");
}

#[test]
fn an_acked_message_before_the_handshake_is_refused_as_busy() {
    let (mut board, mut mcu) = (
        Board::new(Role::Board, config()),
        Board::new(Role::Mcu, config()),
    );
    let (mut b2m, mut m2b) = (Pipe::default(), Pipe::default());
    // The MCU believes it is connected (say the board restarted); the board does not.
    mcu.connect(0, &mut m2b).unwrap();
    pump(&mut m2b, &mut board, &mut b2m, 0);
    pump(&mut b2m, &mut mcu, &mut m2b, 0);
    let mut fresh_board = Board::new(Role::Board, config());
    mcu.send(Message::Command(Command::Snapshot), 1, &mut m2b)
        .unwrap();
    assert_eq!(pump(&mut m2b, &mut fresh_board, &mut b2m, 1), []);
    let answer: Vec<u8> = b2m.data.drain(..).collect();
    let mut decoder = crate::wire::FrameDecoder::new();
    let mut nacks = Vec::new();
    decoder.feed(&answer, |r| nacks.push(r.unwrap().message));
    assert!(
        matches!(
            nacks[..],
            [Message::Nack {
                code: NackCode::Busy,
                ..
            }]
        ),
        "{nacks:?}"
    );
    for b in answer {
        assert_eq!(mcu.push(b, 1, &mut m2b).unwrap(), None);
    }
    assert_eq!(mcu.in_flight(), 1, "busy keeps it for a resend");
}

#[test]
fn a_peer_restart_is_a_new_handshake_and_pending_messages_go_again() {
    let (mut board, _, mut b2m, mut m2b) = connected();
    let seq = board.send(EVENT, 0, &mut b2m).unwrap();
    b2m.data.clear(); // The MCU resets before it sees the event.
    let mut mcu = Board::new(Role::Mcu, config());
    mcu.connect(1, &mut m2b).unwrap();
    let got = pump(&mut m2b, &mut board, &mut b2m, 1);
    assert_eq!(
        got,
        [SessionEvent::Connected {
            version: 1,
            peer: Role::Mcu,
            peer_restarted: true
        }]
    );
    let got = pump(&mut b2m, &mut mcu, &mut m2b, 1);
    assert!(
        got.contains(&SessionEvent::Received {
            seq,
            message: EVENT
        }),
        "{got:?}"
    );
    assert_eq!(
        pump(&mut m2b, &mut board, &mut b2m, 1),
        [SessionEvent::Delivered {
            seq,
            message: EVENT
        }]
    );
    assert_eq!(board.stats().handshakes, 2);
}

#[test]
fn an_invalid_threshold_is_refused_and_not_delivered() {
    let (mut board, mut mcu, mut b2m, mut m2b) = connected();
    let bad = Message::Command(Command::SetNoveltyThreshold(f32::NAN));
    let seq = mcu.send(bad, 0, &mut m2b).unwrap();
    assert_eq!(pump(&mut m2b, &mut board, &mut b2m, 0), []);
    let got = pump(&mut b2m, &mut mcu, &mut m2b, 0);
    assert!(
        matches!(got[..], [SessionEvent::Refused { seq: s, code: NackCode::InvalidArgument, .. }] if s == seq),
        "{got:?}"
    );
    assert_eq!(mcu.in_flight(), 0);
}

#[test]
fn greeting_at_the_same_time_settles_without_ping_pong() {
    let (mut board, mut mcu) = (
        Board::new(Role::Board, config()),
        Board::new(Role::Mcu, config()),
    );
    let (mut b2m, mut m2b) = (Pipe::default(), Pipe::default());
    board.connect(0, &mut b2m).unwrap();
    mcu.connect(0, &mut m2b).unwrap();
    for _ in 0..4 {
        pump(&mut m2b, &mut board, &mut b2m, 0);
        pump(&mut b2m, &mut mcu, &mut m2b, 0);
    }
    assert!(board.is_connected() && mcu.is_connected());
    assert!(
        b2m.data.is_empty() && m2b.data.is_empty(),
        "the line went quiet"
    );
    assert!(board.stats().handshakes <= 2 && mcu.stats().handshakes <= 2);
}
