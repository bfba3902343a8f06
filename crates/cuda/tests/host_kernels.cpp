// Runs the per-lane code of matmul_int8.cu on the CPU: the file is compiled as C++ with
// the PTX helpers of common.cuh replaced by plain C++ (below), so the formats' unpacking,
// activation loads and integer dot products are checked without a GPU. Built and run by
// host_kernels.rs, which writes the inputs.
//
// Usage: host_kernels FORMAT PLANES DEQUANTIZED ROWS K
// PLANES: the matrix as repack::split_planes lays it out; DEQUANTIZED: the CPU's f32
// values of the same matrix. Exit status 0 when every check passes.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>
using std::min;

#define __device__
#define __forceinline__ inline
#define __global__ static
#define __launch_bounds__(x)
#define __restrict__
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef signed char i8;
struct Dim3 {
    unsigned x, y, z;
};
static Dim3 threadIdx, blockIdx, blockDim;

static float f16_to_f32(u16 h) {
    int sign = h >> 15, exponent = (h >> 10) & 31, mantissa = h & 1023;
    float v = exponent == 0    ? std::ldexp((float)mantissa, -24)
              : exponent == 31 ? (mantissa ? NAN : INFINITY)
                               : std::ldexp((float)(mantissa | 1024), exponent - 25);
    return sign ? -v : v;
}
static u16 f32_to_f16(float) {
    std::abort();  // only quantize_q8 rounds to f16, and it is not run here
}
static u16 load_u16(const u8* p) {
    u16 v;
    memcpy(&v, p, 2);
    return v;
}
static u32 load_u32_a2(const u8* p) { return (u32)load_u16(p) | ((u32)load_u16(p + 2) << 16); }
static int dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(i8)(a >> (8 * i)) * (int)(i8)(b >> (8 * i));
    return c;
}
static void load16(const void* p, int* w) {
    if ((uintptr_t)p & 15) {
        printf("a 128-bit load from an address that is not 16-byte aligned\n");
        exit(1);
    }
    memcpy(w, p, 16);
}
static float __fmul_rn(float a, float b) { return a * b; }
static float __fadd_rn(float a, float b) { return a + b; }
static float warp_sum(float) { std::abort(); }
template <class T>
static T __shfl_xor_sync(unsigned, T, int) {
    std::abort();
}

#include KERNELS

static std::vector<u8> read_file(const char* path) {
    std::vector<u8> bytes;
    FILE* f = fopen(path, "rb");
    if (!f) {
        printf("cannot open %s\n", path);
        exit(1);
    }
    u8 buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) bytes.insert(bytes.end(), buf, buf + n);
    fclose(f);
    return bytes;
}

template <class F>
static int check(const char* name, const char* planes_path, const char* dequantized_path, int rows,
                 int k) {
    std::vector<u8> file = read_file(planes_path);
    // The kernels need 16-byte aligned planes, as device allocations are.
    std::vector<u8> storage(file.size() + 16);
    u8* planes = storage.data() + (16 - (uintptr_t)storage.data() % 16) % 16;
    memcpy(planes, file.data(), file.size());
    std::vector<u8> deq_bytes = read_file(dequantized_path);
    const float* deq = (const float*)deq_bytes.data();
    const int blocks = k / F::BLOCK, units = blocks * F::UNITS;
    const int TOKENS = 8, ROWS = 4;
    int bad = 0;

    std::vector<const u8*> payload(rows), header(rows);
    for (int r = 0; r < rows; r++) {
        payload[r] = planes + (long)r * blocks * F::PAYLOAD;
        header[r] = planes + (long)rows * blocks * F::PAYLOAD + (long)r * blocks * F::HEADER;
    }
    // Every value as the embedding lookup reads it: the CPU's dequantized value.
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < k; i++) {
            float got = F::value(payload[r], header[r], i), want = deq[r * k + i];
            if (std::fabs(got - want) > 1e-6f * std::fabs(want) && bad++ < 5)
                printf("%s: value %d of row %d is %g, the CPU's %g\n", name, i, r, got, want);
        }

    // Random codes and scales for TOKENS tokens, with each 32 values' sum as the format
    // reads it (Σq for Q8_K, d·Σq for Q8_1); a Q8_K scale is shared by 256 values.
    std::mt19937 rng(7);
    std::vector<u8> x_storage(TOKENS * k + 16);
    i8* xq = (i8*)(x_storage.data() + (16 - (uintptr_t)x_storage.data() % 16) % 16);
    std::vector<ActMeta> xm(TOKENS * k / 32);
    for (int i = 0; i < TOKENS * k; i++) xq[i] = (i8)((int)(rng() % 255) - 127);
    for (int c = 0; c < TOKENS * k / 32; c++) {
        int sum = 0;
        for (int i = 0; i < 32; i++) sum += xq[c * 32 + i];
        int scale_group = F::BLOCK == 256 ? c / 8 : c;
        float d = 0.004f * (1 + scale_group % 5);
        xm[c].d = d;
        xm[c].sum = F::BLOCK == 256 ? (float)sum : d * sum;
    }

    for (int r0 = 0; r0 + ROWS <= rows; r0 += ROWS) {
        for (int n : {TOKENS, 3}) {
            // Four rows and n tokens per warp (matvec8), the 32 lanes added in order.
            float together[ROWS][TOKENS] = {};
            for (int lane = 0; lane < 32; lane++) {
                float acc[ROWS][TOKENS];
                lane_sums<F, TOKENS, ROWS>(&payload[r0], &header[r0], units, lane, xq, xm.data(), k,
                                           n, acc);
                for (int r = 0; r < ROWS; r++)
                    for (int t = 0; t < n; t++) together[r][t] += acc[r][t];
            }
            for (int r = 0; r < ROWS; r++)
                for (int t = 0; t < n; t++) {
                    // One row and one token (matvec1): the same sum, bit for bit.
                    float alone = 0.f;
                    for (int lane = 0; lane < 32; lane++) {
                        float acc[1][1];
                        lane_sums<F, 1, 1>(&payload[r0 + r], &header[r0 + r], units, lane,
                                           xq + t * k, xm.data() + t * k / 32, k, 1, acc);
                        alone += acc[0][0];
                    }
                    double want = 0, magnitude = 0;
                    for (int i = 0; i < k; i++) {
                        double p = (double)deq[(r0 + r) * k + i] * xq[t * k + i] * xm[(t * k + i) / 32].d;
                        want += p;
                        magnitude += std::fabs(p);
                    }
                    if (alone != together[r][t] && bad++ < 5)
                        printf("%s: row %d token %d: %g alone, %g with %d tokens\n", name, r0 + r, t,
                               alone, together[r][t], n);
                    if (std::fabs(alone - want) > 1e-5 * magnitude && bad++ < 5)
                        printf("%s: row %d token %d: %g, exactly %g\n", name, r0 + r, t, alone, want);
                }
        }
    }
    printf("%s: %s\n", name, bad ? "FAILED" : "ok");
    return bad;
}

int main(int argc, char** argv) {
    if (argc != 6) {
        printf("usage: host_kernels FORMAT PLANES DEQUANTIZED ROWS K\n");
        return 2;
    }
    std::string f = argv[1];
    int rows = atoi(argv[4]), k = atoi(argv[5]), bad = -1;
#define FORMAT(name) \
    if (f == #name) bad = check<name>(#name, argv[2], argv[3], rows, k);
    FORMAT(Q4_0) FORMAT(Q4_1) FORMAT(Q5_0) FORMAT(Q5_1) FORMAT(Q8_0) FORMAT(Q4_K) FORMAT(Q5_K)
    FORMAT(Q6_K)
    if (bad < 0) printf("unknown format %s\n", f.c_str());
    return bad == 0 ? 0 : 1;
}
