//! The evaluator's Inception on the CPU, channels-last (`[N, H, W, C]` f32 rows): each
//! convolution is one matrix product per tile of output pixels, `[pixels, kh·kw·cin]` ×
//! `[kh·kw·cin, cout]`, the tile's patch rows gathered just before (1×1 convolutions read their
//! input rows as they are), with the bias and ReLU applied while the tile is in cache. Tiles run
//! in parallel on rayon's pool. Pooling and concatenation walk whole pixels of channels.
//!
//! Against the reference ([`super::inception::TensorExec`] on Flex) this drops the NCHW ↔ NHWC
//! copies and separate bias and ReLU passes around every convolution; `tests` in
//! `inception.rs` hold both to torch-fidelity's outputs.

use anyhow::Result;
use jit_core::fused::gemm::product_rows;
use rayon::prelude::*;

use super::inception::{CLASSES, ConvSpec, Exec, FEATURES, INPUT_SIZE, Outputs};

/// An activation, `[n, h, w, c]` row-major.
pub struct Nhwc {
    data: Vec<f32>,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
}

/// A convolution: weights as the `[kh·kw·cin, cout]` matrix (rows in patch order: kernel row,
/// kernel column, input channel).
pub struct Conv {
    weight: Vec<f32>,
    bias: Vec<f32>,
    spec: [usize; 7], // cin, cout, kh, kw, stride, ph, pw
}

/// The channels-last [`Exec`].
pub struct ChannelsLast;

/// Output pixels per tile: a tile's patch rows take at most ≈ 512 KiB (kept in cache for the
/// product), and no fewer than 32 rows (the product's efficiency).
fn tile_rows(k: usize) -> usize {
    ((1 << 17) / k.max(1)).clamp(32, 1024)
}

impl Exec for ChannelsLast {
    type Conv = Conv;
    type Act = Nhwc;
    type Fc = Vec<f32>;

    fn conv_layer(&self, s: ConvSpec) -> Conv {
        let [kh, kw] = s.kernel;
        let (cin, cout) = (s.cin, s.cout);
        let mut weight = vec![0.0; kh * kw * cin * cout];
        for co in 0..cout {
            for ci in 0..cin {
                for ky in 0..kh {
                    for kx in 0..kw {
                        weight[((ky * kw + kx) * cin + ci) * cout + co] =
                            s.weight[((co * cin + ci) * kh + ky) * kw + kx];
                    }
                }
            }
        }
        Conv { weight, bias: s.bias, spec: [cin, cout, kh, kw, s.stride, s.padding[0], s.padding[1]] }
    }

    fn fc_layer(&self, weight: Vec<f32>) -> Vec<f32> {
        // `[1008, 2048]` → `[2048, 1008]`.
        let mut t = vec![0.0; FEATURES * CLASSES];
        for (o, row) in weight.chunks_exact(FEATURES).enumerate() {
            for (i, v) in row.iter().enumerate() {
                t[i * CLASSES + o] = *v;
            }
        }
        t
    }

    fn input(&self, nchw: Vec<f32>, n: usize) -> Nhwc {
        let plane = INPUT_SIZE * INPUT_SIZE;
        let mut data = vec![0.0; nchw.len()];
        for (b, image) in data.chunks_exact_mut(3 * plane).enumerate() {
            for (p, px) in image.chunks_exact_mut(3).enumerate() {
                for (c, v) in px.iter_mut().enumerate() {
                    *v = nchw[(b * 3 + c) * plane + p];
                }
            }
        }
        Nhwc { data, n, h: INPUT_SIZE, w: INPUT_SIZE, c: 3 }
    }

    fn conv(&self, conv: &Conv, x: &Nhwc) -> Nhwc {
        let [cin, cout, kh, kw, stride, ph, pw] = conv.spec;
        assert_eq!(x.c, cin, "convolution input channels");
        let oh = (x.h + 2 * ph - kh) / stride + 1;
        let ow = (x.w + 2 * pw - kw) / stride + 1;
        let k = kh * kw * cin;
        let pointwise = kh == 1 && kw == 1 && stride == 1 && ph == 0 && pw == 0;
        let tile = tile_rows(k);
        let mut out = vec![0.0; x.n * oh * ow * cout];
        out.par_chunks_mut(tile * cout).enumerate().for_each_init(Vec::new, |patches, (t, o)| {
            let (r0, rows) = (t * tile, o.len() / cout);
            let a: &[f32] = if pointwise {
                &x.data[r0 * cin..(r0 + rows) * cin]
            } else {
                patches.resize(rows * k, 0.0);
                for (i, patch) in patches.chunks_exact_mut(k).enumerate() {
                    let r = r0 + i;
                    let (b, oy, ox) = (r / (oh * ow), r / ow % oh, r % ow);
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let dst = &mut patch[(ky * kw + kx) * cin..][..cin];
                            let (iy, ix) = ((oy * stride + ky).wrapping_sub(ph), (ox * stride + kx).wrapping_sub(pw));
                            if iy < x.h && ix < x.w {
                                dst.copy_from_slice(&x.data[((b * x.h + iy) * x.w + ix) * cin..][..cin]);
                            } else {
                                dst.fill(0.0);
                            }
                        }
                    }
                }
                patches
            };
            product_rows(o, a, k, &conv.weight, cout);
            for row in o.chunks_exact_mut(cout) {
                row.iter_mut().zip(&conv.bias).for_each(|(v, b)| *v = (*v + b).max(0.0));
            }
        });
        Nhwc { data: out, n: x.n, h: oh, w: ow, c: cout }
    }

    fn cat(&self, parts: Vec<Nhwc>) -> Nhwc {
        let (n, h, w) = (parts[0].n, parts[0].h, parts[0].w);
        assert!(parts.iter().all(|p| (p.n, p.h, p.w) == (n, h, w)), "concatenated activations differ in size");
        let c: usize = parts.iter().map(|p| p.c).sum();
        let mut data = vec![0.0; n * h * w * c];
        data.par_chunks_mut(c).enumerate().for_each(|(px, dst)| {
            let mut at = 0;
            for p in &parts {
                dst[at..at + p.c].copy_from_slice(&p.data[px * p.c..][..p.c]);
                at += p.c;
            }
        });
        Nhwc { data, n, h, w, c }
    }

    fn avg_pool_same(&self, x: &Nhwc) -> Nhwc {
        let (h, w, c) = (x.h, x.w, x.c);
        let mut data = vec![0.0; x.data.len()];
        // One output row of pixels per job.
        data.par_chunks_mut(w * c).enumerate().for_each(|(row, dst)| {
            let (b, y) = (row / h, row % h);
            let ys = y.saturating_sub(1)..(y + 2).min(h);
            for (xo, out) in dst.chunks_exact_mut(c).enumerate() {
                let xs = xo.saturating_sub(1)..(xo + 2).min(w);
                for iy in ys.clone() {
                    for ix in xs.clone() {
                        let src = &x.data[((b * h + iy) * w + ix) * c..][..c];
                        out.iter_mut().zip(src).for_each(|(o, v)| *o += v);
                    }
                }
                let count = (ys.len() * xs.len()) as f32;
                out.iter_mut().for_each(|o| *o /= count);
            }
        });
        Nhwc { data, ..*x }
    }

    fn max_pool(&self, x: &Nhwc, stride: usize, padding: usize) -> Nhwc {
        let (h, w, c) = (x.h, x.w, x.c);
        let oh = (h + 2 * padding - 3) / stride + 1;
        let ow = (w + 2 * padding - 3) / stride + 1;
        let mut data = vec![f32::NEG_INFINITY; x.n * oh * ow * c];
        data.par_chunks_mut(ow * c).enumerate().for_each(|(row, dst)| {
            let (b, oy) = (row / oh, row % oh);
            for (ox, out) in dst.chunks_exact_mut(c).enumerate() {
                // The window's pixels inside the image (padding never wins a max).
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (iy, ix) =
                            ((oy * stride + ky).wrapping_sub(padding), (ox * stride + kx).wrapping_sub(padding));
                        if iy < h && ix < w {
                            let src = &x.data[((b * h + iy) * w + ix) * c..][..c];
                            out.iter_mut().zip(src).for_each(|(o, v)| *o = o.max(*v));
                        }
                    }
                }
            }
        });
        Nhwc { data, n: x.n, h: oh, w: ow, c }
    }

    fn outputs(&self, x: Nhwc, fc_t: &Vec<f32>) -> Result<Outputs> {
        let pixels = x.h * x.w;
        let mut features = vec![0.0; x.n * x.c];
        features.par_chunks_mut(x.c).zip(x.data.par_chunks(pixels * x.c)).for_each(|(f, image)| {
            for px in image.chunks_exact(x.c) {
                f.iter_mut().zip(px).for_each(|(s, v)| *s += v);
            }
            f.iter_mut().for_each(|s| *s /= pixels as f32);
        });
        let mut logits_unbiased = vec![0.0; x.n * CLASSES];
        product_rows(&mut logits_unbiased, &features, FEATURES, fc_t, CLASSES);
        Ok(Outputs { features, logits_unbiased })
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};
    use jit_core::rng::PortableRng;

    use super::*;
    use crate::science::inception::TensorExec;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        PortableRng::new(seed).normals(n)
    }

    /// `[n, h, w, c]` rows → `[n, c, h, w]`.
    fn to_nchw(x: &Nhwc) -> Vec<f32> {
        let mut out = vec![0.0; x.data.len()];
        for b in 0..x.n {
            for y in 0..x.h {
                for xx in 0..x.w {
                    for c in 0..x.c {
                        out[((b * x.c + c) * x.h + y) * x.w + xx] = x.data[((b * x.h + y) * x.w + xx) * x.c + c];
                    }
                }
            }
        }
        out
    }

    /// `[n, c, h, w]` → `[n, h, w, c]` rows.
    fn from_nchw(v: &[f32], [n, c, h, w]: [usize; 4]) -> Nhwc {
        let mut data = vec![0.0; v.len()];
        for b in 0..n {
            for ch in 0..c {
                for p in 0..h * w {
                    data[(b * h * w + p) * c + ch] = v[(b * c + ch) * h * w + p];
                }
            }
        }
        Nhwc { data, n, h, w, c }
    }

    fn assert_close(ours: &Nhwc, theirs: Tensor<4>, what: &str) {
        assert_eq!([ours.n, ours.c, ours.h, ours.w], theirs.dims(), "{what}: shape");
        let theirs = theirs.into_data().try_to_vec::<f32>().unwrap();
        let ours = to_nchw(ours);
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0, f32::max);
        assert!(worst <= 1e-5, "{what}: off by {worst:.2e}");
    }

    /// Every convolution geometry and pooling of the network (odd sizes, strides, paddings,
    /// factorised kernels, several tiles) against burn's tensor ops on Flex.
    #[test]
    fn convolutions_and_pools_match_the_tensor_ops() {
        let device = Device::flex();
        let reference = TensorExec::new(&device);
        let dims = [2, 5, 37, 29];
        let input = values(dims.iter().product(), 1);
        let theirs = Tensor::<4>::from_data(TensorData::new(input.clone(), dims), &device);
        let ours = from_nchw(&input, dims);
        let geometries: [([usize; 2], usize, [usize; 2]); 6] = [
            ([1, 1], 1, [0, 0]),
            ([3, 3], 2, [0, 0]),
            ([3, 3], 1, [1, 1]),
            ([5, 5], 1, [2, 2]),
            ([1, 7], 1, [0, 3]),
            ([7, 1], 1, [3, 0]),
        ];
        for (i, (kernel, stride, padding)) in geometries.into_iter().enumerate() {
            let (cin, cout) = (dims[1], 6 + i);
            let spec = || ConvSpec {
                weight: values(cout * cin * kernel[0] * kernel[1], 10 + i as u64),
                bias: values(cout, 20 + i as u64),
                cin,
                cout,
                kernel,
                stride,
                padding,
            };
            let what = format!("conv {kernel:?} stride {stride} padding {padding:?}");
            let (a, b) = (ChannelsLast.conv_layer(spec()), reference.conv_layer(spec()));
            assert_close(&ChannelsLast.conv(&a, &ours), reference.conv(&b, &theirs), &what);
        }
        assert_close(&ChannelsLast.avg_pool_same(&ours), reference.avg_pool_same(&theirs), "average pool");
        for (stride, padding) in [(2, 0), (1, 1)] {
            let what = format!("max pool stride {stride} padding {padding}");
            assert_close(
                &ChannelsLast.max_pool(&ours, stride, padding),
                reference.max_pool(&theirs, stride, padding),
                &what,
            );
        }
        let parts = || [0, 1].map(|s| from_nchw(&values(2 * 3 * 4 * 4, 30 + s), [2, 3, 4, 4]));
        let tensors = parts().map(|p| Tensor::<4>::from_data(TensorData::new(to_nchw(&p), [2, 3, 4, 4]), &device));
        assert_close(&ChannelsLast.cat(parts().into()), reference.cat(tensors.into()), "concatenation");
    }
}
