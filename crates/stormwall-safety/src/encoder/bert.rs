//! A BERT-family encoder forward pass on the CPU, in f32: embeddings (word + position +
//! token type, layer-normed), then per layer multi-head self-attention and a GELU
//! feed-forward block, each with a residual connection and layer norm (post-norm, as
//! BERT). Shapes come from `config.json`; weights from a `model.safetensors` with the
//! Hugging Face `BertModel` names (with or without a `bert.` prefix). In [`Precision::F32`]
//! matrix products go through `ndarray` (its `matrixmultiply` kernels pick AVX2/FMA at run
//! time); in [`Precision::Int8`] the linear layers (query/key/value, attention output,
//! feed-forward in and out) run quantised ([`super::quant`]) and everything else — layer
//! norm, attention scores and softmax, GELU — stays f32.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, Axis, Slice};

use super::quant::{self, QLinear, Scratch};
use super::simd::Kernel;
use super::{EncoderError, Precision};

/// The shape of the network, from `config.json`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Config {
    /// Width of every token vector.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Longest input, in tokens.
    pub max_position_embeddings: usize,
    /// Token types (segments).
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// Layer-norm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f32,
    /// Feed-forward activation: `gelu` (exact) or `gelu_new` / `gelu_pytorch_tanh`.
    #[serde(default = "gelu")]
    pub hidden_act: String,
    /// Vocabulary size.
    pub vocab_size: usize,
}

fn two() -> usize {
    2
}
fn eps() -> f32 {
    1e-12
}
fn gelu() -> String {
    "gelu".to_owned()
}

#[derive(Debug, Clone)]
enum Linear {
    F32 {
        /// `in × out`: transposed from PyTorch's `out × in` at load, so the matrix kernel
        /// reads each weight row contiguously when it packs them.
        w: Array2<f32>,
        b: Array1<f32>,
    },
    Int8(QLinear),
}

impl Linear {
    /// `y = x·W + b`, written into `y`.
    #[inline(always)]
    fn forward_into(
        &self,
        x: &ArrayView2<'_, f32>,
        y: &mut ArrayViewMut2<'_, f32>,
        kernel: Kernel,
        scratch: &mut Scratch,
    ) {
        match self {
            Linear::F32 { w, b } => {
                for mut row in y.rows_mut() {
                    row.assign(b);
                }
                general_mat_mul(1.0, x, w, 1.0, y);
            }
            Linear::Int8(q) => {
                let x = x.as_standard_layout();
                debug_assert!(y.is_standard_layout());
                if let (Some(xs), Some(ys)) = (x.as_slice(), y.as_slice_mut()) {
                    q.forward_into(kernel, xs, ys, scratch);
                }
            }
        }
    }

    /// The layer in `precision` (quantised once here, at load).
    fn with_precision(self, precision: Precision) -> Linear {
        match (self, precision) {
            (Linear::F32 { w, b }, Precision::Int8) => {
                Linear::Int8(QLinear::new(&w.view(), &b.to_vec()))
            }
            (l, _) => l,
        }
    }
}

#[derive(Debug, Clone)]
struct Norm {
    g: Array1<f32>,
    b: Array1<f32>,
}

impl Norm {
    /// `x ← norm(x + residual)`, row by row (`residual` of `x`'s shape, or `None`).
    #[inline(always)]
    fn apply(&self, x: &mut Array2<f32>, residual: Option<&Array2<f32>>, eps: f32) {
        let (Some(g), Some(b)) = (self.g.as_slice(), self.b.as_slice()) else {
            return;
        };
        let h = x.ncols();
        let res = residual.and_then(|r| r.as_slice());
        let Some(xs) = x.as_slice_mut() else { return };
        for (i, row) in xs.chunks_exact_mut(h).enumerate() {
            if let Some(r) = res {
                for (v, r) in row.iter_mut().zip(&r[i * h..(i + 1) * h]) {
                    *v += r;
                }
            }
            let n = row.len() as f32;
            let mean = sum(row) / n;
            let var = sum_sq_dev(row, mean) / n;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(g).zip(b) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    /// Query, key and value fused: `hidden × 3·hidden`, one matrix product per layer.
    qkv: Linear,
    o: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// A loaded encoder network.
#[derive(Debug, Clone)]
pub struct Bert {
    config: Config,
    precision: Precision,
    kernel: Kernel,
    tanh_gelu: bool,
    words: Array2<f32>,
    positions: Array2<f32>,
    types: Array2<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
}

struct Weights<'a> {
    st: safetensors::SafeTensors<'a>,
    prefix: &'static str,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EncoderError> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .st
            .tensor(&full)
            .map_err(|_| EncoderError::Weights(format!("no tensor {full}")))?;
        if t.shape() != shape {
            return Err(EncoderError::Weights(format!(
                "{full}: shape {:?}, config.json implies {shape:?}",
                t.shape()
            )));
        }
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(EncoderError::Weights(format!(
                "{full}: dtype {:?}, only F32 is supported",
                t.dtype()
            )));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>, EncoderError> {
        let v = self.get(name, &[rows, cols])?;
        Array2::from_shape_vec((rows, cols), v).map_err(|e| EncoderError::Weights(e.to_string()))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Array1<f32>, EncoderError> {
        Ok(Array1::from(self.get(name, &[len])?))
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear, EncoderError> {
        let w = self.matrix(&format!("{name}.weight"), out, inp)?;
        Ok(Linear::F32 {
            // Stored `in × out` in standard (row-major) layout.
            w: w.t().as_standard_layout().into_owned(),
            b: self.vector(&format!("{name}.bias"), out)?,
        })
    }

    /// Several linear layers over the same input as one, outputs side by side.
    fn fused(&self, names: &[&str], out: usize, inp: usize) -> Result<Linear, EncoderError> {
        let mut ws = Vec::new();
        let mut bs = Vec::new();
        for n in names {
            if let Linear::F32 { w, b } = self.linear(n, out, inp)? {
                ws.push(w);
                bs.push(b);
            }
        }
        let ws: Vec<_> = ws.iter().map(|w| w.view()).collect();
        let bs: Vec<_> = bs.iter().map(|b| b.view()).collect();
        let concat = |axis, views: &[_]| {
            ndarray::concatenate(Axis(axis), views)
                .map_err(|e| EncoderError::Weights(e.to_string()))
        };
        Ok(Linear::F32 {
            w: concat(1, &ws)?,
            b: ndarray::concatenate(Axis(0), &bs)
                .map_err(|e| EncoderError::Weights(e.to_string()))?,
        })
    }

    fn norm(&self, name: &str, len: usize) -> Result<Norm, EncoderError> {
        Ok(Norm {
            g: self.vector(&format!("{name}.weight"), len)?,
            b: self.vector(&format!("{name}.bias"), len)?,
        })
    }
}

impl Bert {
    /// Builds the network from `config.json` text and `model.safetensors` bytes, its linear
    /// layers in `precision`.
    pub fn load(config: &str, weights: &[u8], precision: Precision) -> Result<Bert, EncoderError> {
        let config: Config = serde_json::from_str(config)
            .map_err(|e| EncoderError::Config(format!("config.json: {e}")))?;
        let c = &config;
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(EncoderError::Config(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        let tanh_gelu = match c.hidden_act.as_str() {
            "gelu" => false,
            "gelu_new" | "gelu_pytorch_tanh" => true,
            other => {
                return Err(EncoderError::Config(format!(
                    "hidden_act {other:?} is not supported (gelu, gelu_new)"
                )));
            }
        };
        let st = safetensors::SafeTensors::deserialize(weights)
            .map_err(|e| EncoderError::Weights(format!("model.safetensors: {e}")))?;
        let prefix = if st.tensor("embeddings.word_embeddings.weight").is_ok() {
            ""
        } else {
            "bert."
        };
        let w = Weights { st, prefix };
        let h = c.hidden_size;
        if precision == Precision::Int8 && c.intermediate_size.max(h) > quant::MAX_DEPTH {
            return Err(EncoderError::Config(format!(
                "int8 layers take at most {} inputs",
                quant::MAX_DEPTH
            )));
        }
        let q = |l: Linear| l.with_precision(precision);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                qkv: q(w.fused(
                    &[
                        &format!("{p}.attention.self.query"),
                        &format!("{p}.attention.self.key"),
                        &format!("{p}.attention.self.value"),
                    ],
                    h,
                    h,
                )?),
                o: q(w.linear(&format!("{p}.attention.output.dense"), h, h)?),
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                up: q(w.linear(&format!("{p}.intermediate.dense"), c.intermediate_size, h)?),
                down: q(w.linear(&format!("{p}.output.dense"), h, c.intermediate_size)?),
                out_norm: w.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        Ok(Bert {
            words: w.matrix("embeddings.word_embeddings.weight", c.vocab_size, h)?,
            positions: w.matrix(
                "embeddings.position_embeddings.weight",
                c.max_position_embeddings,
                h,
            )?,
            types: w.matrix(
                "embeddings.token_type_embeddings.weight",
                c.type_vocab_size,
                h,
            )?,
            emb_norm: w.norm("embeddings.LayerNorm", h)?,
            layers,
            tanh_gelu,
            config,
            precision,
            kernel: match precision {
                Precision::F32 => Kernel::Scalar,
                Precision::Int8 => Kernel::from_env(),
            },
        })
    }

    /// The precision of the linear layers.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The int8 kernel in use (`Scalar` also when the layers are f32).
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The network's shape.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The last layer's token vectors (`tokens × hidden`) for token ids of one sequence
    /// (segment 0, no padding). Ids past the vocabulary and positions past the table are
    /// errors.
    pub fn forward(&self, ids: &[u32]) -> Result<Array2<f32>, EncoderError> {
        self.forward_keeping(ids, &[]).map(|(last, _)| last)
    }

    /// [`Bert::forward`], also returning a copy of the token vectors after each layer in
    /// `keep` (1-based; 0 is the embedding layer's output), in the order asked. Numbers past
    /// the last layer give the last layer's vectors.
    pub fn forward_keeping(
        &self,
        ids: &[u32],
        keep: &[usize],
    ) -> Result<(Array2<f32>, Vec<Array2<f32>>), EncoderError> {
        // Compiled a second time with AVX-512 (or AVX2) enabled, so the element-wise loops
        // (layer norm, softmax, GELU, int8 (de)quantisation) run on wide vectors.
        super::simd::with_wide_vectors(
            #[inline(always)]
            || self.forward_inner(ids, keep),
        )
    }

    #[inline(always)]
    fn forward_inner(
        &self,
        ids: &[u32],
        keep: &[usize],
    ) -> Result<(Array2<f32>, Vec<Array2<f32>>), EncoderError> {
        let c = &self.config;
        let (n, h) = (ids.len(), c.hidden_size);
        if n > c.max_position_embeddings {
            return Err(EncoderError::TooLong(n, c.max_position_embeddings));
        }
        let mut x = Array2::<f32>::zeros((n, h));
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= c.vocab_size {
                return Err(EncoderError::Token(id));
            }
            let mut row = x.row_mut(i);
            row += &self.words.row(id as usize);
            row += &self.positions.row(i);
            row += &self.types.row(0);
        }
        self.emb_norm.apply(&mut x, None, c.layer_norm_eps);
        let mut kept: Vec<Option<Array2<f32>>> = vec![None; keep.len()];
        let mut save = |layer: usize, x: &Array2<f32>| {
            for (slot, &k) in kept.iter_mut().zip(keep) {
                if k == layer {
                    *slot = Some(x.clone());
                }
            }
        };
        save(0, &x);
        let heads = c.num_attention_heads;
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        // Every buffer once per call, reused by each layer.
        let mut qkv = Array2::<f32>::zeros((n, 3 * h));
        let mut scores = Array2::<f32>::zeros((n, n));
        let mut ctx = Array2::<f32>::zeros((n, h));
        let mut a = Array2::<f32>::zeros((n, h));
        let mut up = Array2::<f32>::zeros((n, c.intermediate_size));
        let mut scratch = Scratch::default();
        let (kernel, s) = (self.kernel, &mut scratch);
        for (li, l) in self.layers.iter().enumerate() {
            l.qkv
                .forward_into(&x.view(), &mut qkv.view_mut(), kernel, s);
            for hd in 0..heads {
                // (ndarray's `s!` macro expands to code the workspace's forbid(unsafe) rejects.)
                let q = qkv.slice_axis(Axis(1), Slice::from(hd * d..(hd + 1) * d));
                let k = qkv.slice_axis(Axis(1), Slice::from(h + hd * d..h + (hd + 1) * d));
                let v = qkv.slice_axis(Axis(1), Slice::from(2 * h + hd * d..2 * h + (hd + 1) * d));
                general_mat_mul(scale, &q, &k.t(), 0.0, &mut scores);
                if let Some(flat) = scores.as_slice_mut() {
                    for row in flat.chunks_exact_mut(n) {
                        softmax(row);
                    }
                }
                general_mat_mul(
                    1.0,
                    &scores,
                    &v,
                    0.0,
                    &mut ctx.slice_axis_mut(Axis(1), Slice::from(hd * d..(hd + 1) * d)),
                );
            }
            l.o.forward_into(&ctx.view(), &mut a.view_mut(), kernel, s);
            l.attn_norm.apply(&mut a, Some(&x), c.layer_norm_eps);
            l.up.forward_into(&a.view(), &mut up.view_mut(), kernel, s);
            if let Some(flat) = up.as_slice_mut() {
                if self.tanh_gelu {
                    flat.iter_mut().for_each(|v| *v = gelu_tanh(*v));
                } else {
                    gelu_erf_slice(flat);
                }
            }
            // The block's output overwrites `x`, then the residual is added back from `a`.
            l.down
                .forward_into(&up.view(), &mut x.view_mut(), kernel, s);
            l.out_norm.apply(&mut x, Some(&a), c.layer_norm_eps);
            if li + 1 < self.layers.len() {
                save(li + 1, &x);
            }
        }
        let kept = kept
            .into_iter()
            .map(|k| k.unwrap_or_else(|| x.clone()))
            .collect();
        Ok((x, kept))
    }
}

/// Mean of the token vectors, scaled to unit length.
pub fn mean_pool_normalized(tokens: &Array2<f32>) -> Vec<f32> {
    let Some(mean) = tokens.mean_axis(Axis(0)) else {
        return Vec::new();
    };
    unit(mean.to_vec())
}

/// Per-dimension maximum of the token vectors, scaled to unit length: one strong token
/// stands out however many others the text holds (a mean dilutes it).
pub fn max_pool_normalized(tokens: &Array2<f32>) -> Vec<f32> {
    if tokens.nrows() == 0 {
        return Vec::new();
    }
    let max = tokens.fold_axis(Axis(0), f32::NEG_INFINITY, |a, b| a.max(*b));
    unit(max.to_vec())
}

/// The first token's vector (`[CLS]`), scaled to unit length.
pub fn first_token_normalized(tokens: &Array2<f32>) -> Vec<f32> {
    if tokens.nrows() == 0 {
        return Vec::new();
    }
    unit(tokens.row(0).to_vec())
}

/// `v` scaled to unit length (a zero vector stays zero).
fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Lanes of the fixed-order sums below: wide enough for one AVX-512 vector, and the same
/// order whatever the vector width, so every build sums alike.
const LANES: usize = 16;

/// Sum of a slice, in `LANES` partial sums (they vectorise; a running sum does not).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v;
    }
    acc.iter().sum()
}

/// `Σ (x − mean)²`, summed as [`sum`].
#[inline(always)]
fn sum_sq_dev(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += (v - mean) * (v - mean);
        }
    }
    for (a, v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += (v - mean) * (v - mean);
    }
    acc.iter().sum()
}

/// Largest element (−∞ for none); the compare-and-select form maps onto vector max.
#[inline(always)]
pub(super) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = if v > *a { v } else { *a };
    }
    acc.iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Softmax of one row of attention scores, in place.
#[inline(always)]
fn softmax(row: &mut [f32]) {
    let m = max(row);
    for v in row.iter_mut() {
        *v = exp_fast(*v - m);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// eˣ for x ≤ 0 (softmax's range), within 2 ulp of `f32::exp`: x = n·ln2 + r with
/// |r| ≤ ln2/2, a degree-6 polynomial for eʳ (Cephes' `expf`), and 2ⁿ built in the
/// exponent bits. No branches, calls or float-to-int casts (Rust's saturating `as` does not
/// vectorise), so the loop over a row does; below −87 it stays at e⁻⁸⁷.
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    // Adding 1.5·2²³ rounds x·log₂e to an integer held in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    // ln 2 split in two so that n·ln2 is exact in the high part (Cody–Waite).
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    p = p * r * r + r + 1.0;
    // t's bits minus SHIFT's are n (two's complement); +127 biases it into an exponent.
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(SHIFT.to_bits() - 127) << 23);
    p * two_n
}

/// Exact (erf) GELU over a slice, with the f32 rational erf below: no branches or calls,
/// so the loop vectorises.
#[inline(always)]
fn gelu_erf_slice(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf in f32 as a rational function of x on [-4, 4] (the approximation Eigen and XLA use,
/// a few ulp from the true value; erf is ±1 to f32 precision beyond ±4).
#[inline]
fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024_1e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_1e-3;
    p = p * x2 - 1.609_603_3e-2;
    p *= x;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329_2e-3;
    q = q * x2 - 1.426_474e-2;
    p / q
}

fn gelu_tanh(x: f32) -> f32 {
    let c = (2.0 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044_715 * x * x * x)).tanh())
}

/// The error function, to about 1e-7 (the reference the fast form is tested against) (Abramowitz and Stegun 7.1.26 is 1.5e-7; this is
/// the W. J. Cody-style rational form used by many libms, in f64 for headroom).
#[cfg(test)]
fn erf(x: f32) -> f32 {
    let x = f64::from(x);
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    // Numerical Recipes' erfc approximation: fractional error below 1.2e-7 everywhere.
    let y = t
        * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    (if x >= 0.0 { 1.0 - y } else { y - 1.0 }) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_erf_matches_the_reference_erf() {
        let mut worst = 0.0f32;
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            worst = worst.max((erf_fast(x) - erf(x)).abs());
        }
        assert!(worst < 1e-6, "{worst}");
    }

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-1.0, -0.842_700_8),
            (2.0, 0.995_322_3),
            (-3.0, -0.999_977_9),
        ] {
            assert!((erf(x) - want).abs() < 1e-6, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn fast_exp_is_within_two_ulp_on_softmax_inputs() {
        // Down to −87, where it flushes (e⁻⁸⁷ ≈ 1.6e-38, at f32's smallest normal).
        for i in 0..=87_000 {
            let x = (-(i as f32) * 1e-3).max(-87.0);
            let (a, b) = (exp_fast(x), x.exp());
            assert!(
                (a - b).abs() <= 2.0 * f32::EPSILON * b,
                "exp({x}) {a} vs {b}"
            );
        }
        assert_eq!(exp_fast(-1000.0), exp_fast(-87.0));
        assert!(exp_fast(-87.0) < 1e-37);
    }

    #[test]
    fn fixed_order_sums_and_max_match_the_plain_ones() {
        let xs: Vec<f32> = (0..37).map(|i| ((i * 7919) % 23) as f32 - 11.0).collect();
        assert_eq!(sum(&xs), xs.iter().sum::<f32>());
        assert_eq!(max(&xs), 11.0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let mean = sum(&xs) / 37.0;
        let want: f32 = xs.iter().map(|v| (v - mean) * (v - mean)).sum();
        assert!((sum_sq_dev(&xs, mean) - want).abs() < 1e-3);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut row = vec![0.5f32, -3.0, 2.0, 2.0, -80.0, 1.0];
        let want: Vec<f32> = {
            let e: Vec<f32> = row.iter().map(|v| (v - 2.0).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        softmax(&mut row);
        for (a, b) in row.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{row:?} vs {want:?}");
        }
    }

    #[test]
    fn max_and_first_token_pooling_are_unit_vectors_of_their_rows() {
        let t = Array2::from_shape_vec((2, 2), vec![3.0, -1.0, 0.0, 4.0]).unwrap_or_default();
        let m = max_pool_normalized(&t);
        assert!(
            (m[0] - 0.6).abs() < 1e-6 && (m[1] - 0.8).abs() < 1e-6,
            "{m:?}"
        );
        let f = first_token_normalized(&t);
        let n = 10f32.sqrt();
        assert!(
            (f[0] - 3.0 / n).abs() < 1e-6 && (f[1] + 1.0 / n).abs() < 1e-6,
            "{f:?}"
        );
        let empty = Array2::<f32>::zeros((0, 2));
        assert!(
            max_pool_normalized(&empty).is_empty() && first_token_normalized(&empty).is_empty()
        );
    }

    #[test]
    fn pooling_is_the_unit_mean() {
        let t = Array2::from_shape_vec((2, 2), vec![3.0, 0.0, 3.0, 8.0]).unwrap_or_default();
        let v = mean_pool_normalized(&t);
        assert!(
            (v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6,
            "{v:?}"
        );
    }
}
