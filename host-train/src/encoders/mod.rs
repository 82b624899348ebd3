//! Encoders: image batch (b, c, h, w) in, embedding (b, d) out.
