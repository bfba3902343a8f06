// Quantized weights × f16 activations on the tensor cores, reading GGUF blocks directly.
//
// Every format is seen as chunks of 32 consecutive values of a row (a legacy block, or an
// eighth of a k-quant super-block). A format is a struct with `load(row, chunk)` (reads
// the chunk's scales) and `at(i)` (value i of the chunk, 0..32).
//
// `qgemm_*` is batch-invariant by construction: output (row, token) is always the sum of
// the same eight per-warp partial sums, each accumulated over a fixed set of chunks in a
// fixed order, whatever the number of tokens or the token's place in the tile.

struct F32 {
    const u8* b;
    __device__ void load(const u8* row, int c) { b = row + c * 128; }
    __device__ float at(int i) const { return ((const float*)b)[i]; }
};

struct F16 {
    const u8* b;
    __device__ void load(const u8* row, int c) { b = row + c * 64; }
    __device__ float at(int i) const { return f16_to_f32(load_u16(b + 2 * i)); }
};

struct BF16 {
    const u8* b;
    __device__ void load(const u8* row, int c) { b = row + c * 64; }
    __device__ float at(int i) const { return __uint_as_float((u32)load_u16(b + 2 * i) << 16); }
};

struct Q4_0 {
    const u8* qs;
    float d;
    __device__ void load(const u8* row, int c) {
        const u8* b = row + c * 18;
        d = f16_to_f32(load_u16(b));
        qs = b + 2;
    }
    __device__ float at(int i) const {
        u8 x = qs[i & 15];
        return (float)((i < 16 ? (x & 15) : (x >> 4)) - 8) * d;
    }
};

struct Q4_1 {
    const u8* qs;
    float d, m;
    __device__ void load(const u8* row, int c) {
        const u8* b = row + c * 20;
        d = f16_to_f32(load_u16(b));
        m = f16_to_f32(load_u16(b + 2));
        qs = b + 4;
    }
    __device__ float at(int i) const {
        u8 x = qs[i & 15];
        return (float)(i < 16 ? (x & 15) : (x >> 4)) * d + m;
    }
};

struct Q5_0 {
    const u8* qs;
    u32 qh;
    float d;
    __device__ void load(const u8* row, int c) {
        const u8* b = row + c * 22;
        d = f16_to_f32(load_u16(b));
        qh = load_u32_a2(b + 2);
        qs = b + 6;
    }
    __device__ float at(int i) const {
        u8 x = qs[i & 15];
        int q = (i < 16 ? (x & 15) : (x >> 4)) | (((qh >> i) & 1) << 4);
        return (float)(q - 16) * d;
    }
};

struct Q5_1 {
    const u8* qs;
    u32 qh;
    float d, m;
    __device__ void load(const u8* row, int c) {
        const u8* b = row + c * 24;
        d = f16_to_f32(load_u16(b));
        m = f16_to_f32(load_u16(b + 2));
        qh = load_u32_a2(b + 4);
        qs = b + 8;
    }
    __device__ float at(int i) const {
        u8 x = qs[i & 15];
        int q = (i < 16 ? (x & 15) : (x >> 4)) | (((qh >> i) & 1) << 4);
        return (float)q * d + m;
    }
};

struct Q8_0 {
    const i8* qs;
    float d;
    __device__ void load(const u8* row, int c) {
        const u8* b = row + c * 34;
        d = f16_to_f32(load_u16(b));
        qs = (const i8*)(b + 2);
    }
    __device__ float at(int i) const { return (float)qs[i] * d; }
};

// Scale and min of sub-block j (0..8) of a Q4_K/Q5_K super-block, 6 bits each.
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

struct Q4_K {
    const u8* qs;
    int shift;
    float ds, dm;
    __device__ void load(const u8* row, int c) {
        const u8* b = row + (c >> 3) * 144;
        int j = c & 7, sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        ds = f16_to_f32(load_u16(b)) * (float)sc;
        dm = f16_to_f32(load_u16(b + 2)) * (float)m;
        qs = b + 16 + (j >> 1) * 32;
        shift = (j & 1) * 4;
    }
    __device__ float at(int i) const { return ds * (float)((qs[i] >> shift) & 15) - dm; }
};

struct Q5_K {
    const u8* qs;
    const u8* qh;
    int shift, j;
    float ds, dm;
    __device__ void load(const u8* row, int c) {
        const u8* b = row + (c >> 3) * 176;
        int sc, m;
        j = c & 7;
        scale_min_k4(j, b + 4, &sc, &m);
        ds = f16_to_f32(load_u16(b)) * (float)sc;
        dm = f16_to_f32(load_u16(b + 2)) * (float)m;
        qh = b + 16;
        qs = b + 48 + (j >> 1) * 32;
        shift = (j & 1) * 4;
    }
    __device__ float at(int i) const {
        int q = ((qs[i] >> shift) & 15) | (((qh[i] >> j) & 1) << 4);
        return ds * (float)q - dm;
    }
};

struct Q6_K {
    const u8* ql;
    const u8* qh;
    const i8* scales;
    int high, shift;
    float d;
    __device__ void load(const u8* row, int c) {
        const u8* b = row + (c >> 3) * 210;
        int j = c & 7, n = j >> 2, quarter = j & 3;
        ql = b + n * 64 + ((quarter & 1) ? 32 : 0);
        high = quarter >= 2;
        qh = b + 128 + n * 32;
        shift = 2 * quarter;
        scales = (const i8*)(b + 192 + j * 2);
        d = f16_to_f32(load_u16(b + 208));
    }
    __device__ float at(int i) const {
        int low = high ? (ql[i] >> 4) : (ql[i] & 15);
        int q = (low | (((qh[i] >> shift) & 3) << 4)) - 32;
        return d * (float)scales[i >> 4] * (float)q;
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
#define QGEMM_TILES 8
#define QGEMM_TOKENS (8 * QGEMM_TILES)

// The values at positions 2q, 2q+1, 2q+8, 2q+9, 16+2q, 17+2q, 24+2q, 25+2q of a chunk,
// as four f16 pairs: exactly this thread's share of an mma A fragment for two k-steps.
template <class T>
__device__ __forceinline__ void a_fragment(const T& t, int q, u32* a) {
    a[0] = pack_f16x2(t.at(2 * q), t.at(2 * q + 1));
    a[1] = pack_f16x2(t.at(2 * q + 8), t.at(2 * q + 9));
    a[2] = pack_f16x2(t.at(2 * q + 16), t.at(2 * q + 17));
    a[3] = pack_f16x2(t.at(2 * q + 24), t.at(2 * q + 25));
}

// out[token][row] = sum_k w[row][k] * x[token][k] for a tile of 16 rows (blockIdx.x)
// and 64 tokens (blockIdx.y). x is f16, row-major [ntok][k]; k is a multiple of 32.
template <class T>
__device__ void qgemm(const u8* __restrict__ w, int rows, int k, long long row_bytes,
                      const u16* __restrict__ x, int ntok, float* __restrict__ out) {
    __shared__ float partial[QGEMM_WARPS][QGEMM_ROWS][QGEMM_TOKENS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, q = lane & 3;
    const int row0 = blockIdx.x * QGEMM_ROWS, tok0 = blockIdx.y * QGEMM_TOKENS;
    const int tiles = min(QGEMM_TILES, (ntok - tok0 + 7) >> 3);
    const u8* w_lo = w + (long long)min(row0 + g, rows - 1) * row_bytes;
    const u8* w_hi = w + (long long)min(row0 + g + 8, rows - 1) * row_bytes;
    const u32* x_rows[QGEMM_TILES];
#pragma unroll
    for (int t = 0; t < QGEMM_TILES; t++) {
        int tok = min(tok0 + t * 8 + g, ntok - 1);
        x_rows[t] = (const u32*)(x + (long long)tok * k);
    }
    float acc[QGEMM_TILES][4];
#pragma unroll
    for (int t = 0; t < QGEMM_TILES; t++) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;

    const int chunks = k >> 5;
    for (int c = warp; c < chunks; c += QGEMM_WARPS) {
        T lo, hi;
        lo.load(w_lo, c);
        hi.load(w_hi, c);
        u32 alo[4], ahi[4];
        a_fragment(lo, q, alo);
        a_fragment(hi, q, ahi);
#pragma unroll
        for (int t = 0; t < QGEMM_TILES; t++) {
            if (t < tiles) {
                const u32* xr = x_rows[t] + c * 16;
                mma_16816(acc[t], alo[0], ahi[0], alo[1], ahi[1], xr[q], xr[q + 4]);
                mma_16816(acc[t], alo[2], ahi[2], alo[3], ahi[3], xr[q + 8], xr[q + 12]);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < QGEMM_TILES; t++) {
        partial[warp][g][t * 8 + 2 * q] = acc[t][0];
        partial[warp][g][t * 8 + 2 * q + 1] = acc[t][1];
        partial[warp][g + 8][t * 8 + 2 * q] = acc[t][2];
        partial[warp][g + 8][t * 8 + 2 * q + 1] = acc[t][3];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < QGEMM_ROWS * QGEMM_TOKENS; i += QGEMM_WARPS * 32) {
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

// out[t][:] = row tokens[t] of the table, as f32; one thread per chunk of 32 values.
template <class T>
__device__ void embed(const u8* __restrict__ w, int k, long long row_bytes,
                      const u32* __restrict__ tokens, int ntok, float* __restrict__ out) {
    int chunks = k >> 5;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)ntok * chunks) return;
    int t = (int)(i / chunks), c = (int)(i % chunks);
    T v;
    v.load(w + (long long)tokens[t] * row_bytes, c);
    float* o = out + (long long)t * k + c * 32;
#pragma unroll
    for (int j = 0; j < 32; j++) o[j] = v.at(j);
}

#define DEFINE_FORMAT(name)                                                                   \
    extern "C" __global__ void __launch_bounds__(QGEMM_WARPS * 32)                            \
        qgemm_##name(const u8* w, int rows, int k, long long row_bytes, const u16* x,         \
                     int ntok, float* out) {                                                  \
        qgemm<name>(w, rows, k, row_bytes, x, ntok, out);                                     \
    }                                                                                         \
    extern "C" __global__ void embed_##name(const u8* w, int k, long long row_bytes,          \
                                            const u32* tokens, int ntok, float* out) {        \
        embed<name>(w, k, row_bytes, tokens, ntok, out);                                      \
    }

DEFINE_FORMAT(F32)
DEFINE_FORMAT(F16)
DEFINE_FORMAT(BF16)
DEFINE_FORMAT(Q4_0)
DEFINE_FORMAT(Q4_1)
DEFINE_FORMAT(Q5_0)
DEFINE_FORMAT(Q5_1)
DEFINE_FORMAT(Q8_0)
DEFINE_FORMAT(Q4_K)
DEFINE_FORMAT(Q5_K)
DEFINE_FORMAT(Q6_K)
