//! The evaluator's Inception: torch-fidelity's `inception-v3-compat` feature extractor (the
//! TF-Inception of the 2015-12-05 weights that FID and Inception Score are defined with), in
//! burn, layer by layer as torch-fidelity builds it, with its exact preprocessing:
//!
//! 1. uint8 images `[N, 3, H, W]` as f32, resized to 299×299 by TensorFlow 1's bilinear
//!    interpolation (`align_corners=False`: source pixel = destination pixel × in/out, no
//!    half-pixel offset; [`resize_like_tf1`]);
//! 2. `(x − 128) / 128`;
//! 3. the network; `pool3` (the 2048-d average of the last block) is FID's feature, and
//!    `pool3 · fcᵀ` (without the bias: torch-fidelity's `logits_unbiased`) is what Inception
//!    Score takes the softmax of.
//!
//! BatchNorm runs in inference form, folded into each convolution's weights and bias (eps
//! 0.001, as the TF weights were trained with).
//!
//! The block structure is written once, generic over an [`Exec`]: on burn tensors (any device;
//! the reference, [`TensorExec`]), or on the CPU backend channels-last on f32 slices
//! ([`super::channels_last`]: each convolution one matrix product per tile of output pixels
//! with the bias and ReLU applied as the tile is written, as oneDNN runs torch's).

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};
use jit_core::host::HostTensor;

use super::channels_last::ChannelsLast;

/// Side of the network's input.
pub const INPUT_SIZE: usize = 299;
/// Width of the `pool3` features (FID).
pub const FEATURES: usize = 2048;
/// Classes of the TF-Inception's classifier (1000 ImageNet classes and 8 unused).
pub const CLASSES: usize = 1008;
/// BatchNorm's eps in the TF-Inception.
const BN_EPS: f32 = 0.001;

/// One `BasicConv2d` of torch-fidelity (convolution without bias, BatchNorm, ReLU) with the
/// BatchNorm folded in: `relu(conv(x, weight) + bias)`, `weight` `[cout, cin, kh, kw]`.
pub struct ConvSpec {
    /// The folded weights, `[cout, cin, kh, kw]`.
    pub weight: Vec<f32>,
    /// The folded bias, `[cout]`.
    pub bias: Vec<f32>,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride on both axes.
    pub stride: usize,
    /// Zero padding, rows and columns.
    pub padding: [usize; 2],
}

/// How the network's layers run. `Act` is an activation, `[N, C, H, W]` in the executor's own
/// layout.
pub trait Exec {
    /// A convolution, prepared for this executor.
    type Conv;
    /// An activation.
    type Act;
    /// The classifier, prepared.
    type Fc;
    /// Prepares a convolution.
    fn conv_layer(&self, spec: ConvSpec) -> Self::Conv;
    /// Prepares the classifier from `fc.weight` `[1008, 2048]`.
    fn fc_layer(&self, weight: Vec<f32>) -> Self::Fc;
    /// The network's input from `[N, 3, 299, 299]` values.
    fn input(&self, nchw: Vec<f32>, n: usize) -> Self::Act;
    /// `relu(conv(x) + bias)`.
    fn conv(&self, c: &Self::Conv, x: &Self::Act) -> Self::Act;
    /// The channels of `parts`, in order.
    fn cat(&self, parts: Vec<Self::Act>) -> Self::Act;
    /// 3×3 average pooling, stride 1, padding 1, the padding not counted (TF's `SAME`).
    fn avg_pool_same(&self, x: &Self::Act) -> Self::Act;
    /// 3×3 max pooling.
    fn max_pool(&self, x: &Self::Act, stride: usize, padding: usize) -> Self::Act;
    /// `pool3` (the mean over the pixels) and its logits.
    fn outputs(&self, x: Self::Act, fc: &Self::Fc) -> Result<Outputs>;
}

/// [`Exec`] on burn tensors, NCHW, on the weights' device: the reference.
pub struct TensorExec {
    device: Device,
}

impl TensorExec {
    /// The executor on `device`.
    pub fn new(device: &Device) -> Self {
        Self { device: device.clone() }
    }
}

/// A convolution as burn tensors.
pub struct TensorConv {
    weight: Tensor<4>,
    bias: Tensor<1>,
    options: ConvOptions<2>,
}

impl Exec for TensorExec {
    type Conv = TensorConv;
    type Act = Tensor<4>;
    type Fc = Tensor<2>;

    fn conv_layer(&self, s: ConvSpec) -> TensorConv {
        let weight = TensorData::new(s.weight, [s.cout, s.cin, s.kernel[0], s.kernel[1]]);
        TensorConv {
            weight: Tensor::from_data(weight, &self.device),
            bias: Tensor::from_data(TensorData::new(s.bias, [s.cout]), &self.device),
            options: ConvOptions::new([s.stride; 2], s.padding, [1, 1], 1),
        }
    }

    fn fc_layer(&self, weight: Vec<f32>) -> Tensor<2> {
        Tensor::<2>::from_data(TensorData::new(weight, [CLASSES, FEATURES]), &self.device).transpose()
    }

    fn input(&self, nchw: Vec<f32>, n: usize) -> Tensor<4> {
        Tensor::from_data(TensorData::new(nchw, [n, 3, INPUT_SIZE, INPUT_SIZE]), &self.device)
    }

    fn conv(&self, c: &TensorConv, x: &Tensor<4>) -> Tensor<4> {
        conv2d(x.clone(), c.weight.clone(), Some(c.bias.clone()), c.options.clone()).clamp_min(0.0)
    }

    fn cat(&self, parts: Vec<Tensor<4>>) -> Tensor<4> {
        Tensor::cat(parts, 1)
    }

    fn avg_pool_same(&self, x: &Tensor<4>) -> Tensor<4> {
        let options = AvgPoolOptions::new([3, 3]).with_stride([1, 1]).with_padding([1, 1]);
        avg_pool2d(x.clone(), options.with_count_include_pad(false))
    }

    fn max_pool(&self, x: &Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
        max_pool2d(x.clone(), MaxPoolOptions::new([3, 3]).with_stride([stride; 2]).with_padding([padding; 2]))
    }

    fn outputs(&self, x: Tensor<4>, fc_t: &Tensor<2>) -> Result<Outputs> {
        let [n, c, h, w] = x.dims();
        let pool3 = x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c]);
        let unbiased = pool3.clone().matmul(fc_t.clone());
        let read = |t: Tensor<2>| -> Result<Vec<f32>> {
            t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("cannot read back: {e:?}"))
        };
        Ok(Outputs { features: read(pool3)?, logits_unbiased: read(unbiased)? })
    }
}

/// The weights by torch-fidelity's state-dict key, checked against the shapes the network
/// expects as each layer takes them.
pub struct Weights {
    tensors: HashMap<String, HostTensor>,
    device: Device,
}

impl Weights {
    /// `tensors` by key, to be put on `device`.
    pub fn new(tensors: HashMap<String, HostTensor>, device: &Device) -> Self {
        Self { tensors, device: device.clone() }
    }

    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensors.remove(key).with_context(|| {
            format!("the weights have no '{key}': not torch-fidelity's inception-v3-compat weights")
        })?;
        if t.shape != shape {
            bail!("'{key}' has shape {:?}, expected {shape:?}: not the inception-v3-compat network", t.shape);
        }
        Ok(t.data)
    }

    /// `name`'s convolution and BatchNorm, folded: `weight·γ/√(var + eps)` and
    /// `β − mean·γ/√(var + eps)` per output channel.
    #[allow(clippy::too_many_arguments)] // a convolution's geometry
    fn conv<E: Exec>(
        &mut self,
        e: &E,
        name: &str,
        cin: usize,
        cout: usize,
        kernel: [usize; 2],
        stride: usize,
        padding: [usize; 2],
    ) -> Result<E::Conv> {
        let mut weight = self.take(&format!("{name}.conv.weight"), &[cout, cin, kernel[0], kernel[1]])?;
        let gamma = self.take(&format!("{name}.bn.weight"), &[cout])?;
        let beta = self.take(&format!("{name}.bn.bias"), &[cout])?;
        let mean = self.take(&format!("{name}.bn.running_mean"), &[cout])?;
        let var = self.take(&format!("{name}.bn.running_var"), &[cout])?;
        let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + BN_EPS).sqrt()).collect();
        let bias = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        for (filter, s) in weight.chunks_exact_mut(cin * kernel[0] * kernel[1]).zip(&scale) {
            filter.iter_mut().for_each(|w| *w *= s);
        }
        Ok(e.conv_layer(ConvSpec { weight, bias, cin, cout, kernel, stride, padding }))
    }

    /// The keys that no layer took (a different network, or extra entries).
    fn leftover(&self) -> Vec<String> {
        let mut keys: Vec<String> =
            self.tensors.keys().filter(|k| !k.ends_with("num_batches_tracked")).cloned().collect();
        keys.sort();
        keys
    }
}

/// `Mixed_5b/c/d`.
struct InceptionA<C> {
    b1: C,
    b5: [C; 2],
    b3: [C; 3],
    pool: C,
}

impl<C> InceptionA<C> {
    fn new<E: Exec<Conv = C>>(e: &E, w: &mut Weights, name: &str, cin: usize, pool_features: usize) -> Result<Self> {
        let mut c = |b: &str, i, o, k: usize, p: usize| w.conv(e, &format!("{name}.{b}"), i, o, [k, k], 1, [p, p]);
        Ok(Self {
            b1: c("branch1x1", cin, 64, 1, 0)?,
            b5: [c("branch5x5_1", cin, 48, 1, 0)?, c("branch5x5_2", 48, 64, 5, 2)?],
            b3: [
                c("branch3x3dbl_1", cin, 64, 1, 0)?,
                c("branch3x3dbl_2", 64, 96, 3, 1)?,
                c("branch3x3dbl_3", 96, 96, 3, 1)?,
            ],
            pool: c("branch_pool", cin, pool_features, 1, 0)?,
        })
    }

    fn forward<E: Exec<Conv = C>>(&self, e: &E, x: &E::Act) -> E::Act {
        let b1 = e.conv(&self.b1, x);
        let b5 = chain(e, &self.b5, x);
        let b3 = chain(e, &self.b3, x);
        let pool = e.conv(&self.pool, &e.avg_pool_same(x));
        e.cat(vec![b1, b5, b3, pool])
    }
}

/// `convs` one after the other on `x`.
fn chain<E: Exec>(e: &E, convs: &[E::Conv], x: &E::Act) -> E::Act {
    let (first, rest) = convs.split_first().expect("a chain of at least one convolution");
    rest.iter().fold(e.conv(first, x), |y, c| e.conv(c, &y))
}

/// `Mixed_6a`.
struct InceptionB<C> {
    b3: C,
    b3dbl: [C; 3],
}

impl<C> InceptionB<C> {
    fn new<E: Exec<Conv = C>>(e: &E, w: &mut Weights, name: &str, cin: usize) -> Result<Self> {
        let n = |b: &str| format!("{name}.{b}");
        Ok(Self {
            b3: w.conv(e, &n("branch3x3"), cin, 384, [3, 3], 2, [0, 0])?,
            b3dbl: [
                w.conv(e, &n("branch3x3dbl_1"), cin, 64, [1, 1], 1, [0, 0])?,
                w.conv(e, &n("branch3x3dbl_2"), 64, 96, [3, 3], 1, [1, 1])?,
                w.conv(e, &n("branch3x3dbl_3"), 96, 96, [3, 3], 2, [0, 0])?,
            ],
        })
    }

    fn forward<E: Exec<Conv = C>>(&self, e: &E, x: &E::Act) -> E::Act {
        e.cat(vec![e.conv(&self.b3, x), chain(e, &self.b3dbl, x), e.max_pool(x, 2, 0)])
    }
}

/// `Mixed_6b/c/d/e`: factorised 7×7 convolutions.
struct InceptionC<C> {
    b1: C,
    b7: [C; 3],
    b7dbl: [C; 5],
    pool: C,
}

impl<C> InceptionC<C> {
    fn new<E: Exec<Conv = C>>(e: &E, w: &mut Weights, name: &str, cin: usize, c7: usize) -> Result<Self> {
        let n = |b: &str| format!("{name}.{b}");
        let (row, col) = (([1, 7], [0, 3]), ([7, 1], [3, 0]));
        Ok(Self {
            b1: w.conv(e, &n("branch1x1"), cin, 192, [1, 1], 1, [0, 0])?,
            b7: [
                w.conv(e, &n("branch7x7_1"), cin, c7, [1, 1], 1, [0, 0])?,
                w.conv(e, &n("branch7x7_2"), c7, c7, row.0, 1, row.1)?,
                w.conv(e, &n("branch7x7_3"), c7, 192, col.0, 1, col.1)?,
            ],
            b7dbl: [
                w.conv(e, &n("branch7x7dbl_1"), cin, c7, [1, 1], 1, [0, 0])?,
                w.conv(e, &n("branch7x7dbl_2"), c7, c7, col.0, 1, col.1)?,
                w.conv(e, &n("branch7x7dbl_3"), c7, c7, row.0, 1, row.1)?,
                w.conv(e, &n("branch7x7dbl_4"), c7, c7, col.0, 1, col.1)?,
                w.conv(e, &n("branch7x7dbl_5"), c7, 192, row.0, 1, row.1)?,
            ],
            pool: w.conv(e, &n("branch_pool"), cin, 192, [1, 1], 1, [0, 0])?,
        })
    }

    fn forward<E: Exec<Conv = C>>(&self, e: &E, x: &E::Act) -> E::Act {
        let b1 = e.conv(&self.b1, x);
        let b7 = chain(e, &self.b7, x);
        let b7dbl = chain(e, &self.b7dbl, x);
        let pool = e.conv(&self.pool, &e.avg_pool_same(x));
        e.cat(vec![b1, b7, b7dbl, pool])
    }
}

/// `Mixed_7a`.
struct InceptionD<C> {
    b3: [C; 2],
    b7x3: [C; 4],
}

impl<C> InceptionD<C> {
    fn new<E: Exec<Conv = C>>(e: &E, w: &mut Weights, name: &str, cin: usize) -> Result<Self> {
        let n = |b: &str| format!("{name}.{b}");
        Ok(Self {
            b3: [
                w.conv(e, &n("branch3x3_1"), cin, 192, [1, 1], 1, [0, 0])?,
                w.conv(e, &n("branch3x3_2"), 192, 320, [3, 3], 2, [0, 0])?,
            ],
            b7x3: [
                w.conv(e, &n("branch7x7x3_1"), cin, 192, [1, 1], 1, [0, 0])?,
                w.conv(e, &n("branch7x7x3_2"), 192, 192, [1, 7], 1, [0, 3])?,
                w.conv(e, &n("branch7x7x3_3"), 192, 192, [7, 1], 1, [3, 0])?,
                w.conv(e, &n("branch7x7x3_4"), 192, 192, [3, 3], 2, [0, 0])?,
            ],
        })
    }

    fn forward<E: Exec<Conv = C>>(&self, e: &E, x: &E::Act) -> E::Act {
        e.cat(vec![chain(e, &self.b3, x), chain(e, &self.b7x3, x), e.max_pool(x, 2, 0)])
    }
}

/// `Mixed_7b` (average pooling in its pool branch) and `Mixed_7c` (max pooling: the TF graph's
/// quirk that torch-fidelity keeps).
struct InceptionE<C> {
    b1: C,
    b3_1: C,
    b3_2: [C; 2],
    b3dbl_12: [C; 2],
    b3dbl_3: [C; 2],
    pool: C,
    max_pool: bool,
}

impl<C> InceptionE<C> {
    fn new<E: Exec<Conv = C>>(e: &E, w: &mut Weights, name: &str, cin: usize, max_pool: bool) -> Result<Self> {
        let n = |b: &str| format!("{name}.{b}");
        Ok(Self {
            b1: w.conv(e, &n("branch1x1"), cin, 320, [1, 1], 1, [0, 0])?,
            b3_1: w.conv(e, &n("branch3x3_1"), cin, 384, [1, 1], 1, [0, 0])?,
            b3_2: [
                w.conv(e, &n("branch3x3_2a"), 384, 384, [1, 3], 1, [0, 1])?,
                w.conv(e, &n("branch3x3_2b"), 384, 384, [3, 1], 1, [1, 0])?,
            ],
            b3dbl_12: [
                w.conv(e, &n("branch3x3dbl_1"), cin, 448, [1, 1], 1, [0, 0])?,
                w.conv(e, &n("branch3x3dbl_2"), 448, 384, [3, 3], 1, [1, 1])?,
            ],
            b3dbl_3: [
                w.conv(e, &n("branch3x3dbl_3a"), 384, 384, [1, 3], 1, [0, 1])?,
                w.conv(e, &n("branch3x3dbl_3b"), 384, 384, [3, 1], 1, [1, 0])?,
            ],
            pool: w.conv(e, &n("branch_pool"), cin, 192, [1, 1], 1, [0, 0])?,
            max_pool,
        })
    }

    fn forward<E: Exec<Conv = C>>(&self, e: &E, x: &E::Act) -> E::Act {
        let b1 = e.conv(&self.b1, x);
        let b3 = e.conv(&self.b3_1, x);
        let b3 = e.cat(vec![e.conv(&self.b3_2[0], &b3), e.conv(&self.b3_2[1], &b3)]);
        let d = chain(e, &self.b3dbl_12, x);
        let d = e.cat(vec![e.conv(&self.b3dbl_3[0], &d), e.conv(&self.b3dbl_3[1], &d)]);
        let pooled = if self.max_pool { e.max_pool(x, 1, 1) } else { e.avg_pool_same(x) };
        e.cat(vec![b1, b3, d, e.conv(&self.pool, &pooled)])
    }
}

/// The layers on one executor.
struct Layers<E: Exec> {
    exec: E,
    stem: Vec<E::Conv>,
    mixed_5: [InceptionA<E::Conv>; 3],
    mixed_6a: InceptionB<E::Conv>,
    mixed_6: [InceptionC<E::Conv>; 4],
    mixed_7a: InceptionD<E::Conv>,
    mixed_7: [InceptionE<E::Conv>; 2],
    fc: E::Fc,
}

impl<E: Exec> Layers<E> {
    /// Builds the network from torch-fidelity's state dict (every key used, every shape checked).
    fn new(e: E, mut w: Weights) -> Result<Self> {
        let mut s =
            |name: &str, cin, cout, k: usize, stride, p: usize| w.conv(&e, name, cin, cout, [k, k], stride, [p, p]);
        let stem = vec![
            s("Conv2d_1a_3x3", 3, 32, 3, 2, 0)?,
            s("Conv2d_2a_3x3", 32, 32, 3, 1, 0)?,
            s("Conv2d_2b_3x3", 32, 64, 3, 1, 1)?,
            s("Conv2d_3b_1x1", 64, 80, 1, 1, 0)?,
            s("Conv2d_4a_3x3", 80, 192, 3, 1, 0)?,
        ];
        let mixed_5 = [
            InceptionA::new(&e, &mut w, "Mixed_5b", 192, 32)?,
            InceptionA::new(&e, &mut w, "Mixed_5c", 256, 64)?,
            InceptionA::new(&e, &mut w, "Mixed_5d", 288, 64)?,
        ];
        let mixed_6a = InceptionB::new(&e, &mut w, "Mixed_6a", 288)?;
        let mixed_6 = [
            InceptionC::new(&e, &mut w, "Mixed_6b", 768, 128)?,
            InceptionC::new(&e, &mut w, "Mixed_6c", 768, 160)?,
            InceptionC::new(&e, &mut w, "Mixed_6d", 768, 160)?,
            InceptionC::new(&e, &mut w, "Mixed_6e", 768, 192)?,
        ];
        let mixed_7a = InceptionD::new(&e, &mut w, "Mixed_7a", 768)?;
        let mixed_7 = [
            InceptionE::new(&e, &mut w, "Mixed_7b", 1280, false)?,
            InceptionE::new(&e, &mut w, "Mixed_7c", 2048, true)?,
        ];
        let fc = w.take("fc.weight", &[CLASSES, FEATURES])?;
        // The classifier's bias is part of the file but not of IS's logits.
        w.take("fc.bias", &[CLASSES])?;
        let left = w.leftover();
        if !left.is_empty() {
            bail!("the weights hold entries the inception-v3-compat network has no use for ({}…)", left[0]);
        }
        let fc = e.fc_layer(fc);
        Ok(Self { exec: e, stem, mixed_5, mixed_6a, mixed_6, mixed_7a, mixed_7, fc })
    }

    fn run(&self, nchw: Vec<f32>, n: usize) -> Result<Outputs> {
        let e = &self.exec;
        let mut x = e.input(nchw, n);
        for (i, conv) in self.stem.iter().enumerate() {
            x = e.conv(conv, &x);
            // MaxPool_1 after Conv2d_2b, MaxPool_2 after Conv2d_4a.
            if i == 2 || i == 4 {
                x = e.max_pool(&x, 2, 0);
            }
        }
        for m in &self.mixed_5 {
            x = m.forward(e, &x);
        }
        x = self.mixed_6a.forward(e, &x);
        for m in &self.mixed_6 {
            x = m.forward(e, &x);
        }
        x = self.mixed_7a.forward(e, &x);
        for m in &self.mixed_7 {
            x = m.forward(e, &x);
        }
        e.outputs(x, &self.fc)
    }
}

/// The network on its executor.
enum Net {
    Tensors(Box<Layers<TensorExec>>),
    ChannelsLast(Box<Layers<ChannelsLast>>),
}

/// The network, ready to compute features of 299×299 inputs.
pub struct Inception {
    net: Net,
}

/// What the network computes for a batch.
pub struct Outputs {
    /// `pool3`, `[N, 2048]`: FID's features.
    pub features: Vec<f32>,
    /// `pool3 · fcᵀ`, `[N, 1008]`: Inception Score's logits (torch-fidelity's `logits_unbiased`;
    /// IS does not use `fc.bias`).
    pub logits_unbiased: Vec<f32>,
}

/// An upper bound of the memory one batch of `n` images takes in [`Inception::run`], in bytes:
/// four of its largest activation (64×147² f32 per image, after `Conv2d_2b`) alive at once
/// (a convolution's input and output, a block's branches and their concatenation).
pub fn batch_bytes(n: usize) -> u64 {
    4 * 4 * 64 * 147 * 147 * n as u64
}

impl Inception {
    /// Builds the network from torch-fidelity's state dict (every key used, every shape checked):
    /// channels-last on the CPU backend (unless `jit_core::fused` is off), on burn's tensor ops
    /// elsewhere.
    pub fn new(w: Weights) -> Result<Self> {
        let channels_last = w.device == Device::flex() && jit_core::ops::enabled();
        if channels_last { Self::channels_last(w) } else { Self::on_tensors(w) }
    }

    /// The network on burn's tensor ops, on the weights' device (the reference).
    pub fn on_tensors(w: Weights) -> Result<Self> {
        let exec = TensorExec::new(&w.device);
        Ok(Self { net: Net::Tensors(Box::new(Layers::new(exec, w)?)) })
    }

    /// The network channels-last on the CPU.
    pub fn channels_last(w: Weights) -> Result<Self> {
        Ok(Self { net: Net::ChannelsLast(Box::new(Layers::new(ChannelsLast, w)?)) })
    }

    /// Features and logits of `images`: `n` uint8 RGB images of `height`×`width`, NHWC (as PNG
    /// decoders and the ADM `.npz` files hold them).
    pub fn run(&self, images: &[u8], n: usize, height: usize, width: usize) -> Result<Outputs> {
        if images.len() != n * height * width * 3 || height == 0 || width == 0 {
            bail!("{} bytes are not {n} RGB images of {height}×{width}", images.len());
        }
        let x = preprocess(images, n, height, width);
        match &self.net {
            Net::Tensors(l) => l.run(x, n),
            Net::ChannelsLast(l) => l.run(x, n),
        }
    }
}

/// uint8 NHWC images → the network's input, `[N, 3, 299, 299]` f32: TF1 bilinear resize, then
/// `(x − 128) / 128`.
pub fn preprocess(images: &[u8], n: usize, height: usize, width: usize) -> Vec<f32> {
    let plane = INPUT_SIZE * INPUT_SIZE;
    let mut out = vec![0f32; n * 3 * plane];
    let mut channel = vec![0f32; height * width];
    for i in 0..n {
        let img = &images[i * height * width * 3..(i + 1) * height * width * 3];
        for c in 0..3 {
            for (v, px) in channel.iter_mut().zip(img.chunks_exact(3)) {
                *v = px[c] as f32;
            }
            let dst = &mut out[(i * 3 + c) * plane..(i * 3 + c + 1) * plane];
            resize_like_tf1(&channel, height, width, dst, INPUT_SIZE, INPUT_SIZE);
            for v in dst.iter_mut() {
                *v = (*v - 128.0) / 128.0;
            }
        }
    }
    out
}

/// TensorFlow 1's `resize_bilinear` with `align_corners=False`, as torch-fidelity's
/// `interpolate_bilinear_2d_like_tensorflow1x` computes it in f32: source coordinate
/// `dst × (in / out)` (no half-pixel offset), the lower neighbour its integer part, the upper one
/// clamped to the last row or column.
pub fn resize_like_tf1(src: &[f32], h: usize, w: usize, dst: &mut [f32], oh: usize, ow: usize) {
    let axis = |in_size: usize, out_size: usize| -> Vec<(usize, usize, f32)> {
        let scale = in_size as f32 / out_size as f32;
        (0..out_size)
            .map(|o| {
                let g = o as f32 * scale;
                let lo = g as usize;
                (lo, (lo + 1).min(in_size - 1), g - lo as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(h, oh), axis(w, ow));
    for (oy, &(y0, y1, dy)) in ys.iter().enumerate() {
        for (ox, &(x0, x1, dx)) in xs.iter().enumerate() {
            let (a, b) = (src[y0 * w + x0], src[y0 * w + x1]);
            let (c, d) = (src[y1 * w + x0], src[y1 * w + x1]);
            let top = a + (b - a) * dx;
            let bottom = c + (d - c) * dx;
            dst[oy * ow + ox] = top + (bottom - top) * dy;
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::science::npz::{self, Values};

    fn golden_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/fid")
    }

    /// The weights `scripts/fid-golden.py` gave torch-fidelity's network (its formula: a
    /// splitmix64 stream per key, seeded by the key's FNV-1a hash), for the keys and shapes of
    /// the real state dict in `keys.json`.
    pub fn formula_weights() -> HashMap<String, HostTensor> {
        let text = std::fs::read_to_string(golden_dir().join("keys.json")).unwrap();
        let keys: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut out = HashMap::new();
        for entry in keys["state_dict"].as_array().unwrap() {
            let (key, dtype) = (entry[0].as_str().unwrap(), entry[2].as_str().unwrap());
            if dtype != "float32" {
                continue;
            }
            let shape: Vec<usize> = entry[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            let n: usize = shape.iter().product();
            let seed =
                key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3));
            let r = (0..n as u64).map(|i| {
                let mut z = seed.wrapping_add(i).wrapping_add(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 11) as f64 * 2f64.powi(-53)) * 2.0 - 1.0
            });
            let fan_in: usize = shape[1..].iter().product();
            let data: Vec<f32> = if shape.len() >= 2 {
                r.map(|r| (r * (3.0 / fan_in as f64).sqrt()) as f32).collect()
            } else if key.ends_with(".bn.weight") {
                r.map(|r| (1.0 + 0.1 * r) as f32).collect()
            } else if key.ends_with(".bn.running_var") {
                r.map(|r| (1.0 + 0.25 * (r + 1.0)) as f32).collect()
            } else {
                r.map(|r| (0.1 * r) as f32).collect()
            };
            out.insert(key.to_string(), HostTensor { shape, data });
        }
        out
    }

    fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }

    #[test]
    fn features_and_logits_match_torch_fidelity_on_the_same_weights_and_images() {
        let golden = npz::read(&golden_dir().join("golden.npz"), 1 << 30).unwrap();
        let f32s = |k: &str| match &golden[k].values {
            Values::F32(v) => v.clone(),
            other => panic!("{k}: {other:?}"),
        };
        let device = Device::flex();
        type Build = fn(Weights) -> Result<Inception>;
        let nets: [(&str, Build); 2] =
            [("channels-last", Inception::channels_last), ("tensor ops", Inception::on_tensors)];
        for ((path, build), size) in nets.iter().flat_map(|n| [64usize, 256, 299].map(|s| (n, s))) {
            let net = build(Weights::new(formula_weights(), &device)).unwrap();
            let images = &golden[&format!("images_{size}")];
            let Values::U8(pixels) = &images.values else { panic!("uint8 images") };
            let n = images.shape[0];
            assert_eq!(images.shape, [n, size, size, 3]);
            if let Some(pre) = golden.get(&format!("preprocessed_{size}")) {
                let Values::F32(want) = &pre.values else { panic!() };
                // (recorded for the first images of the group)
                let err = rel_l2(&preprocess(pixels, n, size, size)[..want.len()], want);
                assert!(err <= 1e-6, "{size}px resize and normalisation: {err:.2e}");
            }
            let out = net.run(pixels, n, size, size).unwrap();
            let (fe, le) = (
                rel_l2(&out.features, &f32s(&format!("features_{size}"))),
                rel_l2(&out.logits_unbiased, &f32s(&format!("logits_unbiased_{size}"))),
            );
            println!("{path}, {size}px: features rel L2 {fe:.2e}, logits {le:.2e}");
            assert!(fe <= 1e-4 && le <= 1e-4, "{path}, {size}px: features {fe:.2e}, logits {le:.2e}");
            // With these weights the features depend on the image only weakly (≈ 1e-4 of their
            // size): the difference between the two images' features must match as well.
            let theirs = f32s(&format!("features_{size}"));
            let diff = |f: &[f32]| f[..FEATURES].iter().zip(&f[FEATURES..]).map(|(a, b)| a - b).collect::<Vec<f32>>();
            let de = rel_l2(&diff(&out.features), &diff(&theirs));
            assert!(de <= 0.02, "{path}, {size}px: the difference between the images' features is off by {de:.2e}");
        }
    }

    #[test]
    fn weights_of_another_network_are_refused_with_the_key() {
        let device = Device::flex();
        let mut w = formula_weights();
        w.remove("Mixed_6b.branch7x7_2.conv.weight");
        let e = Inception::new(Weights::new(w, &device)).err().expect("refused").to_string();
        assert!(e.contains("Mixed_6b.branch7x7_2.conv.weight"), "{e}");
        let mut w = formula_weights();
        w.get_mut("fc.weight").unwrap().shape = vec![1000, 2048];
        let e = Inception::new(Weights::new(w, &device)).err().expect("refused").to_string();
        assert!(e.contains("expected [1008, 2048]"), "{e}");
        let mut w = formula_weights();
        w.insert("extra.weight".into(), HostTensor { shape: vec![1], data: vec![0.0] });
        assert!(Inception::new(Weights::new(w, &device)).err().expect("refused").to_string().contains("extra.weight"));
    }
}
