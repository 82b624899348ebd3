//! The companion firmware for a Nucleo-F411RE (STM32F411, Cortex-M4F).
//!
//! Pins: USART2 on PA2/PA3 (the Nucleo's ST-LINK virtual COM port, `/dev/ttyACM0` on the
//! board) at 115200 baud; camera trigger on PA0; the camera's frame-sync (strobe) output on
//! PA1; status LED LD2 on PA5; user button B1 on PC13.
//!
//! Everything protocol-side is `board_support::companion::Companion`, the same code the
//! hardware-in-the-loop simulation runs on the host. This file only wires it to the HAL: a
//! millisecond clock, a blocking UART writer, and the main loop.
#![no_std]
#![no_main]

use board_support::companion::{Companion, CompanionConfig};
use board_support::drivers::{CameraTrigger, FrameSync, StatusLed};
use cortex_m::peripheral::DWT;
use cortex_m_rt::entry;
use embedded_hal_nb::serial::Read as _;
use panic_halt as _;
use stm32f4xx_hal::{pac, prelude::*, rcc::Config};

/// The camera's own schedule; the button (on release) triggers a frame in between.
const CAPTURE_EVERY_MS: u32 = 1000;
/// The trigger pulse the camera needs to start an exposure.
const TRIGGER_PULSE_US: u32 = 100;
const SYSCLK_HZ: u32 = 84_000_000;

#[entry]
fn main() -> ! {
    let (Some(dp), Some(mut cp)) = (
        pac::Peripherals::take(),
        cortex_m::peripheral::Peripherals::take(),
    ) else {
        // Taken twice: cannot happen at reset.
        loop {
            cortex_m::asm::wfi();
        }
    };
    let mut rcc = dp.RCC.freeze(Config::hsi().sysclk(SYSCLK_HZ.Hz()));
    cp.DCB.enable_trace();
    cp.DWT.enable_cycle_counter();

    let gpioa = dp.GPIOA.split(&mut rcc);
    let gpioc = dp.GPIOC.split(&mut rcc);
    let serial = dp
        .USART2
        .serial::<u8>((gpioa.pa2, gpioa.pa3), 115_200.bps(), &mut rcc);
    let Ok(serial) = serial else {
        loop {
            cortex_m::asm::wfi();
        }
    };
    let (tx, mut rx) = serial.split();
    let mut tx = Uart(tx);

    let delay = cp.SYST.delay(&rcc.clocks);
    let camera = CameraTrigger::new(gpioa.pa0.into_push_pull_output(), delay, TRIGGER_PULSE_US);
    let led = StatusLed::new(gpioa.pa5.into_push_pull_output(), ());
    let frame_sync = FrameSync::new(gpioa.pa1.into_pull_down_input());
    let button = FrameSync::new(gpioc.pc13.into_floating_input());
    // GPIO on this chip cannot fail (`Infallible` errors), so these patterns are irrefutable.
    let (Ok(camera), Ok(led), Ok(frame_sync), Ok(mut button)) = (camera, led, frame_sync, button);

    let mut clock = Millis::new(SYSCLK_HZ);
    let mut companion: Companion<_, _, _, _, _, 8> = Companion::new(
        camera,
        led,
        frame_sync,
        CompanionConfig::default(),
        clock.now(),
    );
    // Errors below are the link's (a UART overrun, a full outbox): the session's resends and
    // the board's retries recover, so the loop just goes on.
    let _ = companion.start(clock.now(), &mut tx);
    let mut next_capture = clock.now().wrapping_add(CAPTURE_EVERY_MS);
    loop {
        let now = clock.now();
        match rx.read() {
            Ok(byte) => {
                let _ = companion.on_byte(byte, now, &mut tx);
            }
            Err(nb::Error::WouldBlock) => {}
            // Overrun, framing or noise: the damaged frame fails its CRC and is resent.
            Err(nb::Error::Other(_)) => {}
        }
        let _ = companion.poll(now, &mut tx);
        let pressed = button.poll().unwrap_or(false);
        let due = now.wrapping_sub(next_capture) as i32 >= 0;
        if (pressed || due) && companion.session().is_connected() {
            next_capture = now.wrapping_add(CAPTURE_EVERY_MS);
            let _ = companion.trigger();
        }
    }
}

/// A millisecond clock from the DWT cycle counter, extended past its 51 s wrap at 84 MHz
/// (the main loop reads it far more often than that).
struct Millis {
    last: u32,
    cycles: u64,
    cycles_per_ms: u64,
}

impl Millis {
    fn new(sysclk_hz: u32) -> Self {
        Self {
            last: DWT::cycle_count(),
            cycles: 0,
            cycles_per_ms: u64::from(sysclk_hz / 1000),
        }
    }

    fn now(&mut self) -> u32 {
        let c = DWT::cycle_count();
        self.cycles += u64::from(c.wrapping_sub(self.last));
        self.last = c;
        (self.cycles / self.cycles_per_ms) as u32
    }
}

/// Blocking embedded-io writes over the HAL's non-blocking UART (its own `embedded_io::Write`
/// returns `Ok(0)` when the data register is busy, which `write_all` does not allow).
struct Uart<T>(T);

impl<T> embedded_io::ErrorType for Uart<T> {
    type Error = embedded_io::ErrorKind;
}

impl<T: embedded_hal_nb::serial::Write<u8>> embedded_io::Write for Uart<T> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        for &b in buf {
            nb::block!(self.0.write(b)).map_err(|_| embedded_io::ErrorKind::Other)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        nb::block!(self.0.flush()).map_err(|_| embedded_io::ErrorKind::Other)
    }
}
