//! Golden bytes (they freeze `WIRE.md`), round trips, and the decoder under noise.

use proptest::prelude::*;

use super::*;

fn envelope(seq: u16, message: Message) -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        seq,
        message,
    }
}

fn frame(seq: u16, message: Message) -> std::vec::Vec<u8> {
    let mut out = [0u8; MAX_FRAME];
    encode(&envelope(seq, message), &mut out).unwrap().to_vec()
}

/// One of each message, sequence numbers 1, 2, ... as in `WIRE.md`.
fn golden() -> std::vec::Vec<(Message, &'static [u8])> {
    std::vec![
        (
            Message::Hello {
                role: Role::Board,
                min_version: 1,
                max_version: 1,
            },
            &[0x03, 0x01, 0x01, 0x01, 0x07, 0x01, 0x01, 0x61, 0x5a, 0xe2, 0x29, 0x00],
        ),
        (
            Message::CaptureTrigger {
                frame_id: 42,
                exposure_us: 5000,
            },
            &[0x0b, 0x01, 0x02, 0x01, 0x2a, 0x88, 0x27, 0x1d, 0x22, 0x68, 0xdb, 0x00],
        ),
        (
            Message::FrameReady { frame_id: 42 },
            &[0x09, 0x01, 0x03, 0x02, 0x2a, 0x74, 0xad, 0x33, 0x72, 0x00],
        ),
        (
            Message::ClusterEvent {
                frame_id: 42,
                cluster_id: 7,
                distance: 0.5,
                novel: true,
            },
            &[
                0x06, 0x01, 0x04, 0x03, 0x2a, 0x07, 0x01, 0x01, 0x07, 0x3f, 0x01, 0x67, 0x19, 0x3a,
                0x86, 0x00,
            ],
        ),
        (
            Message::Status {
                uptime_ms: 60_000,
                temperature_centi_c: 4250,
                bank_fill_permille: 125,
            },
            &[
                0x0e, 0x01, 0x05, 0x04, 0xe0, 0xd4, 0x03, 0xb4, 0x42, 0x7d, 0xa5, 0x31, 0xf5, 0x1b,
                0x00,
            ],
        ),
        (
            Message::Command(Command::Snapshot),
            &[0x04, 0x01, 0x06, 0x05, 0x05, 0x8e, 0x30, 0x02, 0xe0, 0x00],
        ),
        (
            Message::Command(Command::ResetClusters),
            &[0x09, 0x01, 0x07, 0x05, 0x01, 0x2f, 0x6a, 0xc7, 0x96, 0x00],
        ),
        (
            Message::Command(Command::SetNoveltyThreshold(2.0)),
            &[0x05, 0x01, 0x08, 0x05, 0x02, 0x01, 0x01, 0x06, 0x40, 0xd3, 0x12, 0xb6, 0xc6, 0x00,],
        ),
        (
            Message::Ack { seq: 300 },
            &[0x0a, 0x01, 0x09, 0x06, 0xac, 0x02, 0x5c, 0x7f, 0x7b, 0x6e, 0x00],
        ),
        (
            Message::Nack {
                seq: 300,
                code: NackCode::Busy,
            },
            &[0x0b, 0x01, 0x0a, 0x07, 0xac, 0x02, 0x01, 0x0e, 0xa4, 0xaa, 0x38, 0x00],
        ),
        (
            Message::Welcome {
                role: Role::Mcu,
                version: 1,
            },
            &[0x0a, 0x01, 0x0b, 0x08, 0x01, 0x01, 0xc3, 0x09, 0x4c, 0x4c, 0x00],
        ),
        (
            Message::Command(Command::ResetAdaptation),
            &[0x09, 0x01, 0x0c, 0x05, 0x03, 0xe2, 0xe4, 0x9c, 0x74, 0x00],
        ),
    ]
}

#[test]
fn golden_bytes_freeze_the_spec() {
    for (i, (m, bytes)) in golden().into_iter().enumerate() {
        let seq = i as u16 + 1;
        assert_eq!(frame(seq, m), bytes, "{m:?}");
        let mut d = FrameDecoder::new();
        let mut got = std::vec::Vec::new();
        d.feed(bytes, |r| got.push(r));
        assert_eq!(got, [Ok(envelope(seq, m))]);
    }
}

#[test]
fn the_decoder_resynchronises_after_garbage_and_overflow() {
    let a = frame(1, Message::FrameReady { frame_id: 1 });
    let b = frame(2, Message::Ack { seq: 1 });
    let mut stream = std::vec![0x13, 0x37, 0x00];
    stream.extend(&a[3..]); // a frame that lost its head
    stream.extend(&a);
    stream.extend([0xff; 200]); // longer than any frame
    stream.push(0);
    stream.extend(&b);
    let mut d = FrameDecoder::new();
    let mut ok = std::vec::Vec::new();
    let mut errors = 0;
    d.feed(&stream, |r| match r {
        Ok(e) => ok.push(e.seq),
        Err(_) => errors += 1,
    });
    assert_eq!(ok, [1, 2]);
    assert_eq!(errors, 3);
}

#[test]
fn version_negotiation() {
    assert_eq!(negotiate(1, 1), Some(1));
    assert_eq!(negotiate(1, 9), Some(PROTOCOL_VERSION));
    assert_eq!(negotiate(2, 3), None);
}

fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<bool>(), any::<u8>(), any::<u8>()).prop_map(|(b, lo, hi)| Message::Hello {
            role: if b { Role::Board } else { Role::Mcu },
            min_version: lo,
            max_version: hi
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(f, e)| Message::CaptureTrigger {
            frame_id: f,
            exposure_us: e
        }),
        any::<u32>().prop_map(|f| Message::FrameReady { frame_id: f }),
        (any::<u32>(), any::<u32>(), any::<f32>(), any::<bool>()).prop_map(|(f, c, d, n)| {
            Message::ClusterEvent {
                frame_id: f,
                cluster_id: c,
                distance: d,
                novel: n,
            }
        }),
        (any::<u32>(), any::<i16>(), any::<u16>()).prop_map(|(u, t, b)| Message::Status {
            uptime_ms: u,
            temperature_centi_c: t,
            bank_fill_permille: b
        }),
        any::<f32>().prop_map(|t| Message::Command(Command::SetNoveltyThreshold(t))),
        any::<u16>().prop_map(|s| Message::Ack { seq: s }),
        any::<u16>().prop_map(|s| Message::Nack {
            seq: s,
            code: NackCode::InvalidArgument
        }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips_and_fits(m in any_message(), seq in any::<u16>()) {
        let f = frame(seq, m);
        prop_assert!(f.len() <= MAX_FRAME);
        prop_assert_eq!(f.iter().filter(|&&b| b == 0).count(), 1);
        let mut d = FrameDecoder::new();
        let mut got = None;
        d.feed(&f, |r| got = Some(r));
        let e = got.unwrap().unwrap();
        prop_assert_eq!(e.seq, seq);
        // NaN != NaN: compare the encodings instead.
        prop_assert_eq!(frame(e.seq, e.message), f);
    }
}

/// xorshift64*: a fast seeded source for the noise loop.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A million random and mutated frames: no panic, a valid frame after each is always
/// recovered, and nothing corrupted is accepted as something it was not.
#[test]
fn a_million_noisy_frames_give_no_panic_and_no_false_accept() {
    let messages: std::vec::Vec<Message> = golden().into_iter().map(|(m, _)| m).collect();
    let mut noise = Noise(0x5eed);
    let mut d = FrameDecoder::new();
    let (mut false_accepts, mut recovered) = (0u64, 0u64);
    const FRAMES: u64 = 1_000_000;
    for i in 0..FRAMES {
        let m = messages[noise.below(messages.len())];
        let original = envelope(i as u16, m);
        let mut f = frame(i as u16, m);
        let body = f.len() - 1;
        match noise.below(6) {
            0 => {
                // Pure garbage of random length.
                f = (0..1 + noise.below(40))
                    .map(|_| noise.next() as u8)
                    .collect();
            }
            1 => {
                for _ in 0..1 + noise.below(3) {
                    let at = noise.below(body);
                    f[at] ^= 1 << noise.below(8);
                }
            }
            2 => {
                f.remove(noise.below(body));
            }
            3 => {
                let at = noise.below(body);
                f.insert(at, noise.next() as u8);
            }
            4 => {
                // A burst of noise over part of the frame.
                let at = noise.below(body);
                for b in f.iter_mut().skip(at).take(1 + noise.below(6)) {
                    *b = noise.next() as u8;
                }
            }
            _ => f.truncate(noise.below(body)),
        }
        d.feed(&f, |r| {
            if let Ok(e) = r {
                if e != original {
                    false_accepts += 1;
                }
            }
        });
        // A clean frame after the noise always gets through: a delimiter first ends any
        // partial frame the noise left behind.
        let next = envelope(7, Message::FrameReady { frame_id: 7 });
        let mut clean = std::vec![0u8];
        clean.extend(frame(7, Message::FrameReady { frame_id: 7 }));
        d.feed(&clean, |r| {
            if r == Ok(next) {
                recovered += 1;
            }
        });
    }
    assert_eq!(recovered, FRAMES);
    // CRC-32 lets a corrupted frame through with odds of about 2^-32 each.
    assert_eq!(false_accepts, 0);
}
