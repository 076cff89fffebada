//! Parameter names and layouts, shared by our checkpoints and the official PyTorch weights.
//!
//! Every parameter of [`Jit`] has a key exactly as in the reference's state dict
//! (`blocks.3.attn.qkv.weight`, `x_embedder.proj1.weight`, …) and a tensor in PyTorch layout:
//! linear weights `(out, in)`, `proj1` as a conv kernel `(B, C, p, p)`, `proj2` as `(D, B, 1, 1)`.
//! burn keeps linears as `[in, out]`; the conversion happens here and nowhere else.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};

use crate::error::JitError;
use crate::host::HostTensor;
use crate::model::Jit;

/// The reference's key for a burn module path (field names joined with `.`).
pub fn torch_key(path: &[String]) -> String {
    let joined = path.join(".");
    let key = joined
        .replace("adaLN_modulation.", "adaLN_modulation.1.")
        .replace("t_embedder.mlp0.", "t_embedder.mlp.0.")
        .replace("t_embedder.mlp2.", "t_embedder.mlp.2.");
    if key == "y_embedder.embedding_table" { format!("{key}.weight") } else { key }
}

/// How a parameter is laid out in PyTorch relative to burn.
#[derive(Debug, Clone)]
struct Layout {
    key: String,
    /// burn shape.
    burn: Vec<usize>,
    /// PyTorch shape.
    torch: Vec<usize>,
    /// burn holds the transpose of the (2-D view of the) PyTorch tensor.
    transposed: bool,
}

fn layout(key: String, burn: Vec<usize>, model: &Jit) -> Layout {
    let linear = burn.len() == 2 && key.ends_with(".weight") && !key.starts_with("y_embedder.");
    if !linear {
        return Layout { torch: burn.clone(), key, burn, transposed: false };
    }
    let (d_in, d_out) = (burn[0], burn[1]);
    let c = &model.config;
    let torch = match key.as_str() {
        "x_embedder.proj1.weight" => vec![d_out, c.in_channels, c.patch_size, c.patch_size],
        "x_embedder.proj2.weight" => vec![d_out, d_in, 1, 1],
        _ => vec![d_out, d_in],
    };
    Layout { key, burn, torch, transposed: true }
}

/// Collects `(path, id, shape)` of every float parameter, in module order.
#[derive(Default)]
struct Paths {
    stack: Vec<String>,
    found: Vec<(String, ParamId, Vec<usize>)>,
}

impl ModuleVisitor for Paths {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shape = param.lazy_shape().as_slice().to_vec();
        self.found.push((torch_key(&self.stack), param.id, shape));
    }
}

fn layouts(model: &Jit) -> Vec<(ParamId, Layout)> {
    let mut paths = Paths::default();
    model.visit(&mut paths);
    paths.found.into_iter().map(|(key, id, shape)| (id, layout(key, shape, model))).collect()
}

/// The reference keys and PyTorch shapes of `model`'s parameters, in module order.
pub fn expected_shapes(model: &Jit) -> Vec<(String, Vec<usize>)> {
    layouts(model).into_iter().map(|(_, l)| (l.key, l.torch)).collect()
}

/// Reads every parameter back to the host in PyTorch layout (synchronous read: native only).
pub fn export(model: &Jit) -> Result<BTreeMap<String, HostTensor>, JitError> {
    let by_id: HashMap<ParamId, Layout> = layouts(model).into_iter().collect();
    let mut reader = Export { by_id, out: BTreeMap::new(), error: None };
    model.visit(&mut reader);
    match reader.error {
        Some(e) => Err(e),
        None => Ok(reader.out),
    }
}

struct Export {
    by_id: HashMap<ParamId, Layout>,
    out: BTreeMap<String, HostTensor>,
    error: Option<JitError>,
}

impl ModuleVisitor for Export {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let layout = &self.by_id[&param.id];
        let value = param.val().without_autodiff();
        let value = if layout.transposed { value.transpose() } else { value };
        match value.try_into_data().map_err(|e| JitError::Backend(format!("{e:?}"))).and_then(crate::host::data_to_f32)
        {
            Ok(data) => {
                self.out.insert(layout.key.clone(), HostTensor { shape: layout.torch.clone(), data });
            }
            Err(e) => self.error = Some(e),
        }
    }
}

/// Replaces every parameter of `model` by the tensor `get(key)` returns (PyTorch layout).
/// Fails, naming the tensor, when one is missing or has the wrong shape; `model` is consumed
/// only on success paths.
pub fn load(model: Jit, mut get: impl FnMut(&str) -> Option<HostTensor>) -> Result<Jit, JitError> {
    let mut values = HashMap::new();
    for (id, layout) in layouts(&model) {
        let host = get(&layout.key).ok_or_else(|| JitError::MissingTensor(layout.key.clone()))?;
        if host.shape != layout.torch {
            return Err(JitError::ShapeMismatch {
                name: layout.key.clone(),
                expected: layout.torch.clone(),
                found: host.shape,
            });
        }
        if host.data.len() != layout.torch.iter().product::<usize>() {
            return Err(JitError::NotACheckpoint(format!("tensor '{}' has the wrong byte length", layout.key)));
        }
        values.insert(id, (layout, host.data));
    }
    let device = model.devices()[0].clone();
    let mut mapper = Load { values, device };
    Ok(model.map(&mut mapper))
}

struct Load {
    values: HashMap<ParamId, (Layout, Vec<f32>)>,
    device: burn::tensor::Device,
}

impl ModuleMapper for Load {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (layout, data) = self.values.remove(&param.id).expect("checked in load()");
        let tensor: Tensor<D> = if layout.transposed {
            let (rows, cols) = (layout.burn[1], layout.burn[0]);
            Tensor::<2>::from_data(TensorData::new(data, [rows, cols]), &self.device)
                .transpose()
                .reshape(param.lazy_shape())
        } else {
            Tensor::<D>::from_data(TensorData::new(data, layout.burn.clone()), &self.device)
        };
        // Keeps the parameter's device and its training (require-grad) setting.
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// Parameter ids by reference key. Training checkpoints of earlier versions keyed burn's AdamW
/// record by these ids and stored them beside it; [`set_param_ids`] restores them to read one.
pub fn param_ids(model: &Jit) -> BTreeMap<String, u64> {
    layouts(model).into_iter().map(|(id, l)| (l.key, id.val())).collect()
}

/// Gives the parameters of `model` the ids in `ids` (by reference key); keys not in `ids` keep
/// theirs.
pub fn set_param_ids(model: Jit, ids: &BTreeMap<String, u64>) -> Jit {
    let by_id: HashMap<ParamId, ParamId> = layouts(&model)
        .into_iter()
        .filter_map(|(id, l)| ids.get(&l.key).map(|new| (id, ParamId::from(*new))))
        .collect();
    model.map(&mut Renumber { by_id })
}

struct Renumber {
    by_id: HashMap<ParamId, ParamId>,
}

impl ModuleMapper for Renumber {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.by_id.get(&param.id).copied() {
            Some(new) => {
                let value = param.val();
                param.transform_for_load(value, new)
            }
            None => param,
        }
    }
}
