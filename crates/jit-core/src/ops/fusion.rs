//! [`ListOps`] under burn's fusion over the cubecl backend: each call one custom operation in
//! fusion's stream, registered with fusion's public API as `backend_extension` registers its
//! operations (which it cannot do for lists): the lists' tensors are the operation's inputs and
//! outputs (fusion frees an input after its last use, as for any operation), and executing it
//! runs [`CubeBackend`]'s kernels.

use burn::backend::fusion::custom::{CustomOpIr, HandleContainer, OperationFn, OperationIr, StreamId, TensorIr};
use burn::backend::fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use jit_shaders::CubeBackend;

use super::lists::ListOps;

type Runtime = <CubeBackend as FusionBackend>::FusionRuntime;
type Handles = HandleContainer<<Runtime as FusionRuntime>::FusionHandle>;

impl ListOps for Fusion<CubeBackend> {
    fn adamw_ema(
        lists: [Vec<FusionTensor<Runtime>>; 6],
        factors: FusionTensor<Runtime>,
    ) -> [Vec<FusionTensor<Runtime>>; 5] {
        let n = lists[0].len();
        assert!(lists.iter().all(|l| l.len() == n), "adamw_ema: one gradient, moment and EMA per parameter");
        let client = factors.client.clone();
        // The lists' tensors in order, then the factors.
        let inputs: Vec<TensorIr> = lists.into_iter().flatten().chain([factors]).map(FusionTensor::into_ir).collect();
        // The parameters, both moments and both EMAs (lists 0, 2, 3, 4, 5), shaped as their inputs.
        let outputs: Vec<TensorIr> = [0, 2, 3, 4, 5]
            .into_iter()
            .flat_map(|list| &inputs[list * n..(list + 1) * n])
            .map(|input| TensorIr::uninit(client.create_empty_handle(), input.shape.clone(), input.dtype))
            .collect();
        let desc = CustomOpIr {
            id: "adamw_ema".into(),
            inputs: inputs.clone(),
            outputs: outputs.clone(),
            scalars: Vec::new(),
        };
        let op = OperationFn(move |handles: &mut Handles| {
            let mut get = |ir: &TensorIr| handles.get_float_tensor::<CubeBackend>(ir);
            let lists = [0, 1, 2, 3, 4, 5].map(|k| inputs[k * n..(k + 1) * n].iter().map(&mut get).collect());
            let factors = get(&inputs[6 * n]);
            let results = <CubeBackend as ListOps>::adamw_ema(lists, factors);
            for (ir, tensor) in outputs.iter().zip(results.into_iter().flatten()) {
                handles.register_float_tensor::<CubeBackend>(&ir.id, tensor);
            }
            Ok(())
        });
        let mut out = client.register(StreamId::current(), OperationIr::Custom(desc), op).into_iter();
        [(); 5].map(|_| out.by_ref().take(n).collect())
    }
}
