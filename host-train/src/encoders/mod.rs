//! Encoders: image batch (b, c, h, w) in, embedding (b, d) out. One file per network, each
//! with a `Config` that implements `Default`.

mod bn_relu;
mod small_cnn;
mod sobel;

pub use bn_relu::BnRelu;
pub use small_cnn::{SmallCnn, SmallCnnConfig};
pub use sobel::SobelFront;
