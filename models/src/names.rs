//! Weight names: which tensor of a layer (or of the model) is which, in either file format. Apart from the readers, so that layers and adapters can name projections without
//! depending on how weights are read.

/// Weight naming scheme of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// transformers: `model.layers.N.self_attn.q_proj.weight`.
    Hf,
    /// llama.cpp: `blk.N.attn_q.weight`.
    Gguf,
}

/// The weights of a layer (and the model-level ones). Some names mean different tensors in
/// different families (`post_attention_layernorm` is Llama's pre-MLP norm and Gemma's norm of
/// the attention output); each family's blocks ask for the variant they have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    AttnNorm,
    /// The norm before the MLP (Llama's `post_attention_layernorm`).
    MlpNorm,
    /// Qwen3, Gemma 3: per-head norms of q and k.
    QNorm,
    KNorm,
    /// Gemma 3: the norm of the attention output.
    PostAttnNorm,
    /// Gemma 3: the norm before the MLP.
    PreMlpNorm,
    /// Gemma 3: the norm of the MLP output.
    PostMlpNorm,
    /// Phi-3: q, k and v as one matrix.
    Qkv,
    /// Phi-3: gate and up as one matrix (gate first).
    GateUp,
    FinalNorm,
    Embed,
    LmHead,
}

impl Proj {
    /// The projections a LoRA adapter can target, in layer order.
    pub const ADAPTABLE: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    pub fn name(self, naming: Naming, layer: usize) -> String {
        let (hf, gguf) = match self {
            Proj::Q => ("self_attn.q_proj", "attn_q"),
            Proj::K => ("self_attn.k_proj", "attn_k"),
            Proj::V => ("self_attn.v_proj", "attn_v"),
            Proj::O => ("self_attn.o_proj", "attn_output"),
            Proj::Gate => ("mlp.gate_proj", "ffn_gate"),
            Proj::Up => ("mlp.up_proj", "ffn_up"),
            Proj::Down => ("mlp.down_proj", "ffn_down"),
            Proj::AttnNorm => ("input_layernorm", "attn_norm"),
            Proj::MlpNorm => ("post_attention_layernorm", "ffn_norm"),
            Proj::QNorm => ("self_attn.q_norm", "attn_q_norm"),
            Proj::KNorm => ("self_attn.k_norm", "attn_k_norm"),
            Proj::PostAttnNorm => ("post_attention_layernorm", "post_attention_norm"),
            Proj::PreMlpNorm => ("pre_feedforward_layernorm", "ffn_norm"),
            Proj::PostMlpNorm => ("post_feedforward_layernorm", "post_ffw_norm"),
            Proj::Qkv => ("self_attn.qkv_proj", "attn_qkv"),
            Proj::GateUp => ("mlp.gate_up_proj", "ffn_up"),
            Proj::FinalNorm => {
                return match naming {
                    Naming::Hf => "model.norm.weight".into(),
                    Naming::Gguf => "output_norm.weight".into(),
                }
            }
            Proj::Embed => {
                return match naming {
                    Naming::Hf => "model.embed_tokens.weight".into(),
                    Naming::Gguf => "token_embd.weight".into(),
                }
            }
            Proj::LmHead => {
                return match naming {
                    Naming::Hf => "lm_head.weight".into(),
                    Naming::Gguf => "output.weight".into(),
                }
            }
        };
        match naming {
            Naming::Hf => format!("model.layers.{layer}.{hf}.weight"),
            Naming::Gguf => format!("blk.{layer}.{gguf}.weight"),
        }
    }

    /// The bias beside a projection's weight (Qwen2's q, k and v).
    pub fn bias_name(self, naming: Naming, layer: usize) -> String {
        let w = self.name(naming, layer);
        format!("{}.bias", w.strip_suffix(".weight").unwrap_or(&w))
    }
}
