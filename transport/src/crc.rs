//! CRC-32 register arithmetic behind the ICRC: updating a register over
//! bytes, copying bytes while updating the register over them in the same
//! pass, and moving a register over a run of zero bytes (which is how a
//! CRC computed over the transport packet alone is joined to the CRC of
//! the outer headers that a link writes later).
//!
//! A *register* here is the raw CRC-32 state (IEEE polynomial, reflected):
//! the initial value is `0xffff_ffff` and the CRC of a message is the
//! register's complement. Unlike a finished CRC, registers compose:
//! `update(r, a ++ b) == update(update(r, a), b)` and
//! `update(r, a) == shift(r, a.len()) ^ update(0, a)`.
//!
//! The fused copy runs one AVX-512 loop (VPCLMULQDQ folding of the very
//! registers that are stored to the destination) where the CPU has it,
//! and falls back to a copy followed by `crc32fast` elsewhere.

/// The reflected IEEE polynomial.
const POLY: u32 = 0xedb8_8320;
/// x^0 in the reflected representation.
const ONE: u32 = 0x8000_0000;

/// The register after `data`, starting from register `reg`.
#[inline]
pub fn update(reg: u32, data: &[u8]) -> u32 {
    if data.is_empty() {
        return reg;
    }
    // crc32fast keeps the finished (complemented) form.
    let mut h = crc32fast::Hasher::new_with_initial(!reg);
    h.update(data);
    !h.finalize()
}

/// The register after the eight bytes of `v` (little-endian: its low
/// byte first), with no trip through memory for `v` (slicing by eight,
/// tables built at compile time). For short header words built in
/// registers, such as a BTH with its masked byte set.
#[inline]
pub fn update_u64(reg: u32, v: u64) -> u32 {
    let t = &SLICE8;
    let c = reg ^ v as u32;
    let h = (v >> 32) as u32;
    let b = |x: u32, i: u32| ((x >> (8 * i)) & 0xff) as usize;
    t[7][b(c, 0)]
        ^ t[6][b(c, 1)]
        ^ t[5][b(c, 2)]
        ^ t[4][b(c, 3)]
        ^ t[3][b(h, 0)]
        ^ t[2][b(h, 1)]
        ^ t[1][b(h, 2)]
        ^ t[0][b(h, 3)]
}

/// As [`update_u64`], for four bytes.
#[inline]
pub fn update_u32(reg: u32, v: u32) -> u32 {
    let t = &SLICE8;
    let c = reg ^ v;
    let b = |i: u32| ((c >> (8 * i)) & 0xff) as usize;
    t[3][b(0)] ^ t[2][b(1)] ^ t[1][b(2)] ^ t[0][b(3)]
}

/// `SLICE8[k][b]`: the register after byte `b` followed by `k` zero
/// bytes, from register zero.
static SLICE8: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    t[0] = TABLE;
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ TABLE[(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// Whether [`copy_update`] of `len` bytes runs as one pass (on this CPU
/// and at this length); otherwise it is a copy followed by a CRC, and a
/// caller may as well leave the CRC to whoever needs it.
#[inline]
pub fn fused(len: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        len >= simd::MIN_LEN && simd::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = len;
        false
    }
}

/// Copies `src` into `dst` (same length) and returns the register after
/// `src`, starting from `reg`, reading each byte once.
#[inline]
pub fn copy_update(reg: u32, dst: &mut [u8], src: &[u8]) -> u32 {
    assert_eq!(dst.len(), src.len(), "copy_update: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if src.len() >= simd::MIN_LEN && simd::available() {
        // SAFETY: the CPU has the features `copy_update` is compiled for
        // (checked just above), and both slices are valid for their
        // common length.
        return unsafe { simd::copy_update(reg, dst, src) };
    }
    dst.copy_from_slice(src);
    update(reg, src)
}

/// Multiplies two polynomials modulo the CRC polynomial (reflected
/// representation).
const fn mul_mod(a: u32, mut b: u32) -> u32 {
    let mut m = ONE;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        if m == 0 {
            return p;
        }
    }
}

/// x^(2^k) mod P for k = 0..32 (reflected), by repeated squaring.
const X2K: [u32; 32] = {
    let mut t = [0u32; 32];
    t[0] = ONE >> 1; // x^1
    let mut k = 1;
    while k < 32 {
        t[k] = mul_mod(t[k - 1], t[k - 1]);
        k += 1;
    }
    t
};

/// x^(8n) mod P (reflected), from the powers of two.
fn x8n_slow(n: usize) -> u32 {
    let mut p = ONE;
    let mut n = n as u64;
    let mut k = 3;
    while n != 0 {
        if n & 1 != 0 {
            p = mul_mod(X2K[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// Shifts up to this many bytes come from a table.
const TABLE_LEN: usize = 4352;

/// x^(8n) mod P for n below [`TABLE_LEN`], built at compile time (no
/// allocation or first-use cost on the packet path).
static X8N: [u32; TABLE_LEN] = {
    let mut t = [0u32; TABLE_LEN];
    let step = X2K[3]; // x^8
    let mut p = ONE;
    let mut i = 0;
    while i < TABLE_LEN {
        t[i] = p;
        p = mul_mod(step, p);
        i += 1;
    }
    t
};

fn x8n(n: usize) -> u32 {
    match X8N.get(n) {
        Some(&x) => x,
        None => x8n_slow(n),
    }
}

/// The register after `n` zero bytes, starting from `reg`.
#[inline]
pub fn shift(reg: u32, n: usize) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has PCLMULQDQ (checked by `available`).
        return unsafe { simd::mul_mod(x8n(n), reg) };
    }
    mul_mod(x8n(n), reg)
}

/// The byte-at-a-time table: `TABLE[b]` is the register after one zero
/// byte from register `b` (x^8 · b mod P).
const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = i as u32;
        let mut k = 0;
        while k < 8 {
            r = if r & 1 != 0 { (r >> 1) ^ POLY } else { r >> 1 };
            k += 1;
        }
        t[i] = r;
        i += 1;
    }
    t
};

/// The AVX-512 fused loop.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    /// Shorter copies are not worth the setup.
    pub(super) const MIN_LEN: usize = 256;

    static HAVE: AtomicU8 = AtomicU8::new(0);

    /// Whether the CPU has AVX-512F and VPCLMULQDQ (cached: one load
    /// inline, the detection out of line the first time).
    #[inline]
    pub(super) fn available() -> bool {
        match HAVE.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => detect(),
        }
    }

    #[cold]
    #[inline(never)]
    fn detect() -> bool {
        let yes = std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("vpclmulqdq")
            && std::is_x86_feature_detected!("pclmulqdq");
        HAVE.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
        yes
    }

    /// x^n mod P in the normal representation.
    const fn xn_mod(n: u32) -> u32 {
        let mut r: u64 = 1;
        let mut i = 0;
        while i < n {
            r <<= 1;
            if r & (1 << 32) != 0 {
                r ^= 0x1_04c1_1db7;
            }
            i += 1;
        }
        r as u32
    }

    /// The folding constant for x^n: bit-reflected and shifted left by
    /// one, as reflected carry-less products need.
    pub(super) const fn k(n: u32) -> u64 {
        (xn_mod(n).reverse_bits() as u64) << 1
    }

    /// (low, high) constants that move a 128-bit lane `bits` forward.
    const fn fold_pair(bits: u32) -> (u64, u64) {
        (k(bits + 32), k(bits - 32))
    }
    // Computed at compile time.
    const F2048: (u64, u64) = fold_pair(2048);
    const F512: (u64, u64) = fold_pair(512);
    const F384: (u64, u64) = fold_pair(384);
    const F256: (u64, u64) = fold_pair(256);
    const F128: (u64, u64) = fold_pair(128);

    #[target_feature(enable = "avx512f,avx512dq,vpclmulqdq,pclmulqdq")]
    #[inline]
    fn kz((lo, hi): (u64, u64)) -> __m512i {
        _mm512_set_epi64(
            hi as i64, lo as i64, hi as i64, lo as i64, hi as i64, lo as i64, hi as i64, lo as i64,
        )
    }

    /// Each 128-bit lane of `x` moved forward by the distance in `k`, then
    /// added to `d`.
    #[target_feature(enable = "avx512f,avx512dq,vpclmulqdq,pclmulqdq")]
    #[inline]
    fn fold512(x: __m512i, k: __m512i, d: __m512i) -> __m512i {
        let lo = _mm512_clmulepi64_epi128::<0x00>(x, k);
        let hi = _mm512_clmulepi64_epi128::<0x11>(x, k);
        _mm512_ternarylogic_epi64::<0x96>(lo, hi, d)
    }

    #[target_feature(enable = "avx512f,avx512dq,vpclmulqdq,pclmulqdq")]
    #[inline]
    fn fold128(x: __m128i, (lo, hi): (u64, u64)) -> __m128i {
        let k = _mm_set_epi64x(hi as i64, lo as i64);
        _mm_xor_si128(
            _mm_clmulepi64_si128::<0x00>(x, k),
            _mm_clmulepi64_si128::<0x11>(x, k),
        )
    }

    /// `a · b mod P` (reflected) with one carry-less multiply: the 64-bit
    /// product, shifted left by one, holds the low half of the result in
    /// its top 32 bits and the part to reduce (times x^32) in its bottom
    /// 32 bits, which four zero-byte table steps reduce.
    ///
    /// # Safety
    /// The CPU must have PCLMULQDQ.
    #[target_feature(enable = "pclmulqdq")]
    pub(super) unsafe fn mul_mod(a: u32, b: u32) -> u32 {
        let p = _mm_clmulepi64_si128::<0x00>(
            _mm_cvtsi64_si128(i64::from(a)),
            _mm_cvtsi64_si128(i64::from(b)),
        );
        let q = (_mm_cvtsi128_si64(p) as u64) << 1;
        let mut hi = q as u32;
        for _ in 0..4 {
            hi = (hi >> 8) ^ super::TABLE[(hi & 0xff) as usize];
        }
        (q >> 32) as u32 ^ hi
    }

    /// # Safety
    /// The CPU must have AVX-512F and DQ, VPCLMULQDQ and PCLMULQDQ; `dst` and
    /// `src` have the same length, at least [`MIN_LEN`].
    #[target_feature(enable = "avx512f,avx512dq,vpclmulqdq,pclmulqdq")]
    pub(super) unsafe fn copy_update(reg: u32, dst: &mut [u8], src: &[u8]) -> u32 {
        let len = src.len();
        debug_assert!(len >= MIN_LEN && dst.len() == len);
        let s = src.as_ptr();
        let d = dst.as_mut_ptr();
        // SAFETY: (the whole body) every load reads `src[p..p + 64]` and every
        // store writes `dst[p..p + 64]` with `p + 64 <= len`; unaligned
        // loads and stores are used throughout.
        unsafe {
            // The empty `asm!` hides that the stored value is the loaded
            // one; otherwise LLVM turns the stores into a separate memcpy
            // and the data is read twice.
            macro_rules! ld {
                ($p:expr) => {{
                    let mut v = _mm512_loadu_si512(s.add($p).cast());
                    std::arch::asm!("/* {0} */", inout(zmm_reg) v, options(pure, nomem, nostack, preserves_flags));
                    v
                }};
            }
            macro_rules! st {
                ($p:expr, $v:expr) => {
                    _mm512_storeu_si512(d.add($p).cast(), $v)
                };
            }
            let mut x = [ld!(0), ld!(64), ld!(128), ld!(192)];
            for (i, v) in x.iter().enumerate() {
                st!(i * 64, *v);
            }
            // The starting register is added to the first four bytes.
            x[0] = _mm512_xor_si512(x[0], _mm512_castsi128_si512(_mm_cvtsi32_si128(reg as i32)));
            let mut p = 256;
            let k2048 = kz(F2048);
            while p + 256 <= len {
                for (i, acc) in x.iter_mut().enumerate() {
                    let v = ld!(p + i * 64);
                    st!(p + i * 64, v);
                    *acc = fold512(*acc, k2048, v);
                }
                p += 256;
            }
            let k512 = kz(F512);
            let mut a = fold512(x[0], k512, x[1]);
            a = fold512(a, k512, x[2]);
            a = fold512(a, k512, x[3]);
            while p + 64 <= len {
                let v = ld!(p);
                st!(p, v);
                a = fold512(a, k512, v);
                p += 64;
            }
            // Four lanes to one.
            let l0 = _mm512_extracti64x2_epi64::<0>(a);
            let l1 = _mm512_extracti64x2_epi64::<1>(a);
            let l2 = _mm512_extracti64x2_epi64::<2>(a);
            let l3 = _mm512_extracti64x2_epi64::<3>(a);
            let r = _mm_xor_si128(
                _mm_xor_si128(fold128(l0, F384), fold128(l1, F256)),
                _mm_xor_si128(fold128(l2, F128), l3),
            );
            // The register of the whole so far is that of `r` from zero;
            // then the tail (under 64 bytes), if any.
            let reg = reduce128(r);
            let tail = &src[p..];
            if tail.is_empty() {
                return reg;
            }
            dst[p..].copy_from_slice(tail);
            super::update(reg, tail)
        }
    }

    /// x^64 mod P, for the step from 64 to 32 bits.
    const K64: u64 = k(64);
    /// The polynomial (reflected, with its x^32 term) and its Barrett
    /// constant floor(x^64 / P) (reflected), for the last step.
    const P_X: u64 = ((super::POLY as u64) << 1) | 1;
    const MU: u64 = 0x1_f701_1641;

    /// The register after the 16 bytes of `x` from register zero, with no
    /// trip through memory: 128 to 64 bits, 64 to 32 bits (folds), then
    /// a Barrett reduction.
    #[target_feature(enable = "pclmulqdq,sse4.1")]
    pub(super) fn reduce128(x: __m128i) -> u32 {
        let low32 = _mm_set_epi32(0, 0, 0, -1);
        let x = _mm_xor_si128(
            _mm_clmulepi64_si128::<0x00>(x, _mm_cvtsi64_si128(k(96) as i64)),
            _mm_srli_si128::<8>(x),
        );
        let x = _mm_xor_si128(
            _mm_clmulepi64_si128::<0x00>(_mm_and_si128(x, low32), _mm_cvtsi64_si128(K64 as i64)),
            _mm_srli_si128::<4>(x),
        );
        let t1 =
            _mm_clmulepi64_si128::<0x00>(_mm_and_si128(x, low32), _mm_cvtsi64_si128(MU as i64));
        let t2 =
            _mm_clmulepi64_si128::<0x00>(_mm_and_si128(t1, low32), _mm_cvtsi64_si128(P_X as i64));
        _mm_extract_epi32::<1>(_mm_xor_si128(x, t2)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn update_is_crc32() {
        assert_eq!(!update(!0, b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn word_updates_match_update() {
        for seed in 0..5000 {
            let b = bytes(12, seed);
            let reg = seed.wrapping_mul(0x9e37_79b9);
            let v = u64::from_le_bytes(b[..8].try_into().unwrap());
            let w = u32::from_le_bytes(b[8..].try_into().unwrap());
            assert_eq!(update_u64(reg, v), update(reg, &b[..8]), "seed {seed}");
            assert_eq!(update_u32(reg, w), update(reg, &b[8..]), "seed {seed}");
            assert_eq!(
                update_u32(update_u64(reg, v), w),
                update(reg, &b),
                "seed {seed}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn folding_constants_match_crc32fast() {
        // crc32fast's fold-by-four and fold-by-one constants.
        assert_eq!(simd::k(544), 0x1_5444_2bd4);
        assert_eq!(simd::k(480), 0x1_c6e4_1596);
        assert_eq!(simd::k(160), 0x1_7519_97d0);
        assert_eq!(simd::k(96), 0x0_ccaa_009e);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn reduce128_is_the_register_of_16_bytes_from_zero() {
        if !std::is_x86_feature_detected!("pclmulqdq") || !std::is_x86_feature_detected!("sse4.1") {
            return;
        }
        // crc32fast's constants for the same steps.
        assert_eq!(simd::k(64), 0x1_63cd_6124);
        for seed in 0..2000 {
            let b = bytes(16, seed);
            // SAFETY: the features were checked above; the load reads 16 bytes.
            let got =
                unsafe { simd::reduce128(std::arch::x86_64::_mm_loadu_si128(b.as_ptr().cast())) };
            assert_eq!(got, update(0, &b), "seed {seed}");
        }
    }

    #[test]
    fn copy_update_copies_and_matches_update() {
        for len in [
            0, 1, 63, 255, 256, 257, 300, 511, 512, 1000, 4096, 4099, 9000,
        ] {
            for (reg, off) in [(0u32, 0usize), (!0, 3), (0x1234_5678, 1)] {
                let src = bytes(len + off, len as u32);
                let src = &src[off..];
                let mut dst = vec![0u8; len + 5];
                let got = copy_update(reg, &mut dst[off.min(5)..off.min(5) + len], src);
                assert_eq!(got, update(reg, src), "len {len} reg {reg:#x}");
                assert_eq!(&dst[off.min(5)..off.min(5) + len], src, "len {len}");
            }
        }
    }

    #[test]
    fn shift_is_zero_bytes() {
        for n in [0, 1, 2, 7, 64, 4096, 4099, TABLE_LEN - 1, TABLE_LEN, 10_000] {
            let zeros = vec![0u8; n];
            for reg in [0u32, !0, 0xdead_beef] {
                assert_eq!(shift(reg, n), update(reg, &zeros), "n {n}");
            }
        }
    }

    #[test]
    fn multiplies_agree() {
        let vals = [
            0u32,
            1,
            ONE,
            ONE >> 1,
            0xdead_beef,
            0x1234_5678,
            !0,
            0x8000_0001,
        ];
        for a in vals {
            for b in vals {
                #[cfg(target_arch = "x86_64")]
                if simd::available() {
                    // SAFETY: `available` checked the CPU.
                    let fast = unsafe { simd::mul_mod(a, b) };
                    assert_eq!(fast, mul_mod(a, b), "{a:#x} {b:#x}");
                }
                assert_eq!(mul_mod(a, ONE), a);
            }
        }
    }

    #[test]
    fn registers_join() {
        let a = bytes(70, 1);
        let b = bytes(4100, 2);
        let whole = update(update(!0, &a), &b);
        assert_eq!(shift(update(!0, &a), b.len()) ^ update(0, &b), whole);
    }
}
