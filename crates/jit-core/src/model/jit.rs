//! The whole network: embeddings → blocks (with in-context class tokens) → head → image.

use burn::module::{Initializer, Module, Param};
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};

use super::MatmulDtype;
use super::block::JitBlock;
use super::embed::{BottleneckPatchEmbed, LabelEmbedder, TimestepEmbedder, sincos_pos_embed, unpatchify};
use super::final_layer::FinalLayer;
use super::rope::Rope;
use crate::config::JitConfig;
use crate::error::JitError;
use crate::ops;

/// Named intermediate tensors recorded by [`Jit::forward_traced`] (`t_emb`, `y_emb`,
/// `patch_embed`, `block{i}`); 2-D ones are stored as `[B, 1, D]`.
pub type Activations = Vec<(String, Tensor<3>)>;

/// JiT: x-prediction ViT over large patches (`JiT` in `model_jit.py`).
#[derive(Module, Debug)]
pub struct Jit {
    /// Bottleneck patch embedding.
    pub x_embedder: BottleneckPatchEmbed,
    /// Timestep embedding.
    pub t_embedder: TimestepEmbedder,
    /// Class embedding (with the null class).
    pub y_embedder: LabelEmbedder,
    /// Fixed sin-cos position table `[1, N, D]` (stored, never trained).
    pub pos_embed: Param<Tensor<3>>,
    /// Learned position table of the in-context tokens `[1, L, D]`, if `L > 0`.
    pub in_context_posemb: Option<Param<Tensor<3>>>,
    /// The transformer blocks.
    pub blocks: Vec<JitBlock>,
    /// Output head.
    pub final_layer: FinalLayer,
    /// RoPE for the image tokens alone.
    pub feat_rope: Rope,
    /// RoPE for `L` in-context tokens followed by the image tokens.
    pub feat_rope_incontext: Option<Rope>,
    /// The configuration this network was built from.
    #[module(skip)]
    pub config: JitConfig,
    /// Float type of the linear layers' products (f32 unless set; see [`MatmulDtype`]).
    #[module(skip)]
    pub matmul: MatmulDtype,
}

impl Jit {
    /// A freshly initialised network (the reference's init: xavier linears, N(0, 0.02)
    /// embeddings, zero adaLN and output layers).
    pub fn new(config: &JitConfig, device: &Device) -> Result<Self, JitError> {
        config.validate()?;
        let (d, grid) = (config.hidden_size, config.grid_size());
        let pos = sincos_pos_embed(d, grid);
        let pos_embed = Param::from_tensor(Tensor::from_data(TensorData::new(pos, [1, grid * grid, d]), device))
            .set_require_grad(false);
        let in_context_posemb = (config.in_context_len > 0)
            .then(|| Initializer::Normal { mean: 0.0, std: 0.02 }.init([1, config.in_context_len, d], device));
        let blocks = (0..config.depth)
            .map(|i| {
                let drop = if config.block_has_dropout(i) { (config.attn_drop, config.proj_drop) } else { (0.0, 0.0) };
                JitBlock::new(d, config.num_heads, config.mlp_hidden(), drop, device)
            })
            .collect();
        Ok(Self {
            x_embedder: BottleneckPatchEmbed::new(
                config.in_channels,
                config.patch_size,
                config.bottleneck_dim,
                d,
                device,
            ),
            t_embedder: TimestepEmbedder::new(d, device),
            y_embedder: LabelEmbedder::new(config.num_classes, d, device),
            pos_embed,
            in_context_posemb,
            blocks,
            final_layer: FinalLayer::new(d, config.patch_dim(), device),
            feat_rope: Rope::new(config.head_dim(), grid, 0, device),
            feat_rope_incontext: (config.in_context_len > 0)
                .then(|| Rope::new(config.head_dim(), grid, config.in_context_len, device)),
            config: config.clone(),
            matmul: MatmulDtype::default(),
        })
    }

    /// The same network computing its linear layers in `dtype` (`None`: f32), weights kept f32
    /// (training's master weights; each forward pass casts them).
    pub fn with_matmul_dtype(mut self, dtype: Option<FloatDType>) -> Self {
        self.matmul = MatmulDtype(dtype);
        self
    }

    /// The same network for sampling, its linear layers computing in `dtype` (`None`: f32) with
    /// their weights stored in it, cast once here rather than at every forward pass (the same
    /// values; a sampler step saves two casts of every weight and their launches, and f16
    /// weights take half the memory). So are the biases of the layers whose results stay in that
    /// type (`adaLN_modulation`, `qkv`, `w12`); other biases, norms and embeddings stay f32. Not
    /// for training: the weights are no longer f32 master weights.
    pub fn for_sampling(self, dtype: Option<FloatDType>) -> Self {
        let mut net = self.with_matmul_dtype(dtype);
        let mm = net.matmul;
        let stored = |layer: &mut burn::nn::Linear| mm.store_weight(layer);
        stored(&mut net.x_embedder.proj1);
        stored(&mut net.x_embedder.proj2);
        stored(&mut net.t_embedder.mlp0);
        stored(&mut net.t_embedder.mlp2);
        for block in &mut net.blocks {
            mm.store_in_type(&mut block.adaLN_modulation);
            mm.store_in_type(&mut block.attn.qkv);
            stored(&mut block.attn.proj);
            mm.store_in_type(&mut block.mlp.w12);
            stored(&mut block.mlp.w3);
        }
        mm.store_in_type(&mut net.final_layer.adaLN_modulation);
        stored(&mut net.final_layer.linear);
        net
    }

    /// Checks that `x` is `[B, C, H, W]` for this config and `t`, `y` have B entries.
    pub fn check_inputs(&self, x: &Tensor<4>, t: &Tensor<1>, y: &Tensor<1, Int>) -> Result<(), JitError> {
        let c = &self.config;
        let [b, ch, h, w] = x.dims();
        if ch != c.in_channels || h != c.input_size || w != c.input_size {
            return Err(JitError::Shape(format!(
                "images are {ch}×{h}×{w} but the model takes {}×{}×{}",
                c.in_channels, c.input_size, c.input_size
            )));
        }
        if t.dims()[0] != b || y.dims()[0] != b {
            return Err(JitError::Shape(format!(
                "batch of {b} images but {} timesteps and {} labels",
                t.dims()[0],
                y.dims()[0]
            )));
        }
        Ok(())
    }

    /// The network: noisy image `x` `[B, C, H, W]`, time `t` `[B]` in [0, 1], labels `y` `[B]`
    /// (K = null class) → clean-image prediction `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>) -> Tensor<4> {
        self.forward_inner(x, t, y, None)
    }

    /// [`Jit::forward`] that also records named intermediate activations.
    pub fn forward_traced(&self, x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>) -> (Tensor<4>, Activations) {
        let mut acts = Vec::new();
        let out = self.forward_inner(x, t, y, Some(&mut acts));
        (out, acts)
    }

    fn forward_inner(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        y: Tensor<1, Int>,
        mut trace: Option<&mut Activations>,
    ) -> Tensor<4> {
        let mut record = |name: String, v: &Tensor<3>| {
            if let Some(acts) = trace.as_deref_mut() {
                acts.push((name, v.clone()));
            }
        };
        let cfg = &self.config;
        let mm = self.matmul;
        let t_emb = self.t_embedder.forward(t, mm);
        let y_emb = self.y_embedder.forward(y);
        record("t_emb".into(), &t_emb.clone().unsqueeze_dim(1));
        record("y_emb".into(), &y_emb.clone().unsqueeze_dim(1));
        let c_silu = ops::silu(t_emb.add(y_emb.clone()));

        // The reference records `patch_embed` with the position table already added.
        let mut h = self.x_embedder.forward(x, mm).add(self.pos_embed.val());
        record("patch_embed".into(), &h);

        let mut rope = &self.feat_rope;
        for (i, block) in self.blocks.iter().enumerate() {
            if i == cfg.in_context_start
                && let (Some(posemb), Some(rope_ic)) = (&self.in_context_posemb, &self.feat_rope_incontext)
            {
                let [b, _, d] = h.dims();
                let tokens = y_emb.clone().unsqueeze_dim::<3>(1).expand([b, cfg.in_context_len, d]).add(posemb.val());
                h = Tensor::cat(vec![tokens, h], 1);
                rope = rope_ic;
            }
            h = block.forward(h, c_silu.clone(), rope, mm);
            record(format!("block{i}"), &h);
        }
        if self.in_context_posemb.is_some() {
            let [_, tokens, _] = h.dims();
            h = h.narrow(1, cfg.in_context_len, tokens - cfg.in_context_len);
        }
        let out = self.final_layer.forward(h, c_silu, mm);
        unpatchify(out, cfg.patch_size, cfg.in_channels)
    }
}
