// k-means' nearest centroid, fused: for row i of the GEMM output s (rows x k, holding
// -2 x_i . c_j), d_ij = s_ij + ||c_j||^2; out[2i] = max(min_j d_ij + ||x_i||^2, 0) and
// out[2i+1] = argmin_j d_ij (lowest j on ties), as a float. One warp per row.
extern "C" __global__ void nearest_rows(const float* s, const float* c_norms,
                                        const float* x_norms, float* out, int rows, int k) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* r = s + (size_t)row * (size_t)k;
    float best = __int_as_float(0x7f800000);  // +inf
    int arg = k;
    for (int j = lane; j < k; j += 32) {
        float v = r[j] + c_norms[j];
        if (v < best) { best = v; arg = j; }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        float other = __shfl_down_sync(0xffffffffu, best, offset);
        int other_arg = __shfl_down_sync(0xffffffffu, arg, offset);
        if (other < best || (other == best && other_arg < arg)) { best = other; arg = other_arg; }
    }
    if (lane == 0) {
        out[2 * row] = fmaxf(best + x_norms[row], 0.0f);
        out[2 * row + 1] = (float)(arg < k ? arg : 0);
    }
}
