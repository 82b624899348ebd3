//! DeepCluster's fixed input filter: grayscale, then horizontal and vertical Sobel gradients.
//! Removing colour keeps k-means from clustering on it. Nothing here is trained.

use candle_core::{Device, Result, Tensor};

use crate::graph::Conv;
use crate::ops::{conv2d, Conv2dGeometry};

/// A 1x1 grayscale convolution followed by the two 3x3 Sobel filters: c channels in, 2 out.
#[derive(Debug, Clone)]
pub struct SobelFront {
    gray: Tensor,
    sobel: Tensor,
}

impl SobelFront {
    pub fn new(in_channels: usize, device: &Device) -> Result<Self> {
        let gray = Tensor::full(1.0f32 / in_channels as f32, (1, in_channels, 1, 1), device)?;
        #[rustfmt::skip]
        let k: [f32; 18] = [
            1.0, 0.0, -1.0,
            2.0, 0.0, -2.0,
            1.0, 0.0, -1.0,
            1.0, 2.0, 1.0,
            0.0, 0.0, 0.0,
            -1.0, -2.0, -1.0,
        ];
        let sobel = Tensor::from_slice(&k, (2, 1, 3, 3), device)?;
        Ok(Self { gray, sobel })
    }

    /// The two filters as one 3x3 conv on the input channels: the 1x1 grayscale conv commutes
    /// with zero padding, so `sobel(gray(x)) = (sobel * gray)(x)` exactly.
    pub fn as_conv(&self) -> Result<Conv> {
        let gray: Vec<f32> = self.gray.flatten_all()?.to_vec1()?;
        let sobel: Vec<f32> = self.sobel.flatten_all()?.to_vec1()?;
        let c = gray.len();
        let mut weight = Vec::with_capacity(2 * c * 9);
        for o in 0..2 {
            for &g in &gray {
                weight.extend(sobel[o * 9..(o + 1) * 9].iter().map(|s| s * g));
            }
        }
        Ok(Conv {
            name: "sobel".into(),
            weight,
            shape: [2, c, 3, 3],
            bias: None,
            stride: 1,
            padding: 1,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = conv2d(x, &self.gray, Conv2dGeometry::default())?;
        conv2d(
            &g,
            &self.sobel,
            Conv2dGeometry {
                stride: 1,
                padding: 1,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responds_to_edges_not_to_flat_colour() {
        let dev = Device::Cpu;
        let front = SobelFront::new(3, &dev).unwrap();
        let flat = Tensor::full(0.7f32, (1, 3, 6, 6), &dev).unwrap();
        let y = front.forward(&flat).unwrap();
        assert_eq!(y.dims(), &[1, 2, 6, 6]);
        // Interior of a flat image: no gradient.
        let inner: Vec<f32> = y
            .narrow(2, 1, 4)
            .unwrap()
            .narrow(3, 1, 4)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(inner.iter().all(|v| v.abs() < 1e-6));
        // A vertical edge (left dark, right bright) shows in the horizontal-gradient channel only.
        let edge: Vec<f32> = (0..3 * 36)
            .map(|i| if i % 6 < 3 { 0.0 } else { 1.0 })
            .collect();
        let y = front
            .forward(&Tensor::from_vec(edge, (1, 3, 6, 6), &dev).unwrap())
            .unwrap();
        let gx: f32 = y
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(3)
            .unwrap()
            .get(2)
            .unwrap()
            .to_scalar()
            .unwrap();
        let gy: f32 = y
            .get(0)
            .unwrap()
            .get(1)
            .unwrap()
            .get(3)
            .unwrap()
            .get(2)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(
            (gx.abs() - 4.0).abs() < 1e-5 && gy.abs() < 1e-6,
            "gx {gx}, gy {gy}"
        );
    }
}
