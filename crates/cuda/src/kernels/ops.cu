// Element-wise and row-wise operations of the transformer on f32 activations.

// out[r] = x[r] / rms(x[r]) * w; one block per row.
// One block per row of `cols` values: out = x / rms(x) * w. `out` may be `x`.
__device__ void rms_norm_row(const float* xr, const float* __restrict__ w, float eps, int cols,
                             float* o) {
    __shared__ float warp_sums[32];
    float s = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) s += xr[i] * xr[i];
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? warp_sums[threadIdx.x] : 0.f;
        v = warp_sum(v);
        if (threadIdx.x == 0) warp_sums[0] = v;
    }
    __syncthreads();
    float scale = rsqrtf(warp_sums[0] / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = xr[i] * scale * w[i];
}

extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    float eps, int cols, float* __restrict__ out) {
    rms_norm_row(x + (long long)blockIdx.x * cols, w, eps, cols, out + (long long)blockIdx.x * cols);
}

// In place, one block per head of `head_dim` values (QK-norm).
extern "C" __global__ void rms_norm_heads(float* x, const float* __restrict__ w, float eps,
                                          int head_dim) {
    float* head = x + (long long)blockIdx.x * head_dim;
    rms_norm_row(head, w, eps, head_dim, head);
}

extern "C" __global__ void scale(float* __restrict__ x, float factor, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= factor;
}

extern "C" __global__ void to_f16(const float* __restrict__ x, long long n, u16* __restrict__ out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_f16(x[i]);
}

// Rotates pair p of every head of every row as the CPU backend (after GGML) does: by
// freq_scale * theta_p / factors[p], where theta_0 = position and each next pair's theta
// is the previous one times theta_scale, rounded in f32; each rotated value is one fused
// multiply-add over the other rounded product. Pairs are (2p, 2p+1), or (p, p + pairs)
// in NeoX order. With YaRN (ext_factor != 0), the angle is blended with the unscaled
// theta_p / factors[p] by a ramp from pair ramp_low to ramp_high.
extern "C" __global__ void rope(float* __restrict__ x, const u32* __restrict__ positions,
                                const float* __restrict__ factors, int rows, int cols,
                                int head_dim, int pairs, int neox, float theta_scale,
                                float freq_scale, float mscale, float ext_factor,
                                float ramp_low, float ramp_high) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int heads = cols / head_dim;
    if (i >= (long long)rows * heads * pairs) return;
    int p = (int)(i % pairs);
    long long rh = i / pairs;
    int row = (int)(rh / heads), head = (int)(rh % heads);
    float* h = x + (long long)row * cols + head * head_dim;
    float theta = (float)positions[row];
    for (int k = 0; k < p; ++k) theta = __fmul_rn(theta, theta_scale);
    float extrapolated = __fdiv_rn(theta, factors[p]);
    float angle = __fmul_rn(freq_scale, extrapolated);
    if (ext_factor != 0.f) {
        float y = __fdiv_rn(__fsub_rn((float)p, ramp_low), fmaxf(0.001f, __fsub_rn(ramp_high, ramp_low)));
        float mix = __fmul_rn(__fsub_rn(1.f, fminf(1.f, fmaxf(0.f, y))), ext_factor);
        angle = __fadd_rn(__fmul_rn(angle, __fsub_rn(1.f, mix)), __fmul_rn(extrapolated, mix));
    }
    float s, c;
    sincosf(angle, &s, &c);
    c = __fmul_rn(c, mscale);
    s = __fmul_rn(s, mscale);
    int a = neox ? p : 2 * p, b = neox ? p + pairs : 2 * p + 1;
    float x0 = h[a], x1 = h[b];
    h[a] = __fmaf_rn(x0, c, -__fmul_rn(x1, s));
    h[b] = __fmaf_rn(x0, s, __fmul_rn(x1, c));
}

extern "C" __global__ void silu_mul(float* __restrict__ gate, const float* __restrict__ up, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = gate[i];
        gate[i] = g / (1.f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void gelu_mul(float* __restrict__ gate, const float* __restrict__ up, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float x = gate[i];
        gate[i] = 0.5f * x * (1.f + tanhf(0.7978845608f * x * (1.f + 0.044715f * x * x))) * up[i];
    }
}

extern "C" __global__ void add(float* __restrict__ x, const float* __restrict__ y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

extern "C" __global__ void add_bias(float* __restrict__ x, const float* __restrict__ bias, int cols, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += bias[i % cols];
}

extern "C" __global__ void gather_rows(const float* __restrict__ x, const u32* __restrict__ rows,
                                       int n_rows, int cols, float* __restrict__ out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n_rows * cols) return;
    int r = (int)(i / cols), c = (int)(i % cols);
    out[i] = x[(long long)rows[r] * cols + c];
}
