//! Weight names: which tensor of a Llama layer (or of the model) is which, in either file
//! format. Apart from the readers, so that layers and adapters can name projections without
//! depending on how weights are read.

/// Weight naming scheme of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// transformers: `model.layers.N.self_attn.q_proj.weight`.
    Hf,
    /// llama.cpp: `blk.N.attn_q.weight`.
    Gguf,
}

/// The weights of a Llama layer (and the model-level ones).
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
    MlpNorm,
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
}
