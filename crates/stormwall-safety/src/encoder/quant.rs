//! Int8 linear layers for the encoder: weights quantised once at load (symmetric, one scale
//! per output channel, ±127), activations quantised per call (asymmetric, one scale and zero
//! point per row — per token — over 0..=255), products summed exactly in i32 by the kernel of
//! [`super::simd`], then scaled back to f32 with the bias added.
//!
//! With `q = round(x/s_x) + z` and `w ≈ s_w·v`, `Σ x·w ≈ s_x·s_w·(Σ q·v − z·Σ v)`: the
//! zero point's share `z·Σ v` uses each channel's weight sum, computed at load.

#[cfg(test)]
use ndarray::Array2;
use ndarray::ArrayView2;

use super::simd::{self, Kernel, Shape};

/// The largest input width whose sums cannot overflow i32 (255 · 127 · k < 2³¹).
pub const MAX_DEPTH: usize = 66_000;

/// A linear layer `y = x·Wᵀ + b` with int8 weights.
#[derive(Debug, Clone)]
pub struct QLinear {
    out: usize,
    k: usize,
    shape: Shape,
    packed: Vec<i8>,
    /// Per output channel: the weight scale.
    scale: Vec<f32>,
    /// Per output channel: the sum of its quantised weights.
    sum: Vec<i32>,
    bias: Vec<f32>,
}

/// Buffers one forward pass reuses across layers (grown on demand).
#[derive(Debug, Default)]
pub struct Scratch {
    q: Vec<u8>,
    scale: Vec<f32>,
    zero: Vec<i32>,
    acc: Vec<i32>,
}

impl QLinear {
    /// Quantises `w` (`in × out`, as the f32 layers store it) and keeps the bias.
    ///
    /// # Panics
    /// When `b`'s length is not `w`'s column count, or the input is wider than
    /// [`MAX_DEPTH`] (the loader checks both).
    pub fn new(w: &ArrayView2<'_, f32>, b: &[f32]) -> QLinear {
        let (k, out) = w.dim();
        assert!(b.len() == out && k <= MAX_DEPTH);
        let mut q = vec![0i8; out * k];
        let mut scale = vec![0f32; out];
        let mut sum = vec![0i32; out];
        for (o, col) in w.columns().into_iter().enumerate() {
            let max = col.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            let row = &mut q[o * k..(o + 1) * k];
            for (dst, &v) in row.iter_mut().zip(col.iter()) {
                *dst = (v / s).round().clamp(-127.0, 127.0) as i8;
            }
            scale[o] = s;
            sum[o] = row.iter().map(|&v| i32::from(v)).sum();
        }
        let (shape, packed) = simd::pack(&q, out, k);
        QLinear {
            out,
            k,
            shape,
            packed,
            scale,
            sum,
            bias: b.to_vec(),
        }
    }

    /// `y = x·Wᵀ + b` for the rows of `x` (`rows × in`, row-major), written into `y`
    /// (`rows × out`).
    #[inline(always)]
    pub fn forward_into(&self, kernel: Kernel, x: &[f32], y: &mut [f32], s: &mut Scratch) {
        let rows = x.len() / self.k.max(1);
        debug_assert!(x.len() == rows * self.k && y.len() == rows * self.out);
        let (kp, op) = (self.shape.k_pad, self.shape.out_pad);
        // Not cleared: the kernel writes every sum it is asked for, and the padding inputs
        // meet zero weights, so stale bytes there add nothing.
        grow(&mut s.q, rows * kp);
        grow(&mut s.acc, rows * op);
        s.scale.clear();
        s.zero.clear();
        for (row, q) in x.chunks_exact(self.k).zip(s.q.chunks_exact_mut(kp)) {
            let (sc, z) = quantize_row(row, &mut q[..self.k]);
            s.scale.push(sc);
            s.zero.push(z);
        }
        simd::gemm(kernel, &s.q, rows, self.shape, &self.packed, &mut s.acc);
        for (r, yrow) in y.chunks_exact_mut(self.out).enumerate() {
            let acc = &s.acc[r * op..r * op + self.out];
            let (sx, z) = (s.scale[r], s.zero[r]);
            let zipped = acc.iter().zip(&self.sum).zip(&self.scale).zip(&self.bias);
            for (dst, (((&a, &ws), &sw), &b)) in yrow.iter_mut().zip(zipped) {
                *dst = (a - z * ws) as f32 * (sx * sw) + b;
            }
        }
    }

    /// Bytes of weights held.
    pub fn weight_bytes(&self) -> usize {
        self.packed.len()
    }
}

/// Makes `v` at least `len` long (new elements zero, old ones kept).
fn grow<T: Default + Clone>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// Smallest and largest element, 0 included, in 16 lanes (the compare-and-select form
/// vectorises).
#[inline(always)]
fn range(xs: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(c) {
            *l = if v < *l { v } else { *l };
            *h = if v > *h { v } else { *h };
        }
    }
    for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(chunks.remainder()) {
        *l = if v < *l { v } else { *l };
        *h = if v > *h { v } else { *h };
    }
    let lo = lo.iter().fold(0f32, |m, &v| if v < m { v } else { m });
    let hi = hi.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    (lo, hi)
}

/// Quantises one row into `q` (0..=255): returns the scale and the zero point, the code of
/// 0.0. The range always holds 0, so zero stays exact; a row of zeros gets scale 1.
#[inline(always)]
fn quantize_row(row: &[f32], q: &mut [u8]) -> (f32, i32) {
    let (lo, hi) = range(row);
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zero = (-lo / scale).round().clamp(0.0, 255.0);
    let inv = 1.0 / scale;
    // Rounding without `round` (a libm call) or a float-to-int `as` (saturating, which does
    // not vectorise): adding 2²³ to a value in 0..=255 leaves it, rounded to nearest even,
    // in the low mantissa bits.
    const ROUND: f32 = 8_388_608.0;
    for (dst, &v) in q.iter_mut().zip(row) {
        let v = v * inv + zero;
        // Compare-and-select, not `clamp`: it vectorises, and a NaN input lands on 0.
        let v = if v < 255.0 { v } else { 255.0 };
        let v = if v > 0.0 { v } else { 0.0 };
        *dst = (v + ROUND).to_bits() as u8;
    }
    (scale, zero as i32)
}

/// The f32 product a quantised layer approximates, for tests: `x·w + b`.
#[cfg(test)]
fn reference(x: &Array2<f32>, w: &Array2<f32>, b: &[f32]) -> Array2<f32> {
    let mut y = x.dot(w);
    for mut row in y.rows_mut() {
        for (v, b) in row.iter_mut().zip(b) {
            *v += b;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flat(x: &Array2<f32>) -> &[f32] {
        x.as_slice().unwrap_or_default()
    }

    fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        // A small LCG: deterministic values in [-1, 1).
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        Array2::from_shape_fn((rows, cols), |_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn the_int8_layer_tracks_the_f32_product(
            rows in 1usize..12, k in 1usize..300, out in 1usize..150, seed in any::<u64>()
        ) {
            let x = matrix(rows, k, seed);
            let w = matrix(k, out, seed ^ 0x5eed);
            let b: Vec<f32> = (0..out).map(|i| i as f32 * 0.01).collect();
            let q = QLinear::new(&w.view(), &b);
            let want = reference(&x, &w, &b);
            let mut s = Scratch::default();
            for kernel in [Kernel::Scalar, Kernel::detect()] {
                let mut y = Array2::zeros((rows, out));
                q.forward_into(kernel, flat(&x), y.as_slice_mut().unwrap_or_default(), &mut s);
                // Each product errs by at most half a step of each operand; the sum over k
                // of independent errors grows like √k. Bound: 4·√k·step_x·step_w-ish,
                // taken loosely as 0.04·√k on values of unit range.
                let tol = 0.04 * (k as f32).sqrt();
                for (a, b) in y.iter().zip(want.iter()) {
                    prop_assert!((a - b).abs() <= tol, "{a} vs {b}, tol {tol}");
                }
            }
        }
    }

    #[test]
    fn every_kernel_gives_the_same_floats() {
        let (rows, k, out) = (64, 384, 1152);
        let x = matrix(rows, k, 1);
        let w = matrix(k, out, 2);
        let q = QLinear::new(&w.view(), &vec![0.5; out]);
        let mut s = Scratch::default();
        let mut a = Array2::zeros((rows, out));
        let mut b = Array2::zeros((rows, out));
        q.forward_into(
            Kernel::Scalar,
            flat(&x),
            a.as_slice_mut().unwrap_or_default(),
            &mut s,
        );
        q.forward_into(
            Kernel::detect(),
            flat(&x),
            b.as_slice_mut().unwrap_or_default(),
            &mut s,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn zero_is_exact_and_rows_of_zeros_stay_zero() {
        let mut q = [0u8; 4];
        let (s, z) = quantize_row(&[0.0f32, 0.0, 0.0, 0.0], &mut q);
        assert_eq!((s, z, q), (1.0, 0, [0; 4]));
        let (s, z) = quantize_row(&[-1.0f32, 0.0, 2.0, 0.5], &mut q);
        assert_eq!(q[1] as i32, z);
        assert_eq!((q[0], q[2]), (0, 255));
        assert!((s - 3.0 / 255.0).abs() < 1e-7);
        let (_, z) = quantize_row(&[1.0f32, 2.0], &mut q[..2]);
        assert_eq!(z, 0, "an all-positive row starts at zero");
    }

    #[test]
    fn a_zero_weight_column_gives_the_bias() {
        let w = Array2::<f32>::zeros((8, 3));
        let q = QLinear::new(&w.view(), &[1.0, 2.0, 3.0]);
        let x = matrix(2, 8, 3);
        let mut y = Array2::zeros((2, 3));
        let ys = y.as_slice_mut().unwrap_or_default();
        q.forward_into(Kernel::detect(), flat(&x), ys, &mut Scratch::default());
        assert_eq!(y.row(0).to_vec(), vec![1.0, 2.0, 3.0]);
    }
}
