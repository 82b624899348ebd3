//! k-means' assignment step on a candle device: on CUDA, the GPU k-means of DeepCluster.
//!
//! Per block of points, one GEMM gives `||c||^2 - 2 x.c` for every centroid, and the row-wise
//! min and argmin run on the device; only the labels and distances come back. `||x||^2` is a
//! constant per row, so it is added to the minimum alone. On CUDA one fused kernel adds the
//! centroid norms and takes the min and argmin of each row in a single read of the GEMM's
//! output (`nearest.cu`); elsewhere candle ops do the same in several passes.

use candle_core::{Device, Tensor};
use models::cluster::{check_shapes, AssignError, AssignStep};
use models::MatRef;

/// [`AssignStep`] on any candle device (CPU too, which the tests use).
#[derive(Debug, Clone)]
pub struct CandleAssign {
    device: Device,
    /// Distances held on the device at once, in f32 values; bounds the block of points.
    pub max_block_values: usize,
}

impl CandleAssign {
    pub fn new(device: &Device) -> Self {
        Self {
            device: device.clone(),
            // 512 MiB of distances: GEMMs large enough to run near peak, small enough to
            // leave the GPU's memory to the network.
            max_block_values: 1 << 27,
        }
    }

    fn block_rows(&self, n: usize, k: usize) -> usize {
        (self.max_block_values / k.max(1)).clamp(1, n.max(1))
    }
}

/// The points and their squared norms, on the device for the whole fit.
#[derive(Debug, Clone)]
pub struct DevicePoints {
    points: Tensor,
    norms: Tensor,
}

fn backend(e: candle_core::Error) -> AssignError {
    AssignError::Backend(Box::new(e))
}

impl AssignStep for CandleAssign {
    type Prepared = DevicePoints;

    fn prepare(&self, points: MatRef<'_>) -> Result<DevicePoints, AssignError> {
        let points = Tensor::from_slice(
            points.as_slice(),
            (points.rows(), points.cols()),
            &self.device,
        )
        .map_err(backend)?;
        let norms = points.sqr().and_then(|s| s.sum(1)).map_err(backend)?;
        Ok(DevicePoints { points, norms })
    }

    fn assign(
        &self,
        prepared: &DevicePoints,
        points: MatRef<'_>,
        centroids: MatRef<'_>,
        labels: &mut [u32],
        dists: &mut [f32],
    ) -> Result<(), AssignError> {
        check_shapes(points, centroids, labels, dists)?;
        let (n, k, d) = (points.rows(), centroids.rows(), centroids.cols());
        if prepared.norms.dims() != [n] {
            return Err(AssignError::OutputLen {
                expected: n,
                got: prepared.norms.elem_count(),
            });
        }
        if n == 0 || k == 0 {
            return Ok(());
        }
        let (all_labels, all_dists) = (|| -> candle_core::Result<(Vec<u32>, Vec<f32>)> {
            let c = Tensor::from_slice(centroids.as_slice(), (k, d), &self.device)?;
            let c_norms = c.sqr()?.sum(1)?.unsqueeze(0)?;
            let minus_2ct = (c.t()? * -2.0)?.contiguous()?;
            let (mut label_blocks, mut dist_blocks) = (Vec::new(), Vec::new());
            let b = self.block_rows(n, k);
            for start in (0..n).step_by(b) {
                let len = b.min(n - start);
                let x = prepared.points.narrow(0, start, len)?;
                let cross = x.matmul(&minus_2ct)?;
                let x_norms = prepared.norms.narrow(0, start, len)?;
                #[cfg(feature = "cuda")]
                if cross.device().is_cuda() {
                    let (labels, dists) = nearest_cuda::nearest(&cross, &c_norms, &x_norms)?;
                    label_blocks.push(labels);
                    dist_blocks.push(dists);
                    continue;
                }
                let partial = cross.broadcast_add(&c_norms)?;
                label_blocks.push(partial.argmin(1)?);
                // Rounding can take a distance of ~0 below zero.
                dist_blocks.push((partial.min(1)? + x_norms)?.relu()?);
            }
            Ok((
                Tensor::cat(&label_blocks, 0)?.to_vec1()?,
                Tensor::cat(&dist_blocks, 0)?.to_vec1()?,
            ))
        })()
        .map_err(backend)?;
        labels.copy_from_slice(&all_labels);
        dists.copy_from_slice(&all_dists);
        Ok(())
    }
}

/// The fused row-wise min/argmin kernel.
#[cfg(feature = "cuda")]
mod nearest_cuda {
    use candle_core::cuda::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
    use candle_core::cuda::WrapErr;
    use candle_core::{
        bail, CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor,
    };

    /// (rows, k) cross terms, (1, k) centroid norms, (rows) point norms -> labels (u32) and
    /// squared distances.
    pub fn nearest(cross: &Tensor, c_norms: &Tensor, x_norms: &Tensor) -> Result<(Tensor, Tensor)> {
        let out = cross.contiguous()?.apply_op3_no_bwd(
            &c_norms.contiguous()?,
            &x_norms.contiguous()?,
            &NearestOp,
        )?;
        let dists = out.narrow(1, 0, 1)?.squeeze(1)?;
        let labels = out.narrow(1, 1, 1)?.squeeze(1)?.to_dtype(DType::U32)?;
        Ok((labels, dists))
    }

    fn view<'a>(st: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
        let n = l.shape().elem_count();
        Ok(st
            .as_cuda_slice::<f32>()?
            .slice(l.start_offset()..l.start_offset() + n))
    }

    /// Output (rows, 2): the distance, then the label as an f32 (exact below 2^24).
    struct NearestOp;

    impl CustomOp3 for NearestOp {
        fn name(&self) -> &'static str {
            "kmeans-nearest"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            bail!("kmeans-nearest runs on CUDA only")
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            sl: &Layout,
            c: &CudaStorage,
            cl: &Layout,
            x: &CudaStorage,
            xl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let (rows, k) = sl.shape().dims2()?;
            if cl.shape().elem_count() != k || xl.shape().elem_count() != rows || k >= 1 << 24 {
                bail!("kmeans-nearest: bad shapes {sl:?} {cl:?} {xl:?}");
            }
            let (sv, cv, xv) = (view(s, sl)?, view(c, cl)?, view(x, xl)?);
            let dev = &s.device;
            let mut out = unsafe { dev.alloc::<f32>(rows * 2) }?;
            let func = crate::cuda_kernels::function(
                dev,
                "dce_kmeans_nearest",
                include_str!("nearest.cu"),
                "nearest_rows",
            )?;
            // One warp per row: coalesced reads of the row, shuffles for the reduction.
            let warps_per_block = 8u32;
            let cfg = LaunchConfig {
                grid_dim: ((rows as u32).div_ceil(warps_per_block), 1, 1),
                block_dim: (32 * warps_per_block, 1, 1),
                shared_mem_bytes: 0,
            };
            let (rows_i, k_i) = (rows as i32, k as i32);
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(&sv)
                .arg(&cv)
                .arg(&xv)
                .arg(&mut out)
                .arg(&rows_i)
                .arg(&k_i);
            unsafe { b.launch(cfg) }.w()?;
            Ok((
                CudaStorage::wrap_cuda_slice(out, dev.clone()),
                Shape::from((rows, 2)),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use models::cluster::{CpuGemmAssign, KMeansParams};
    use models::rng::Rng;

    use super::*;

    fn random(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n * d)
            .map(|_| r.next_f64() as f32 * 2.0 - 1.0)
            .collect()
    }

    #[test]
    fn agrees_with_the_cpu_gemm_assignment_across_blocks() {
        let (n, k, d) = (1000, 37, 16);
        let (x, c) = (random(n, d, 1), random(k, d, 2));
        let (xm, cm) = (MatRef::new(&x, d).unwrap(), MatRef::new(&c, d).unwrap());
        let cpu = CpuGemmAssign::default();
        let (mut l0, mut d0) = (vec![0; n], vec![0.0; n]);
        cpu.assign(&cpu.prepare(xm).unwrap(), xm, cm, &mut l0, &mut d0)
            .unwrap();
        let mut dev = CandleAssign::new(&Device::Cpu);
        dev.max_block_values = 37 * 300; // 4 blocks, the last one short
        let (mut l1, mut d1) = (vec![u32::MAX; n], vec![f32::NAN; n]);
        dev.assign(&dev.prepare(xm).unwrap(), xm, cm, &mut l1, &mut d1)
            .unwrap();
        let same = l0.iter().zip(&l1).filter(|(a, b)| a == b).count();
        assert!(same >= n - 2, "{same} of {n} labels agree");
        for (a, b) in d0.iter().zip(&d1) {
            assert!((a - b).abs() < 1e-4 * a.max(1.0), "{a} vs {b}");
        }
        let (mut l2, mut d2) = (vec![0; n - 1], vec![0.0; n]);
        assert!(dev
            .assign(&dev.prepare(xm).unwrap(), xm, cm, &mut l2, &mut d2)
            .is_err());
    }

    #[test]
    fn drives_a_whole_kmeans_fit() {
        let (n, d) = (600, 8);
        let mut x = random(n, d, 3);
        for (i, row) in x.chunks_mut(d).enumerate() {
            row[i % 3] += 10.0; // three far-apart groups
        }
        let xm = MatRef::new(&x, d).unwrap();
        let fit = KMeansParams::new(3)
            .check()
            .unwrap()
            .fit_with(&CandleAssign::new(&Device::Cpu), xm)
            .unwrap();
        let truth: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
        let nmi = models::metrics::normalized_mutual_info(&truth, &fit.labels).unwrap();
        assert!(nmi > 0.99, "{nmi}");
    }
}
