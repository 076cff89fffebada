//! A module's gradients and weights as one flat f32 buffer, in a fixed parameter order (the
//! module's visit order, the same in every process): what data-parallel processes all-reduce
//! and compare. The parameters are joined on the device and read back once.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::JitError;

/// Every float parameter's id and shape, in visit order.
fn layout<M: Module>(model: &M) -> Vec<(ParamId, Vec<usize>)> {
    struct Layout(Vec<(ParamId, Vec<usize>)>);
    impl ModuleVisitor for Layout {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push((param.id, param.shape().dims::<D>().to_vec()));
        }
    }
    let mut l = Layout(Vec::new());
    model.visit(&mut l);
    l.0
}

fn read(parts: Vec<Tensor<1>>) -> Result<Vec<f32>, JitError> {
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    Tensor::cat(parts, 0)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| JitError::Backend(format!("cannot read back the gradients: {e:?}")))
}

/// The gradients of `model`'s parameters as one buffer (a parameter without a gradient counts
/// as zeros), `grads` emptied of them.
pub fn gradients_to_flat<M: Module>(model: &M, grads: &mut GradientsParams) -> Result<Vec<f32>, JitError> {
    let parts = layout(model)
        .into_iter()
        .map(|(id, shape)| {
            let n: usize = shape.iter().product();
            macro_rules! take {
                ($($d:literal),*) => {
                    match shape.len() {
                        $($d => grads.remove::<$d>(id).map(|g| g.reshape([n as i64])),)*
                        d => panic!("parameters of rank {d} are not supported"),
                    }
                };
            }
            take!(1, 2, 3, 4)
        })
        .collect::<Vec<_>>();
    let device = grads_device(&parts);
    let parts = parts
        .into_iter()
        .zip(layout(model))
        .map(|(g, (_, shape))| g.unwrap_or_else(|| Tensor::zeros([shape.iter().product::<usize>()], &device)))
        .collect();
    read(parts)
}

fn grads_device(parts: &[Option<Tensor<1>>]) -> Device {
    parts.iter().flatten().next().map_or_else(Device::default, |t| t.device())
}

/// The inverse of [`gradients_to_flat`]: `flat` cut into `model`'s parameters, on `device`
/// (the device of the gradients: `model`'s without autodiff).
pub fn gradients_from_flat<M: Module>(model: &M, flat: &[f32], device: &Device) -> GradientsParams {
    let layout = layout(model);
    let total: usize = layout.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(flat.len(), total, "a flat gradient of {} values for {total} parameters", flat.len());
    let all = Tensor::<1>::from_data(TensorData::new(flat.to_vec(), [total]), device);
    let mut grads = GradientsParams::new();
    let mut at = 0;
    for (id, shape) in layout {
        let n: usize = shape.iter().product();
        let part = all.clone().slice(at..at + n);
        at += n;
        match shape.len() {
            1 => grads.register::<1>(id, part),
            2 => grads.register::<2>(id, part.reshape([shape[0], shape[1]])),
            3 => grads.register::<3>(id, part.reshape([shape[0], shape[1], shape[2]])),
            4 => grads.register::<4>(id, part.reshape([shape[0], shape[1], shape[2], shape[3]])),
            d => panic!("parameters of rank {d} are not supported"),
        }
    }
    grads
}

/// A 64-bit FNV-1a hash of every weight's bits in visit order: equal on two processes exactly
/// when their weights are bitwise equal (up to hash collisions).
pub fn weights_checksum<M: Module>(model: &M) -> Result<u64, JitError> {
    struct Weights(Vec<Tensor<1>>);
    impl ModuleVisitor for Weights {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let n = param.shape().num_elements();
            self.0.push(param.val().without_autodiff().reshape([n as i64]));
        }
    }
    let mut w = Weights(Vec::new());
    model.visit(&mut w);
    let values = read(w.0)?;
    Ok(values.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        v.to_bits().to_le_bytes().iter().fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3))
    }))
}
