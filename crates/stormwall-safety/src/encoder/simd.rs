//! The int8 matrix kernel of the encoder's quantised linear layers: `C = A · Wᵀ` with `A`
//! unsigned 8-bit (quantised activations, one row per token), `W` signed 8-bit (quantised
//! weights, one row per output channel) and exact 32-bit sums.
//!
//! Two implementations with identical results (integer sums are exact, so they agree bit
//! for bit, which the property test below checks over random shapes):
//! - [`gemm_scalar`], portable, the reference;
//! - an AVX-512 VNNI kernel (`vpdpbusd`: four u8·i8 products summed into each of sixteen
//!   i32 lanes per instruction), chosen at run time with `is_x86_feature_detected!`;
//! - an AVX2 kernel for processors without VNNI: both operands widened to i16 and multiplied
//!   pairwise with `vpmaddwd` (exact: `vpmaddubsw` would saturate at 2·255·127).
//!
//! This is the crate's only `unsafe` code: the VNNI kernel's vector loads and stores through
//! raw pointers, and the call into a `#[target_feature]` function, which is sound only after
//! the run-time check. Every pointer it forms stays inside a slice whose length is asserted
//! on entry.

/// Output channels per packed tile: four 16-lane vectors.
pub const TILE: usize = 64;
/// Input positions summed per 32-bit lane (the depth of one `vpdpbusd` step).
pub const GROUP: usize = 4;

/// The kernel this process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable Rust, no SIMD intrinsics.
    Scalar,
    /// AVX-512 with VNNI (`avx512f`, `avx512bw`, `avx512vnni`).
    Avx512Vnni,
    /// AVX2 (`vpmaddwd` on operands widened to i16).
    Avx2,
}

impl Kernel {
    /// The fastest kernel this processor runs.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Kernel::Avx512Vnni;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// Whether this processor runs `self` (the scalar kernel runs everywhere).
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            Kernel::Avx512Vnni => Kernel::detect() == Kernel::Avx512Vnni,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 => false,
        }
    }

    /// The kernel `STORMWALL_ENCODER_KERNEL` names (`scalar`, `avx2`, `avx512-vnni`) when
    /// this processor runs it, else [`Kernel::detect`]'s: for comparing kernels in
    /// benchmarks.
    pub fn from_env() -> Kernel {
        let named = std::env::var("STORMWALL_ENCODER_KERNEL")
            .ok()
            .and_then(|v| {
                [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512Vnni]
                    .into_iter()
                    .find(|k| k.name() == v.trim())
            });
        match named {
            Some(k) if k.available() => k,
            _ => Kernel::detect(),
        }
    }

    /// Its name, for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Avx2 => "avx2",
        }
    }
}

/// The packed layout of an `out × k` weight matrix: tiles of [`TILE`] output channels; in a
/// tile, for each group of [`GROUP`] input positions, the group's bytes of channel 0, then of
/// channel 1, … — so one 64-byte vector holds four inputs of sixteen channels. Channels and
/// inputs past the matrix are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Input positions, rounded up to a multiple of [`GROUP`].
    pub k_pad: usize,
    /// Output channels, rounded up to a multiple of [`TILE`].
    pub out_pad: usize,
}

impl Shape {
    /// The padded shape of an `out × k` matrix.
    pub fn new(out: usize, k: usize) -> Shape {
        Shape {
            k_pad: k.div_ceil(GROUP) * GROUP,
            out_pad: out.div_ceil(TILE) * TILE,
        }
    }

    /// Bytes of the packed matrix.
    pub fn packed_len(self) -> usize {
        self.k_pad * self.out_pad
    }

    /// Index in the packed matrix of weight `(o, k)`.
    pub fn index(self, o: usize, k: usize) -> usize {
        let (tile, j) = (o / TILE, o % TILE);
        let (g, b) = (k / GROUP, k % GROUP);
        ((tile * (self.k_pad / GROUP) + g) * TILE + j) * GROUP + b
    }
}

/// Packs a row-major `out × k` i8 matrix in the layout of [`Shape`].
pub fn pack(w: &[i8], out: usize, k: usize) -> (Shape, Vec<i8>) {
    let shape = Shape::new(out, k);
    let mut packed = vec![0i8; shape.packed_len()];
    for o in 0..out {
        for (kk, &v) in w[o * k..(o + 1) * k].iter().enumerate() {
            packed[shape.index(o, kk)] = v;
        }
    }
    (shape, packed)
}

/// `c[r·out_pad + o] = Σ_k a[r·k_pad + k] · w(o, k)` for `rows` rows, with the kernel given
/// (the scalar one when the processor lacks the kernel's features).
///
/// # Panics
/// When a slice is shorter than the shapes imply.
pub fn gemm(kernel: Kernel, a: &[u8], rows: usize, shape: Shape, packed: &[i8], c: &mut [i32]) {
    assert!(a.len() >= rows * shape.k_pad, "activations too short");
    assert!(packed.len() >= shape.packed_len(), "weights too short");
    assert!(c.len() >= rows * shape.out_pad, "output too short");
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni if Kernel::Avx512Vnni.available() => {
            // SAFETY: the processor has avx512f, avx512bw and avx512vnni (checked just above;
            // the std macro caches the answer), and the lengths are asserted above.
            #[allow(unsafe_code)]
            unsafe {
                vnni::gemm(a, rows, shape, packed, c)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 if Kernel::Avx2.available() => {
            // SAFETY: the processor has avx2 (checked just above); lengths asserted above.
            #[allow(unsafe_code)]
            unsafe {
                avx2::gemm(a, rows, shape, packed, c)
            }
        }
        _ => gemm_scalar(a, rows, shape, packed, c),
    }
}

/// Runs `f` in a function compiled with AVX-512 (`avx512f`, `avx512bw`, `avx512vl`,
/// `avx512dq`), else AVX2 and FMA, when the processor has them, so that the plain loops
/// `f` inlines vectorise to that width; otherwise calls `f` as it is. The results are the
/// same either way: Rust never fuses `a·b + c` into an FMA on its own, and no
/// floating-point sum is reordered.
#[inline(always)]
pub fn with_wide_vectors<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq") {
            // SAFETY: the features the callee is compiled for were detected just above.
            #[allow(unsafe_code)]
            return unsafe { wide::avx512(f) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: as above.
            #[allow(unsafe_code)]
            return unsafe { wide::avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
mod wide {
    /// # Safety
    /// The processor must have the features named.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    #[allow(unsafe_code)]
    pub(super) unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// # Safety
    /// The processor must have the features named.
    #[target_feature(enable = "avx2,fma")]
    #[allow(unsafe_code)]
    pub(super) unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// The portable reference of [`gemm`].
pub fn gemm_scalar(a: &[u8], rows: usize, shape: Shape, packed: &[i8], c: &mut [i32]) {
    let kg = shape.k_pad / GROUP;
    for tile in 0..shape.out_pad / TILE {
        let panel = &packed[tile * kg * TILE * GROUP..(tile + 1) * kg * TILE * GROUP];
        for r in 0..rows {
            let arow = &a[r * shape.k_pad..(r + 1) * shape.k_pad];
            let mut acc = [0i32; TILE];
            for (ag, wg) in arow
                .chunks_exact(GROUP)
                .zip(panel.chunks_exact(TILE * GROUP))
            {
                for (j, w4) in wg.chunks_exact(GROUP).enumerate() {
                    acc[j] += ag
                        .iter()
                        .zip(w4)
                        .map(|(&x, &w)| i32::from(x) * i32::from(w))
                        .sum::<i32>();
                }
            }
            c[r * shape.out_pad + tile * TILE..r * shape.out_pad + (tile + 1) * TILE]
                .copy_from_slice(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vnni {
    //! `vpdpbusd` kernel: a block of `MR` activation rows against one 64-channel tile, the
    //! `MR × 4` accumulators held in registers across the whole depth.

    use std::arch::x86_64::{
        __m512i, _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_setzero_si512,
        _mm512_storeu_si512,
    };

    use super::{GROUP, Shape, TILE};

    /// Rows per register block: 6 × 4 accumulators + 4 weight vectors + a broadcast fit the
    /// 32 vector registers.
    const MR: usize = 6;

    /// See [`super::gemm`]; the caller has checked the slice lengths.
    ///
    /// # Safety
    /// The processor must support avx512f, avx512bw and avx512vnni.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn gemm(a: &[u8], rows: usize, shape: Shape, packed: &[i8], c: &mut [i32]) {
        let kg = shape.k_pad / GROUP;
        for tile in 0..shape.out_pad / TILE {
            let panel = &packed[tile * kg * TILE * GROUP..(tile + 1) * kg * TILE * GROUP];
            let mut r = 0;
            while r + MR <= rows {
                block::<MR>(a, r, shape, panel, tile, c);
                r += MR;
            }
            match rows - r {
                0 => {}
                1 => block::<1>(a, r, shape, panel, tile, c),
                2 => block::<2>(a, r, shape, panel, tile, c),
                3 => block::<3>(a, r, shape, panel, tile, c),
                4 => block::<4>(a, r, shape, panel, tile, c),
                _ => block::<5>(a, r, shape, panel, tile, c),
            }
        }
    }

    /// Rows `r0..r0 + R` against one tile's `panel` (`k_pad / 4` groups of 256 bytes).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn block<const R: usize>(
        a: &[u8],
        r0: usize,
        shape: Shape,
        panel: &[i8],
        tile: usize,
        c: &mut [i32],
    ) {
        let kg = shape.k_pad / GROUP;
        assert!(panel.len() == kg * TILE * GROUP);
        assert!(a.len() >= (r0 + R) * shape.k_pad);
        assert!(c.len() >= (r0 + R) * shape.out_pad);
        let rows: [&[u8]; R] =
            std::array::from_fn(|i| &a[(r0 + i) * shape.k_pad..(r0 + i + 1) * shape.k_pad]);
        let mut acc = [[_mm512_setzero_si512(); 4]; R];
        let wp = panel.as_ptr().cast::<__m512i>();
        for g in 0..kg {
            // SAFETY: `panel` holds `kg` groups of four 64-byte vectors (asserted above), and
            // `loadu` has no alignment requirement.
            let w = unsafe {
                [
                    _mm512_loadu_si512(wp.add(4 * g)),
                    _mm512_loadu_si512(wp.add(4 * g + 1)),
                    _mm512_loadu_si512(wp.add(4 * g + 2)),
                    _mm512_loadu_si512(wp.add(4 * g + 3)),
                ]
            };
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let x = &row[g * GROUP..g * GROUP + GROUP];
                let x = _mm512_set1_epi32(i32::from_le_bytes([x[0], x[1], x[2], x[3]]));
                for (acc, w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_dpbusd_epi32(*acc, x, *w);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let start = (r0 + i) * shape.out_pad + tile * TILE;
            let out = &mut c[start..start + TILE];
            let op = out.as_mut_ptr().cast::<__m512i>();
            for (v, acc) in acc.iter().enumerate() {
                // SAFETY: `out` is 64 i32 = four 64-byte vectors; `storeu` has no alignment
                // requirement.
                unsafe { _mm512_storeu_si512(op.add(v), *acc) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    //! `vpmaddwd` kernel: per 4-deep group, each 8-byte half of a channel pair's weights is
    //! widened to i16 and multiplied with the row's four activations (widened and repeated),
    //! giving two partial sums per channel; the pairs are added once, at the end.

    use std::arch::x86_64::{
        __m128i, __m256i, _mm_loadu_si128, _mm_set1_epi32, _mm256_add_epi32, _mm256_cvtepi8_epi16,
        _mm256_cvtepu8_epi16, _mm256_hadd_epi32, _mm256_madd_epi16, _mm256_permute4x64_epi64,
        _mm256_setzero_si256, _mm256_storeu_si256,
    };

    use super::{GROUP, Shape, TILE};

    /// Rows per register block: 2 × 4 accumulators + 4 widened weights + 1 broadcast of
    /// the 16 vector registers.
    const MR: usize = 2;
    /// Channels per block: 16 (four vectors of four channels' pair sums).
    const NB: usize = 16;

    /// See [`super::gemm`]; the caller has checked the slice lengths.
    ///
    /// # Safety
    /// The processor must support avx2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gemm(a: &[u8], rows: usize, shape: Shape, packed: &[i8], c: &mut [i32]) {
        let kg = shape.k_pad / GROUP;
        for tile in 0..shape.out_pad / TILE {
            let panel = &packed[tile * kg * TILE * GROUP..(tile + 1) * kg * TILE * GROUP];
            for sub in 0..TILE / NB {
                let col = tile * TILE + sub * NB;
                let mut r = 0;
                while r + MR <= rows {
                    block::<MR>(a, r, shape, panel, sub, col, c);
                    r += MR;
                }
                if r < rows {
                    block::<1>(a, r, shape, panel, sub, col, c);
                }
            }
        }
    }

    /// Rows `r0..r0 + R` against channels `sub·16..sub·16 + 16` of one tile's `panel`,
    /// written at column `col`.
    #[target_feature(enable = "avx2")]
    fn block<const R: usize>(
        a: &[u8],
        r0: usize,
        shape: Shape,
        panel: &[i8],
        sub: usize,
        col: usize,
        c: &mut [i32],
    ) {
        let kg = shape.k_pad / GROUP;
        assert!(panel.len() == kg * TILE * GROUP && sub < TILE / NB);
        assert!(a.len() >= (r0 + R) * shape.k_pad);
        assert!(c.len() >= (r0 + R - 1) * shape.out_pad + col + NB);
        let mut acc = [[_mm256_setzero_si256(); 4]; R];
        for g in 0..kg {
            let at = g * TILE * GROUP + sub * NB * GROUP;
            let wp = panel[at..at + NB * GROUP].as_ptr().cast::<__m128i>();
            // SAFETY: the slice just taken holds 64 bytes = four 16-byte vectors; `loadu`
            // has no alignment requirement.
            let w = unsafe {
                [
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(wp)),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(1))),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(2))),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(3))),
                ]
            };
            for (i, acc) in acc.iter_mut().enumerate() {
                let o = (r0 + i) * shape.k_pad + g * GROUP;
                let x = &a[o..o + GROUP];
                let x = i32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                let x = _mm256_cvtepu8_epi16(_mm_set1_epi32(x));
                for (acc, w) in acc.iter_mut().zip(&w) {
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(*w, x));
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let start = (r0 + i) * shape.out_pad + col;
            let out = &mut c[start..start + NB];
            let op = out.as_mut_ptr().cast::<__m256i>();
            for (v, pair) in acc.chunks_exact(2).enumerate() {
                // hadd gives channels 0 1 4 5 | 2 3 6 7; the permute puts them in order.
                let s = _mm256_hadd_epi32(pair[0], pair[1]);
                let s = _mm256_permute4x64_epi64::<0b11_01_10_00>(s);
                // SAFETY: `out` is 16 i32 = two 32-byte vectors; `storeu` is unaligned.
                unsafe { _mm256_storeu_si256(op.add(v), s) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain definition, on the unpacked matrix.
    fn naive(a: &[u8], rows: usize, k: usize, w: &[i8], out: usize) -> Vec<i32> {
        let mut c = vec![0i32; rows * out];
        for r in 0..rows {
            for o in 0..out {
                c[r * out + o] = (0..k)
                    .map(|i| i32::from(a[r * k + i]) * i32::from(w[o * k + i]))
                    .sum();
            }
        }
        c
    }

    /// Runs `kernel` on an unpadded problem and returns the unpadded result.
    fn run(kernel: Kernel, a: &[u8], rows: usize, k: usize, w: &[i8], out: usize) -> Vec<i32> {
        let (shape, packed) = pack(w, out, k);
        let mut ap = vec![0u8; rows * shape.k_pad];
        for r in 0..rows {
            ap[r * shape.k_pad..r * shape.k_pad + k].copy_from_slice(&a[r * k..(r + 1) * k]);
        }
        let mut c = vec![0i32; rows * shape.out_pad];
        gemm(kernel, &ap, rows, shape, &packed, &mut c);
        (0..rows)
            .flat_map(|r| c[r * shape.out_pad..r * shape.out_pad + out].to_vec())
            .collect()
    }

    fn problem() -> impl Strategy<Value = (usize, usize, usize, Vec<u8>, Vec<i8>)> {
        (1usize..20, 1usize..150, 1usize..150).prop_flat_map(|(rows, k, out)| {
            (
                Just(rows),
                Just(k),
                Just(out),
                proptest::collection::vec(any::<u8>(), rows * k),
                proptest::collection::vec(-127i8..=127, out * k),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_kernel_equals_the_plain_definition((rows, k, out, a, w) in problem()) {
            let want = naive(&a, rows, k, &w, out);
            prop_assert_eq!(&run(Kernel::Scalar, &a, rows, k, &w, out), &want);
            // A kernel this processor lacks falls back to the scalar one.
            prop_assert_eq!(&run(Kernel::Avx512Vnni, &a, rows, k, &w, out), &want);
            prop_assert_eq!(&run(Kernel::Avx2, &a, rows, k, &w, out), &want);
        }
    }

    #[test]
    fn extreme_values_sum_exactly_over_a_deep_input() {
        // 255 · ±127 over 1,536 inputs: far past i16, inside i32.
        let (rows, k, out) = (7, 1536, 70);
        let a = vec![255u8; rows * k];
        let w: Vec<i8> = (0..out * k)
            .map(|i| if i % 3 == 0 { -127 } else { 127 })
            .collect();
        let want = naive(&a, rows, k, &w, out);
        for kernel in [Kernel::Avx512Vnni, Kernel::Avx2, Kernel::Scalar] {
            assert_eq!(run(kernel, &a, rows, k, &w, out), want, "{kernel:?}");
        }
    }

    #[test]
    fn packing_puts_four_inputs_of_sixteen_channels_in_a_vector() {
        let s = Shape::new(100, 10);
        assert_eq!((s.k_pad, s.out_pad), (12, 128));
        assert_eq!(s.index(0, 0), 0);
        assert_eq!(s.index(0, 3), 3);
        assert_eq!(s.index(1, 0), 4);
        assert_eq!(s.index(0, 4), TILE * GROUP);
        assert_eq!(s.index(64, 0), 3 * TILE * GROUP);
    }
}
