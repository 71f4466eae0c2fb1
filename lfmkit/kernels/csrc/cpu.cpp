// Which of the kernel paths this CPU (and its operating system) can run, by CPUID and XGETBV.
// Built on its own with no ISA flags, so it loads on any x86-64 (elsewhere it reports none).
#include <stdint.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>

static uint64_t xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

// bits: 1 = AVX2 + FMA + F16C, 2 = AVX-VNNI (VEX), 4 = AVX-512 F/BW/DQ/VL + VNNI
extern "C" int lfm_cpu_paths(void) {
#if defined(__x86_64__) || defined(_M_X64)
    uint32_t a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), f16c = c & (1u << 29);
    if (!osxsave || (xcr0() & 0x6) != 0x6) return 0;  // the OS saves the YMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const bool avx2 = b & (1u << 5);
    const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) && (b & (1u << 31));
    const bool vnni512 = c & (1u << 11);
    int paths = 0;
    if (avx2 && fma && f16c) paths |= 1;
    if ((paths & 1) && avx512 && vnni512 && (xcr0() & 0xE0) == 0xE0) paths |= 4;  // and the ZMM state
    if ((paths & 1) && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4))) paths |= 2;
    return paths;
#else
    return 0;
#endif
}
