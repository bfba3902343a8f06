// Quantized weights × int8 activations with dp4a, for every GGUF quant format the GPU
// reads: the weights in the planes `repack.rs` makes at load (each block's quantized
// values in a 16-byte aligned payload plane, its scales in a header plane), the
// activations quantized once per step by `quantize_q8` exactly as the CPU quantizes them
// for that weight format (Q8_0/Q8_1 blocks of 32, or Q8_K blocks of 256).
//
// A row is cut into units (a legacy block of 32 values, or 64 values of a k-quant
// super-block). Lane l of the row's warp takes units l, l + 32, l + 64, ... and adds each
// unit's contribution to its per-token float sum in that order; the 32 sums are then
// added by the same butterfly. Integer dot products are exact, and every float operation
// is written out (no contraction is left to the compiler), so a token's result is the
// same whichever instance runs it and however many tokens share the launch.

// Per 32 activations: the scale d and a second number: Q8_1's s = d · Σq rounded to
// f16 (legacy formats with a min), or Σq itself (k-quant formats with mins).
struct ActMeta {
    float d, sum;
};

// Each byte of v (each below 128) minus the byte c, as signed bytes: the top bits set
// first keep a byte's borrow from reaching its neighbour.
__device__ __forceinline__ int sub_bytes(u32 v, u32 c) {
    return (int)(((v | 0x80808080u) - c * 0x01010101u) ^ 0x80808080u);
}

// Σ a[i] · b[i] over 16 signed bytes.
__device__ __forceinline__ int dot16(const int* a, const int* b) {
    int s = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) s = dp4a(a[i], b[i], s);
    return s;
}

// Bit i of h (i < 4) moved to bit 4 of byte i: the fifth bit of four 5-bit values.
__device__ __forceinline__ u32 fifth_bits(u32 h) {
    return ((h & 1u) << 4) | ((h & 2u) << 11) | ((h & 4u) << 18) | ((h & 8u) << 25);
}

__device__ __forceinline__ float fmul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float fadd(float a, float b) { return __fadd_rn(a, b); }

// A format: BLOCK values per block, PAYLOAD and HEADER bytes of it in the two planes,
// UNITS units per block. `load(payload_row, header_row, unit)` reads a unit's weights and
// unpacks them into `w`, signed or unsigned bytes in the order of the activations they
// meet; `load_x(x_row, meta_row, unit, a)` reads the activations the unit meets for one
// token, so one load serves every row a warp holds; `dot(a)` is the unit's contribution
// for that token; `value(p, h, i)` is value i of the row as the CPU dequantizes it (for
// the embedding lookup).

// The activations of one unit for one token: WORDS words of int8 codes, their scale and
// the sums the format needs.
template <int WORDS>
struct Acts {
    int v[WORDS];
    float d, s0, s1;
};

// The 32 codes of block u with its scale and sum (legacy formats).
__device__ __forceinline__ void load_acts32(const i8* x, const ActMeta* m, int u, Acts<8>& a) {
    load16(x + u * 32, a.v);
    load16(x + u * 32 + 16, a.v + 4);
    a.d = m[u].d;
    a.s0 = m[u].sum;
}

// Σ w[i] · x[i] over 32 codes.
__device__ __forceinline__ int dot32(const int* w, const int* x) {
    return dot16(w, x) + dot16(w + 4, x + 4);
}

// Code j (0..32) of a legacy 4-bit block: byte j % 16, low nibble for j < 16.
__device__ __forceinline__ int nibble(const u8* qs, int j) {
    return (qs[j & 15] >> (j < 16 ? 0 : 4)) & 15;
}

// The eight words of a legacy block's 4-bit codes (low nibbles, then high nibbles),
// each byte with its fifth bit from qh where FIVE, minus `offset`.
template <bool FIVE>
__device__ __forceinline__ void legacy_codes(const u8* qs, u32 qh, u32 offset, int* w) {
    int q[4];
    load16(qs, q);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        u32 lo = (u32)q[i] & 0x0f0f0f0f, hi = ((u32)q[i] >> 4) & 0x0f0f0f0f;
        if (FIVE) {
            lo |= fifth_bits(qh >> (4 * i));
            hi |= fifth_bits(qh >> (16 + 4 * i));
        }
        w[i] = offset ? sub_bytes(lo, offset) : (int)lo;
        w[4 + i] = offset ? sub_bytes(hi, offset) : (int)hi;
    }
}

// Q4_0, Q4_1, Q5_0, Q5_1: one block of 32 per unit. Header: d, then the min where MIN,
// then the 32 fifth bits where FIVE; payload: 16 bytes of 4-bit codes. Codes are offset
// by 8 (Q4_0) or 16 (Q5_0), or scaled and shifted by the min (Q4_1, Q5_1). The float
// operations follow the CPU's order for each.
template <bool FIVE, bool MIN>
struct Legacy45 {
    static const int BLOCK = 32, PAYLOAD = 16, HEADER = 2 + (MIN ? 2 : 0) + (FIVE ? 4 : 0);
    static const int UNITS = 1, OFFSET = MIN ? 0 : (FIVE ? 16 : 8);
    int w[8];
    float d, min;
    static __device__ u32 fifth(const u8* h, int u) {
        return FIVE ? load_u32_a2(h + u * HEADER + (MIN ? 4 : 2)) : 0;
    }
    __device__ void load(const u8* p, const u8* h, int u) {
        legacy_codes<FIVE>(p + u * 16, fifth(h, u), OFFSET, w);
        d = f16_to_f32(load_u16(h + u * HEADER));
        min = MIN ? f16_to_f32(load_u16(h + u * HEADER + 2)) : 0.f;
    }
    typedef Acts<8> X;
    static __device__ void load_x(const i8* x, const ActMeta* m, int u, X& a) { load_acts32(x, m, u, a); }
    __device__ float dot(const X& a) const {
        float s = (float)dot32(w, a.v);
        return MIN ? fadd(fmul(fmul(d, a.d), s), fmul(min, a.s0)) : fmul(fmul(s, d), a.d);
    }
    static __device__ float value(const u8* p, const u8* h, int i) {
        int b = i >> 5, j = i & 31;
        int c = nibble(p + b * 16, j) | (int)((fifth(h, b) >> j) & 1) << 4;
        float d = f16_to_f32(load_u16(h + b * HEADER));
        return MIN ? fadd(fmul((float)c, d), f16_to_f32(load_u16(h + b * HEADER + 2)))
                   : (float)(c - OFFSET) * d;
    }
};
typedef Legacy45<false, false> Q4_0;
typedef Legacy45<false, true> Q4_1;
typedef Legacy45<true, false> Q5_0;
typedef Legacy45<true, true> Q5_1;

struct Q8_0 {
    static const int BLOCK = 32, PAYLOAD = 32, HEADER = 2, UNITS = 1;
    int w[8];
    float d;
    __device__ void load(const u8* p, const u8* h, int u) {
        load16(p + u * 32, w);
        load16(p + u * 32 + 16, w + 4);
        d = f16_to_f32(load_u16(h + u * 2));
    }
    typedef Acts<8> X;
    static __device__ void load_x(const i8* x, const ActMeta* m, int u, X& a) { load_acts32(x, m, u, a); }
    __device__ float dot(const X& a) const { return fmul((float)dot32(w, a.v), fmul(d, a.d)); }
    static __device__ float value(const u8* p, const u8* h, int i) {
        return (float)(int)(i8)p[i] * f16_to_f32(load_u16(h + (i >> 5) * 2));
    }
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

// Q4_K and Q5_K: unit u is sub-blocks 2p and 2p + 1 (p = u % 4) of super-block u / 4,
// whose 4-bit codes share 32 bytes (low and high nibbles). Header: d, dmin, 12 bytes of
// packed scales and mins. Q5_K's payload starts with the 32 bytes of fifth bits.
template <bool FIVE>
struct KQuant45 {
    static const int BLOCK = 256, PAYLOAD = FIVE ? 160 : 128, HEADER = 16, UNITS = 4;
    int w[16];
    float d, dmin;
    int sc[2], mn[2];
    __device__ void load(const u8* p, const u8* h, int u) {
        int b = u >> 2, pair = u & 3;
        const u8* pb = p + b * PAYLOAD;
        int q[8], qh[8];
        load16(pb + (FIVE ? 32 : 0) + pair * 32, q);
        load16(pb + (FIVE ? 32 : 0) + pair * 32 + 16, q + 4);
        if (FIVE) {
            load16(pb, qh);
            load16(pb + 16, qh + 4);
        }
#pragma unroll
        for (int i = 0; i < 8; i++) {
            u32 lo = (u32)q[i] & 0x0f0f0f0f, hi = ((u32)q[i] >> 4) & 0x0f0f0f0f;
            if (FIVE) {
                // This pair's two bits of each byte: bit 2p for the low codes, 2p + 1 high.
                u32 bits = ((u32)qh[i] >> (2 * pair)) & 0x03030303;
                lo |= (bits & 0x01010101) << 4;
                hi |= (bits & 0x02020202) << 3;
            }
            w[i] = (int)lo;
            w[8 + i] = (int)hi;
        }
        const u8* hb = h + b * 16;
        d = f16_to_f32(load_u16(hb));
        dmin = f16_to_f32(load_u16(hb + 2));
        scale_min_k4(2 * pair, hb + 4, &sc[0], &mn[0]);
        scale_min_k4(2 * pair + 1, hb + 4, &sc[1], &mn[1]);
    }
    // The 64 codes of sub-blocks 2p and 2p + 1, the super-block's scale, each one's Σq.
    typedef Acts<16> X;
    static __device__ void load_x(const i8* x, const ActMeta* m, int u, X& a) {
        const i8* xs = x + u * 64;
#pragma unroll
        for (int i = 0; i < 4; i++) load16(xs + 16 * i, a.v + 4 * i);
        a.d = m[2 * u].d;
        a.s0 = m[2 * u].sum;
        a.s1 = m[2 * u + 1].sum;
    }
    __device__ float dot(const X& a) const {
        int scaled = sc[0] * dot32(w, a.v) + sc[1] * dot32(w + 8, a.v + 8);
        int mins = mn[0] * (int)a.s0 + mn[1] * (int)a.s1;
        return fadd(fmul(fmul(a.d, d), (float)scaled), -fmul(fmul(a.d, dmin), (float)mins));
    }
    static __device__ float value(const u8* p, const u8* h, int i) {
        int b = i >> 8, j = (i >> 5) & 7, l = i & 31, sc, mn;
        const u8* hb = h + b * 16;
        scale_min_k4(j, hb + 4, &sc, &mn);
        const u8* pb = p + b * PAYLOAD;
        int c = (pb[(FIVE ? 32 : 0) + (j >> 1) * 32 + l] >> ((j & 1) * 4)) & 15;
        if (FIVE) c += ((pb[l] >> j) & 1) << 4;
        float d1 = fmul(f16_to_f32(load_u16(hb)), (float)sc);
        float m1 = fmul(f16_to_f32(load_u16(hb + 2)), (float)mn);
        return fadd(fmul(d1, (float)c), -m1);
    }
};
typedef KQuant45<false> Q4_K;
typedef KQuant45<true> Q5_K;

// Q6_K: unit u is half n = (u / 2) % 2 of super-block u / 4, positions l0 .. l0 + 16
// (l0 = 16 · (u % 2)) of it: 64 values at l0 + {0, 32, 64, 96} + 0..16, one scale each.
// Payload: 128 bytes of low nibbles, then 64 of high bit pairs; header: 16 scales, d.
struct Q6_K {
    static const int BLOCK = 256, PAYLOAD = 192, HEADER = 18, UNITS = 4;
    int w[16];
    int sc[4];
    float d;
    __device__ void load(const u8* p, const u8* h, int u) {
        int b = u >> 2, n = (u >> 1) & 1, l0 = (u & 1) * 16;
        const u8* pb = p + b * 192;
        int a[4], c[4], hb[4];
        load16(pb + n * 64 + l0, a);
        load16(pb + n * 64 + 32 + l0, c);
        load16(pb + 128 + n * 32 + l0, hb);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            // Values l, l + 32, l + 64, l + 96: low nibbles of a and c, then high
            // nibbles, each with the next two bits of hb.
            u32 lo_a = (u32)a[i], lo_c = (u32)c[i], high = (u32)hb[i];
            w[i] = sub_bytes((lo_a & 0x0f0f0f0f) | ((high << 4) & 0x30303030), 32);
            w[4 + i] = sub_bytes((lo_c & 0x0f0f0f0f) | ((high << 2) & 0x30303030), 32);
            w[8 + i] = sub_bytes(((lo_a >> 4) & 0x0f0f0f0f) | (high & 0x30303030), 32);
            w[12 + i] = sub_bytes(((lo_c >> 4) & 0x0f0f0f0f) | ((high >> 2) & 0x30303030), 32);
        }
        const u8* head = h + b * 18;
#pragma unroll
        for (int g = 0; g < 4; g++) sc[g] = (int)(i8)head[8 * n + (l0 >> 4) + 2 * g];
        d = f16_to_f32(load_u16(head + 16));
    }
    // Codes l0 + {0, 32, 64, 96} + 0..16 of the half, and the super-block's scale.
    typedef Acts<16> X;
    static __device__ void load_x(const i8* x, const ActMeta* m, int u, X& a) {
        int b = u >> 2, n = (u >> 1) & 1, l0 = (u & 1) * 16;
        const i8* xs = x + b * 256 + n * 128 + l0;
#pragma unroll
        for (int g = 0; g < 4; g++) load16(xs + 32 * g, a.v + 4 * g);
        a.d = m[b * 8].d;
    }
    __device__ float dot(const X& a) const {
        int total = 0;
#pragma unroll
        for (int g = 0; g < 4; g++) total += sc[g] * dot16(w + 4 * g, a.v + 4 * g);
        return fmul(fmul(d, a.d), (float)total);
    }
    static __device__ float value(const u8* p, const u8* h, int i) {
        int b = i >> 8, r = i & 255, n = r >> 7, l = r & 31, g = (r >> 5) & 3;
        const u8* pb = p + b * 192;
        int low = (pb[n * 64 + (g & 1) * 32 + l] >> ((g >> 1) * 4)) & 15;
        int high = (pb[128 + n * 32 + l] >> (2 * g)) & 3;
        const u8* head = h + b * 18;
        float d = f16_to_f32(load_u16(head + 16));
        float sc = (float)(int)(i8)head[8 * n + (l >> 4) + 2 * g];
        return fmul(fmul(d, sc), (float)((low | (high << 4)) - 32));
    }
};

#define MATVEC_WARPS 4

// Where row `row` of a matrix of `rows` rows of `blocks` blocks starts in each plane:
// every row's payload first, then every row's header (`repack.rs`).
template <class F>
__device__ __forceinline__ void row_planes(const u8* w, int rows, int blocks, long long row,
                                           const u8*& payload, const u8*& header) {
    payload = w + row * blocks * F::PAYLOAD;
    header = w + (long long)rows * blocks * F::PAYLOAD + row * blocks * F::HEADER;
}

// One lane's share of matvec: the sums over units lane, lane + 32, ... of each row's
// products with each of the n tokens of x (n <= TOKENS), in that order.
template <class F, int TOKENS, int ROWS>
__device__ __forceinline__ void lane_sums(const u8* const* payload, const u8* const* header,
                                          int units, int lane, const i8* __restrict__ xq,
                                          const ActMeta* __restrict__ xm, int k, int n,
                                          float (*acc)[TOKENS]) {
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int t = 0; t < TOKENS; t++) acc[r][t] = 0.f;
#pragma unroll(TOKENS == 1 ? 2 : 1)
    for (int u = lane; u < units; u += 32) {
        F f[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++) f[r].load(payload[r], header[r], u);
#pragma unroll
        for (int t = 0; t < TOKENS; t++) {
            if (t < n) {
                typename F::X a;
                F::load_x(xq + (long long)t * k, xm + (long long)t * (k >> 5), u, a);
#pragma unroll
                for (int r = 0; r < ROWS; r++) acc[r][t] = fadd(acc[r][t], f[r].dot(a));
            }
        }
    }
}

// out[tok][row] = Σ_k w[row][k] · x[tok][k] for TOKENS tokens from tok0 and ROWS rows
// per warp (which share each activation load). Blocks are numbered token group first,
// so the groups that read the same rows run side by side and share them through L2.
template <class F, int TOKENS, int ROWS>
__device__ void matvec(const u8* __restrict__ w, int rows, int k, const i8* __restrict__ xq,
                       const ActMeta* __restrict__ xm, int ntok, float* __restrict__ out) {
    const int groups = (ntok + TOKENS - 1) / TOKENS;
    const int group = blockIdx.x % groups, row_block = blockIdx.x / groups;
    const int row0 = (row_block * MATVEC_WARPS + (threadIdx.x >> 5)) * ROWS;
    const int lane = threadIdx.x & 31;
    if (row0 >= rows) return;
    const int tok0 = group * TOKENS, n = min(TOKENS, ntok - tok0);
    const int blocks = k / F::BLOCK, units = blocks * F::UNITS;
    const u8 *payload[ROWS], *header[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        // Rows past the end repeat the last one; their sums are not written.
        row_planes<F>(w, rows, blocks, min(row0 + r, rows - 1), payload[r], header[r]);
    }
    float acc[ROWS][TOKENS];
    lane_sums<F, TOKENS, ROWS>(payload, header, units, lane, xq + tok0 * (long long)k,
                               xm + tok0 * (long long)(k >> 5), k, n, acc);
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
#pragma unroll
        for (int t = 0; t < TOKENS; t++) {
            float s = warp_sum(acc[r][t]);
            if (lane == 0 && t < n && row0 + r < rows) out[(long long)(tok0 + t) * rows + row0 + r] = s;
        }
    }
}

// out[t][:] = row tokens[t] of the table, as f32; one thread per value.
template <class F>
__device__ void embed(const u8* __restrict__ w, int rows, int k, const u32* __restrict__ tokens,
                      int ntok, float* __restrict__ out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)ntok * k) return;
    int t = (int)(i / k), c = (int)(i % k);
    const u8 *payload, *header;
    row_planes<F>(w, rows, k / F::BLOCK, tokens[t], payload, header);
    out[i] = F::value(payload, header, c);
}

// matvec1_*: one token and one row per warp (decode); matvec8_*: eight tokens and four
// rows per warp (prompts, batches). Both run the same arithmetic for a token and a row.
#define DEFINE_FORMAT(name)                                                                   \
    extern "C" __global__ void __launch_bounds__(MATVEC_WARPS * 32)                           \
        matvec1_##name(const u8* w, int rows, int k, const i8* xq, const ActMeta* xm,         \
                       int ntok, float* out) {                                                \
        matvec<name, 1, 1>(w, rows, k, xq, xm, ntok, out);                                    \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(MATVEC_WARPS * 32)                           \
        matvec8_##name(const u8* w, int rows, int k, const i8* xq, const ActMeta* xm,         \
                       int ntok, float* out) {                                                \
        matvec<name, 8, 4>(w, rows, k, xq, xm, ntok, out);                                    \
    }                                                                                         \
    extern "C" __global__ void embed_##name(const u8* w, int rows, int k, const u32* tokens,  \
                                            int ntok, float* out) {                           \
        embed<name>(w, rows, k, tokens, ntok, out);                                           \
    }

DEFINE_FORMAT(Q4_0)
DEFINE_FORMAT(Q4_1)
DEFINE_FORMAT(Q5_0)
DEFINE_FORMAT(Q5_1)
DEFINE_FORMAT(Q8_0)
DEFINE_FORMAT(Q4_K)
DEFINE_FORMAT(Q5_K)
DEFINE_FORMAT(Q6_K)

// Activations quantized as the CPU does for a weight format: `block` = 32 (Q8_0/Q8_1:
// d = amax / 127 stored as f16, codes x · 127 / amax rounded half to even, and Q8_1's
// s = d · Σq as f16) or 256 (Q8_K: the scale from the first value of largest magnitude,
// codes rounded half to even, capped at 127). One warp per block of values; n is a
// multiple of `block`. Writes the codes and, per 32 values, d and the second number.
extern "C" __global__ void quantize_q8(const float* __restrict__ x, long long n, int block,
                                       i8* __restrict__ q, ActMeta* __restrict__ meta) {
    long long b = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (b * block >= n) return;
    const float* xb = x + b * block;
    const int per_lane = block >> 5;
    // The first value of largest magnitude: lane order is value order.
    float amax = 0.f, signed_max = 0.f;
    int first = 0x7fffffff;
    for (int j = 0; j < per_lane; j++) {
        int i = lane * per_lane + j;
        float v = xb[i];
        if (fabsf(v) > amax) {
            amax = fabsf(v);
            signed_max = v;
            first = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float other_amax = __shfl_xor_sync(0xffffffffu, amax, o);
        float other_signed = __shfl_xor_sync(0xffffffffu, signed_max, o);
        int other_first = __shfl_xor_sync(0xffffffffu, first, o);
        if (other_amax > amax || (other_amax == amax && other_first < first)) {
            amax = other_amax;
            signed_max = other_signed;
            first = other_first;
        }
    }
    float scale, d;
    if (block == 32) {
        d = amax / 127.f;
        scale = amax != 0.f ? 127.f / amax : 0.f;
    } else {
        scale = amax != 0.f ? -127.f / signed_max : 0.f;
        d = amax != 0.f ? 1.f / scale : 0.f;
    }
    int sum = 0;
    for (int j = 0; j < per_lane; j++) {
        int i = lane * per_lane + j;
        int c = (int)rintf(fmul(xb[i], scale));
        if (block != 32) c = min(c, 127);
        q[b * block + i] = (i8)c;
        sum += c;
    }
    // Σq per 32 values: each group of 32 / per_lane neighbouring lanes holds 32.
    const int lanes_per_32 = 32 / per_lane;
    for (int o = 1; o < lanes_per_32; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane % lanes_per_32 == 0) {
        ActMeta m;
        if (block == 32) {
            m.d = f16_to_f32(f32_to_f16(d));
            m.sum = f16_to_f32(f32_to_f16(fmul(d, (float)sum)));
        } else {
            m.d = d;
            m.sum = (float)sum;
        }
        meta[(b * block + lane * per_lane) >> 5] = m;
    }
}
