//! Log macros that go to `defmt` on firmware, to `log` on hosts, and nowhere without either
//! feature. Format strings use `{}` / `{:?}` only, which both accept.

macro_rules! log_at {
    ($level:ident, $fmt:literal $(, $arg:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::$level!($fmt $(, $arg)*);
        #[cfg(feature = "log")]
        ::log::$level!($fmt $(, $arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        {
            let _ = ($(&$arg,)*);
        }
    }};
}

macro_rules! debug {
    ($($t:tt)*) => { log_at!(debug, $($t)*) };
}

macro_rules! info {
    ($($t:tt)*) => { log_at!(info, $($t)*) };
}

macro_rules! warn {
    ($($t:tt)*) => { log_at!(warn, $($t)*) };
}
