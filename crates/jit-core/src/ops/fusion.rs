//! [`ListOps`] under burn's fusion over the cubecl backend: each call one custom operation in
//! fusion's stream, registered with fusion's public API as `backend_extension` registers its
//! operations (which it cannot do for lists): the lists' tensors are the operation's inputs and
//! outputs (fusion frees an input after its last use, as for any operation), and executing it
//! runs [`CubeBackend`]'s kernels.

use burn::backend::fusion::custom::{CustomOpIr, HandleContainer, OperationFn, OperationIr, StreamId, TensorIr};
use burn::backend::fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use burn::tensor::DType;
use jit_shaders::CubeBackend;

use super::lists::ListOps;

type Runtime = <CubeBackend as FusionBackend>::FusionRuntime;
type Handles = HandleContainer<<Runtime as FusionRuntime>::FusionHandle>;

impl ListOps for Fusion<CubeBackend> {
    fn adamw_ema(
        slots: Vec<[FusionTensor<Runtime>; 6]>,
        factors: FusionTensor<Runtime>,
    ) -> Vec<[FusionTensor<Runtime>; 5]> {
        let n = slots.len();
        let client = factors.client.clone();
        // Each parameter's six tensors in order, then the factors.
        let inputs: Vec<TensorIr> = slots.into_iter().flatten().chain([factors]).map(FusionTensor::into_ir).collect();
        // Each parameter's θ, moments and EMAs (its inputs 0, 2, 3, 4, 5), shaped as those inputs.
        let outputs: Vec<TensorIr> = (0..n)
            .flat_map(|i| [0, 2, 3, 4, 5].map(|k| &inputs[6 * i + k]))
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
            let slots = (0..n).map(|i| [0, 1, 2, 3, 4, 5].map(|k| get(&inputs[6 * i + k]))).collect();
            let factors = get(&inputs[6 * n]);
            let results = <CubeBackend as ListOps>::adamw_ema(slots, factors);
            for (ir, tensor) in outputs.iter().zip(results.into_iter().flatten()) {
                handles.register_float_tensor::<CubeBackend>(&ir.id, tensor);
            }
            Ok(())
        });
        let mut out = client.register(StreamId::current(), OperationIr::Custom(desc), op).into_iter();
        (0..n).map(|_| [(); 5].map(|_| out.next().expect("five outputs per parameter"))).collect()
    }

    fn non_finite(values: Vec<FusionTensor<Runtime>>) -> FusionTensor<Runtime> {
        let client = values[0].client.clone();
        let inputs: Vec<TensorIr> = values.into_iter().map(FusionTensor::into_ir).collect();
        let output = TensorIr::uninit(client.create_empty_handle(), burn::tensor::Shape::new([1]), DType::F32);
        let desc = CustomOpIr {
            id: "non_finite".into(),
            inputs: inputs.clone(),
            outputs: vec![output.clone()],
            scalars: Vec::new(),
        };
        let op = OperationFn(move |handles: &mut Handles| {
            let values = inputs.iter().map(|ir| handles.get_float_tensor::<CubeBackend>(ir)).collect();
            let count = <CubeBackend as ListOps>::non_finite(values);
            handles.register_float_tensor::<CubeBackend>(&output.id, count);
            Ok(())
        });
        client.register(StreamId::current(), OperationIr::Custom(desc), op).into_iter().next().expect("one output")
    }
}
