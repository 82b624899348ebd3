//! An in-memory byte pipe for the unit tests.

/// A byte pipe: what is written can be read back.
#[derive(Default)]
pub(crate) struct Pipe {
    pub(crate) data: std::collections::VecDeque<u8>,
}

impl embedded_io::ErrorType for Pipe {
    type Error = core::convert::Infallible;
}

impl embedded_io::Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = buf.len().min(self.data.len());
        for b in buf.iter_mut().take(n) {
            *b = self.data.pop_front().unwrap();
        }
        Ok(n)
    }
}

impl embedded_io::Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.data.extend(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}
