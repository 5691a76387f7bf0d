/* fuzz_gemm_pack: awq_pack_gemm / awq_unpack_gemm (csrc/quant.c) on arbitrary shapes and bits.
 *
 * qweight and qzeros of a checkpoint are arbitrary 32-bit words, and codes handed to the packer
 * come from the quantizer. Properties:
 *   - unpack accepts every word; unpack then pack gives the words back exactly, and the codes
 *     equal an independent decode of the nibbles (AutoAWQ order, written here from quant.h);
 *   - pack accepts codes <= 15 and round-trips through unpack exactly; a code > 15 is an
 *     AWQ_ERR_VALUE naming the first such code, with the output untouched;
 *   - shapes with negative sizes or columns not a multiple of 8 are AWQ_ERR_VALUE, nothing
 *     read or written (the buffers passed are NULL).
 * Input: [op][R][C][payload...]; op 0 = pack, 1 = unpack, 2 = bad shapes (8-byte R, C).
 */
#include "fuzz_input.h"
#include "quant.h"

/* Column of nibble i of a word (quant.h): P = {0,2,4,6,1,3,5,7}. */
static const int P[8] = {0, 2, 4, 6, 1, 3, 5, 7};

static void check_pack(fz_in *in) {
    const int64_t R = fz_u8(in) % 17, C = fz_u8(in); /* C may be any value: not always 8k */
    const int mask = fz_u8(in) & 1;                    /* 1: codes masked to 4 bits */
    const int64_t W = C / 8;
    uint8_t *src = fz_alloc((size_t)(R * C));
    uint32_t *dst = fz_alloc((size_t)(R * W) * 4);
    uint8_t *back = fz_alloc((size_t)(R * C));
    int64_t first_big = -1;
    for (int64_t i = 0; i < R * C; i++) {
        src[i] = mask ? fz_u8(in) & 15 : fz_u8(in);
        if (src[i] > 15 && first_big < 0) first_big = i;
    }
    for (int64_t i = 0; i < R * W; i++) dst[i] = 0xA5A5A5A5u; /* canary */
    awq_err err = {{0}};
    int st = awq_pack_gemm(src, dst, R, C, &err);
    if (C % 8) {
        FZ_CHECK(st == AWQ_ERR_VALUE, "C=%lld not a multiple of 8 accepted (st=%d)", (long long)C, st);
    } else if (first_big >= 0) {
        FZ_CHECK(st == AWQ_ERR_VALUE, "code %u accepted (st=%d)", src[first_big], st);
        char want[64];
        snprintf(want, sizeof want, "code %u at row %lld, column %lld", src[first_big],
                 (long long)(first_big / C), (long long)(first_big % C));
        FZ_CHECK(strstr(err.msg, want), "message '%s' does not name '%s'", err.msg, want);
        for (int64_t i = 0; i < R * W; i++)
            FZ_CHECK(dst[i] == 0xA5A5A5A5u, "rejected pack wrote word %lld", (long long)i);
    } else {
        FZ_CHECK(st == AWQ_OK, "valid pack R=%lld C=%lld failed: %s", (long long)R, (long long)C,
                 err.msg);
        for (int64_t r = 0; r < R; r++)
            for (int64_t j = 0; j < W; j++)
                for (int i = 0; i < 8; i++)
                    FZ_CHECK(((dst[r * W + j] >> (4 * i)) & 15u) == src[r * C + 8 * j + P[i]],
                             "nibble %d of word [%lld, %lld] is not column %lld", i, (long long)r,
                             (long long)j, (long long)(8 * j + P[i]));
        st = awq_unpack_gemm(dst, back, R, C, &err);
        FZ_CHECK(st == AWQ_OK, "unpack of a pack failed: %s", err.msg);
        FZ_CHECK(R * C == 0 || !memcmp(back, src, (size_t)(R * C)), "pack/unpack round trip differs");
    }
    if (st) FZ_CHECK(fz_msg_ok(err.msg, sizeof err.msg), "error without a message");
    free(src);
    free(dst);
    free(back);
}

static void check_unpack(fz_in *in) {
    const int64_t R = fz_u8(in) % 17, W = fz_u8(in) % 33, C = 8 * W;
    uint32_t *src = fz_alloc((size_t)(R * W) * 4);
    uint8_t *codes = fz_alloc((size_t)(R * C));
    uint32_t *back = fz_alloc((size_t)(R * W) * 4);
    for (int64_t i = 0; i < R * W; i++) src[i] = fz_u32(in);
    awq_err err = {{0}};
    int st = awq_unpack_gemm(src, codes, R, C, &err);
    FZ_CHECK(st == AWQ_OK, "unpack R=%lld C=%lld failed: %s", (long long)R, (long long)C, err.msg);
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < W; j++)
            for (int i = 0; i < 8; i++)
                FZ_CHECK(codes[r * C + 8 * j + P[i]] == ((src[r * W + j] >> (4 * i)) & 15u),
                         "column %lld of row %lld is not nibble %d", (long long)(8 * j + P[i]),
                         (long long)r, i);
    st = awq_pack_gemm(codes, back, R, C, &err);
    FZ_CHECK(st == AWQ_OK, "pack of unpacked codes failed: %s", err.msg);
    FZ_CHECK(R * W == 0 || !memcmp(back, src, (size_t)(R * W) * 4), "unpack/pack round trip differs");
    free(src);
    free(codes);
    free(back);
}

static void check_bad_shapes(fz_in *in) {
    int64_t R = (int64_t)fz_u64(in), C = (int64_t)fz_u64(in);
    if (R >= 0 && C >= 0 && C % 8 == 0) C = -C - 1; /* force an invalid shape */
    awq_err err = {{0}};
    int st = awq_pack_gemm(NULL, NULL, R, C, &err);
    FZ_CHECK(st == AWQ_ERR_VALUE, "pack accepted shape [%lld, %lld]", (long long)R, (long long)C);
    FZ_CHECK(fz_msg_ok(err.msg, sizeof err.msg), "error without a message");
    err.msg[0] = 0;
    st = awq_unpack_gemm(NULL, NULL, R, C, &err);
    FZ_CHECK(st == AWQ_ERR_VALUE, "unpack accepted shape [%lld, %lld]", (long long)R, (long long)C);
    FZ_CHECK(fz_msg_ok(err.msg, sizeof err.msg), "error without a message");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_in in = fz_make(data, size);
    switch (fz_u8(&in) % 3) {
    case 0: check_pack(&in); break;
    case 1: check_unpack(&in); break;
    default: check_bad_shapes(&in); break;
    }
    return 0;
}
