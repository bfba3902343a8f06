// The paged KV cache: storing keys and values, copying blocks, and causal attention
// that reads each sequence's positions through its block table.
//
// Pool layout: [layer][slot][kv_dim] f16, slot = block * 16 + position % 16.

#define KV_BLOCK 16
#define ATT_WARPS 4
#define MAX_HEAD_DIM 256

extern "C" __global__ void kv_store(u16* __restrict__ k_pool, u16* __restrict__ v_pool,
                                    const float* __restrict__ k, const float* __restrict__ v,
                                    const u32* __restrict__ slots, int rows, int kv_dim,
                                    long long layer_offset) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * kv_dim) return;
    int r = (int)(i / kv_dim), e = (int)(i % kv_dim);
    long long at = layer_offset + (long long)slots[r] * kv_dim + e;
    k_pool[at] = f32_to_f16(k[i]);
    v_pool[at] = f32_to_f16(v[i]);
}

// Copies block src to block dst in every layer (keys and values).
extern "C" __global__ void kv_copy_block(u16* __restrict__ k_pool, u16* __restrict__ v_pool,
                                         int src, int dst, int layers, long long slots,
                                         int kv_dim) {
    long long per_layer = (long long)KV_BLOCK * kv_dim;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= per_layer * layers) return;
    long long layer = i / per_layer, e = i % per_layer;
    long long base = layer * slots * kv_dim;
    k_pool[base + (long long)dst * per_layer + e] = k_pool[base + (long long)src * per_layer + e];
    v_pool[base + (long long)dst * per_layer + e] = v_pool[base + (long long)src * per_layer + e];
}

// One block of ATT_WARPS warps per (row, head). Warp w takes positions w, w + ATT_WARPS, ...
// with an online softmax; the warps' states are merged in a fixed order, so a row's result
// depends only on its own position and the cache, never on the other rows.
// row_pos[r]: the row's position; row_table[r]: offset of its block table in `tables`.
// window > 0: a row sees only its last `window` positions (sliding-window layers).
// softcap > 0: scores become softcap * tanh(score / softcap) (gemma2).
extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32)
    attention(const float* __restrict__ q, const u16* __restrict__ k_pool,
              const u16* __restrict__ v_pool, long long layer_offset,
              const u32* __restrict__ row_pos, const u32* __restrict__ row_table,
              const u32* __restrict__ tables, int n_heads, int n_kv_heads, int head_dim,
              float scale, int window, float softcap, float* __restrict__ out) {
    __shared__ float s_max[ATT_WARPS], s_sum[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][MAX_HEAD_DIM];
    const int row = blockIdx.x / n_heads, head = blockIdx.x % n_heads;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kv_dim = n_kv_heads * head_dim;
    const int kv_off = (head / (n_heads / n_kv_heads)) * head_dim;
    const int per_lane = head_dim / 32;
    const float* qh = q + (long long)row * n_heads * head_dim + head * head_dim;
    const u32* table = tables + row_table[row];
    const int pos = (int)row_pos[row];

    float qv[MAX_HEAD_DIM / 32], acc[MAX_HEAD_DIM / 32];
#pragma unroll
    for (int j = 0; j < MAX_HEAD_DIM / 32; j++) {
        // Queries are rounded to f16 as GGML rounds them for an f16 cache.
        qv[j] = j < per_lane ? f16_to_f32(f32_to_f16(qh[j * 32 + lane])) : 0.f;
        acc[j] = 0.f;
    }
    float m = -INFINITY, s = 0.f;
    const int first = window > 0 && pos + 1 > window ? pos + 1 - window : 0;
    for (int p = first + warp; p <= pos; p += ATT_WARPS) {
        long long slot = (long long)table[p / KV_BLOCK] * KV_BLOCK + p % KV_BLOCK;
        const u16* kr = k_pool + layer_offset + slot * kv_dim + kv_off;
        const u16* vr = v_pool + layer_offset + slot * kv_dim + kv_off;
        float dot = 0.f;
#pragma unroll
        for (int j = 0; j < MAX_HEAD_DIM / 32; j++)
            if (j < per_lane) dot += qv[j] * f16_to_f32(kr[j * 32 + lane]);
        dot = warp_sum(dot) * scale;
        if (softcap > 0.f) dot = softcap * tanhf(dot / softcap);
        float m_new = fmaxf(m, dot);
        float correction = expf(m - m_new), weight = expf(dot - m_new);
        s = s * correction + weight;
#pragma unroll
        for (int j = 0; j < MAX_HEAD_DIM / 32; j++)
            if (j < per_lane) acc[j] = acc[j] * correction + weight * f16_to_f32(vr[j * 32 + lane]);
        m = m_new;
    }
    if (lane == 0) {
        s_max[warp] = m;
        s_sum[warp] = s;
    }
#pragma unroll
    for (int j = 0; j < MAX_HEAD_DIM / 32; j++)
        if (j < per_lane) s_acc[warp][j * 32 + lane] = acc[j];
    __syncthreads();
    float total_max = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) total_max = fmaxf(total_max, s_max[w]);
    float total_sum = 0.f;
    for (int w = 0; w < ATT_WARPS; w++)
        if (s_max[w] > -INFINITY) total_sum += s_sum[w] * expf(s_max[w] - total_max);
    float* o = out + (long long)row * n_heads * head_dim + head * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float v = 0.f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (s_max[w] > -INFINITY) v += s_acc[w][d] * expf(s_max[w] - total_max);
        o[d] = v / total_sum;
    }
}
