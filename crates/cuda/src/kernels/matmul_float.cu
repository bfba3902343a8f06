// Float weights (F32, F16, BF16) × f16 activations on the tensor cores, reading GGUF rows
// directly (quantized formats have matmul_int8.cu).
//
// A row is seen as chunks of 32 consecutive values. A format is a struct with
// `load(row, chunk)` and `pair(i, x, y)` (values i and i + 1 of the chunk, i even).
//
// `qgemm` is batch-invariant by construction: output (row, token) is always the sum of
// the same eight per-warp partial sums, each accumulated over a fixed set of chunks in a
// fixed order, whatever the number of tokens or the token's place in the tile.

struct F32 {
    static const int BYTES = 4;
    const u8* b;
    __device__ void load(const u8* row, int c) { b = row + c * 128; }
    __device__ void pair(int i, float& x, float& y) const {
        const float* v = (const float*)b + i;
        x = v[0];
        y = v[1];
    }
};

struct F16 {
    static const int BYTES = 2;
    const u8* b;
    __device__ void load(const u8* row, int c) { b = row + c * 64; }
    __device__ void pair(int i, float& x, float& y) const {
        u32 v = *(const u32*)(b + 2 * i);
        x = f16_to_f32((u16)v);
        y = f16_to_f32((u16)(v >> 16));
    }
};

struct BF16 {
    static const int BYTES = 2;
    const u8* b;
    __device__ void load(const u8* row, int c) { b = row + c * 64; }
    __device__ void pair(int i, float& x, float& y) const {
        u32 v = *(const u32*)(b + 2 * i);
        x = __uint_as_float(v << 16);
        y = __uint_as_float(v & 0xffff0000u);
    }
};

__device__ __forceinline__ void mma_16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

#define QGEMM_WARPS 8
#define QGEMM_ROWS 16
#define QGEMM_UNROLL 4

// The values at positions 2q, 2q+1, 2q+8, 2q+9, 16+2q, 17+2q, 24+2q, 25+2q of a chunk,
// as four f16 pairs: exactly this thread's share of an mma A fragment for two k-steps.
template <class T>
__device__ __forceinline__ void a_fragment(const T& t, int q, u32* a) {
    float x, y;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        t.pair(2 * q + 8 * k, x, y);
        a[k] = pack_f16x2(x, y);
    }
}

// out[token][row] = sum_k w[row][k] * x[token][k] for a tile of 16 rows (blockIdx.x)
// and 8 * TILES tokens (blockIdx.y). x is f16, row-major [ntok][k]; k is a multiple of 32.
// Warp w takes chunks w, w + 8, w + 16, ... in that order whatever TILES is, so the
// one-tile decode instance and the many-tile batch instance give identical results.
template <class T, int TILES>
__device__ void qgemm(const u8* __restrict__ w, int rows, int k, long long row_bytes,
                      const u16* __restrict__ x, int ntok, float* __restrict__ out) {
    __shared__ float partial[QGEMM_WARPS][QGEMM_ROWS][8 * TILES];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, q = lane & 3;
    const int row0 = blockIdx.x * QGEMM_ROWS, tok0 = blockIdx.y * 8 * TILES;
    const int tiles = min(TILES, (ntok - tok0 + 7) >> 3);
    const u8* w_lo = w + (long long)min(row0 + g, rows - 1) * row_bytes;
    const u8* w_hi = w + (long long)min(row0 + g + 8, rows - 1) * row_bytes;
    const u32* x_rows[TILES];
#pragma unroll
    for (int t = 0; t < TILES; t++) {
        int tok = min(tok0 + t * 8 + g, ntok - 1);
        x_rows[t] = (const u32*)(x + (long long)tok * k);
    }
    float acc[TILES][4];
#pragma unroll
    for (int t = 0; t < TILES; t++) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;

    const int chunks = k >> 5;
    for (int c0 = warp; c0 < chunks; c0 += QGEMM_WARPS * QGEMM_UNROLL) {
        // Decode several chunks first, so their loads are in flight together.
        u32 alo[QGEMM_UNROLL][4], ahi[QGEMM_UNROLL][4];
#pragma unroll
        for (int u = 0; u < QGEMM_UNROLL; u++) {
            int c = min(c0 + u * QGEMM_WARPS, chunks - 1);
            T lo, hi;
            lo.load(w_lo, c);
            hi.load(w_hi, c);
            a_fragment(lo, q, alo[u]);
            a_fragment(hi, q, ahi[u]);
        }
#pragma unroll
        for (int u = 0; u < QGEMM_UNROLL; u++) {
            int c = c0 + u * QGEMM_WARPS;
            if (c < chunks) {
#pragma unroll
                for (int t = 0; t < TILES; t++) {
                    if (t < tiles) {
                        const u32* xr = x_rows[t] + c * 16;
                        mma_16816(acc[t], alo[u][0], ahi[u][0], alo[u][1], ahi[u][1], xr[q], xr[q + 4]);
                        mma_16816(acc[t], alo[u][2], ahi[u][2], alo[u][3], ahi[u][3], xr[q + 8], xr[q + 12]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < TILES; t++) {
        partial[warp][g][t * 8 + 2 * q] = acc[t][0];
        partial[warp][g][t * 8 + 2 * q + 1] = acc[t][1];
        partial[warp][g + 8][t * 8 + 2 * q] = acc[t][2];
        partial[warp][g + 8][t * 8 + 2 * q + 1] = acc[t][3];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < QGEMM_ROWS * 8 * TILES; i += QGEMM_WARPS * 32) {
        int r = i % QGEMM_ROWS, t = i / QGEMM_ROWS;
        int row = row0 + r, tok = tok0 + t;
        if (row < rows && tok < ntok) {
            float s = 0.f;
#pragma unroll
            for (int v = 0; v < QGEMM_WARPS; v++) s += partial[v][r][t];
            out[(long long)tok * rows + row] = s;
        }
    }
}

// out[t][:] = row tokens[t] of the table, as f32; one thread per value.
template <class T>
__device__ void embed(const u8* __restrict__ w, int k, const u32* __restrict__ tokens, int ntok,
                      float* __restrict__ out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)ntok * k) return;
    int t = (int)(i / k), c = (int)(i % k);
    T v;
    v.load(w + (long long)tokens[t] * k * T::BYTES, c >> 5);
    float x, y;
    v.pair(c & 30, x, y);
    out[i] = (c & 1) ? y : x;
}

// qgemv_*: up to 8 tokens per block (decode); qgemm_*: up to 64 (prompts, batches).
#define DEFINE_FORMAT(name)                                                                   \
    extern "C" __global__ void __launch_bounds__(QGEMM_WARPS * 32)                            \
        qgemv_##name(const u8* w, int rows, int k, long long row_bytes, const u16* x,         \
                     int ntok, float* out) {                                                  \
        qgemm<name, 1>(w, rows, k, row_bytes, x, ntok, out);                                  \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(QGEMM_WARPS * 32)                            \
        qgemm_##name(const u8* w, int rows, int k, long long row_bytes, const u16* x,         \
                     int ntok, float* out) {                                                  \
        qgemm<name, 8>(w, rows, k, row_bytes, x, ntok, out);                                  \
    }                                                                                         \
    extern "C" __global__ void embed_##name(const u8* w, int rows, int k, const u32* tokens,  \
                                            int ntok, float* out) {                           \
        embed<name>(w, k, tokens, ntok, out);                                                 \
    }

DEFINE_FORMAT(F32)
DEFINE_FORMAT(F16)
DEFINE_FORMAT(BF16)
