// SGD with momentum and weight decay, PyTorch's rule, as two in-place passes per variable:
// buf = momentum * buf + grad + weight_decay * w, then w -= lr * buf.
extern "C" __global__ void sgd_momentum(float* buf, const float* grad, const float* w,
                                        float momentum, float weight_decay, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) buf[i] = momentum * buf[i] + grad[i] + weight_decay * w[i];
}

extern "C" __global__ void sgd_descend(float* w, const float* buf, float lr, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) w[i] -= lr * buf[i];
}
