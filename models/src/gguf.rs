//! GGUF files (llama.cpp's format): hyper-parameters, tokenizer and chat template from the
//! metadata, weights kept quantized unless the dtype policy says otherwise.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::config::{Arch, ModelConfig, RopeLayout, RopeScaling};
use crate::cpu::Packed;
use crate::error::{ModelError, Result};
use crate::families::GgufMeta;
use crate::kernels::Kernels;
use crate::layers::{Embedding, WeightMatrix};
use crate::progress::Progress;
use crate::weights::{offset_vector, Holding, Naming, Proj, WeightDtype, WeightReader};

pub(crate) struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| ModelError::corrupt(path, format!("not a readable GGUF file: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    fn md(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn md_usize(&self, key: &str) -> Result<usize> {
        let v = self.md(key).ok_or_else(|| ModelError::Missing {
            path: self.path.clone(),
            what: format!("metadata {key}"),
        })?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .or_else(|_| v.to_i32().map(|x| x as usize))
            .map_err(|_| {
                ModelError::corrupt(&self.path, format!("metadata {key} is not an integer"))
            })
    }

    fn md_f64(&self, key: &str) -> Option<f64> {
        let v = self.md(key)?;
        v.to_f32().map(f64::from).or_else(|_| v.to_f64()).ok()
    }

    pub fn chat_template(&self) -> Option<String> {
        self.md("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
    }

    pub fn config(&self) -> Result<ModelConfig> {
        let name = self
            .md("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let arch = Arch::parse(&name).ok_or_else(|| ModelError::UnsupportedArchitecture {
            path: self.path.clone(),
            arch: name.clone(),
            supported: Arch::supported(),
        })?;
        let a = |k: &str| format!("{name}.{k}");
        let hidden = self.md_usize(&a("embedding_length"))?;
        let heads = self.md_usize(&a("attention.head_count"))?;
        let kv_heads = self
            .md_usize(&a("attention.head_count_kv"))
            .unwrap_or(heads);
        let head_dim = self
            .md_usize(&a("attention.key_length"))
            .or_else(|_| self.md_usize(&a("rope.dimension_count")))
            .unwrap_or(hidden / heads.max(1));
        let embd = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| ModelError::Missing {
                path: self.path.clone(),
                what: "tensor token_embd.weight".into(),
            })?;
        let vocab = self
            .md_usize(&a("vocab_size"))
            .unwrap_or_else(|_| embd.shape.dims()[0]);
        let invalid = |reason: String| ModelError::InvalidConfig {
            path: self.path.clone(),
            reason,
        };
        let rope_scaling = match self
            .md(&a("rope.scaling.type"))
            .and_then(|v| v.to_string().ok())
        {
            Some(t) if t == "linear" => RopeScaling::Linear {
                factor: self.md_f64(&a("rope.scaling.factor")).unwrap_or(1.0),
            },
            Some(t) if t != "none" => {
                return Err(invalid(format!("rope scaling {t:?} is not supported")))
            }
            _ => RopeScaling::None,
        };
        let mut cfg = ModelConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.md_usize(&a("feed_forward_length"))?,
            num_layers: self.md_usize(&a("block_count"))?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: self
                .md_f64(&a("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: self.md_f64(&a("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling,
            rope_layout: RopeLayout::Half,
            max_position_embeddings: self.md_usize(&a("context_length")).unwrap_or(2048),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            family: Default::default(),
        };
        let meta = Meta {
            file: self,
            arch: &name,
        };
        crate::families::from_gguf(arch, &meta, &mut cfg).map_err(invalid)?;
        cfg.validate(&self.path)?;
        Ok(cfg)
    }

    /// Size of the tensor data the header promises, to drive the progress bar.
    pub fn tensor_bytes(&self) -> u64 {
        self.content
            .tensor_infos
            .values()
            .map(|t| {
                (t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size()) as u64
            })
            .sum()
    }

    fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(ModelError::Missing {
                path: self.path.clone(),
                what: format!("tensor {name}"),
            });
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| ModelError::corrupt(&self.path, format!("tensor {name}: {e}")))
    }
}

/// Metadata keys under the file's architecture, for the family files.
struct Meta<'a> {
    file: &'a GgufFile,
    arch: &'a str,
}

impl GgufMeta for Meta<'_> {
    fn usize(&self, key: &str) -> Option<usize> {
        self.file.md_usize(&format!("{}.{key}", self.arch)).ok()
    }

    fn f64(&self, key: &str) -> Option<f64> {
        self.file.md_f64(&format!("{}.{key}", self.arch))
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.file.content.tensor_infos.contains_key(name)
    }
}

pub(crate) struct GgufReader {
    file: GgufFile,
    holding: Holding,
    device: Device,
    kernels: Kernels,
    progress: Progress,
    /// The token embedding, kept for a tied output projection.
    embed_q: Option<Arc<QTensor>>,
    /// The dequantized embedding, shared with a tied dense output projection.
    embed_dense: Option<Tensor>,
    /// The packed table a tied output projection shares.
    embed_packed: Option<Arc<Packed>>,
}

impl GgufReader {
    pub fn new(file: GgufFile, dtype: WeightDtype, device: &Device, kernels: Kernels) -> Self {
        let progress = Progress::bytes(file.tensor_bytes(), "loading weights");
        Self {
            holding: dtype.resolve(true, DType::F32, device, kernels),
            device: device.clone(),
            kernels,
            progress,
            file,
            embed_q: None,
            embed_dense: None,
            embed_packed: None,
        }
    }

    fn load(&mut self, name: &str, shape: &[usize]) -> Result<QTensor> {
        let q = self.file.tensor(name, &self.device)?;
        if q.shape().dims() != shape {
            return Err(ModelError::corrupt(
                &self.file.path,
                format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    q.shape().dims()
                ),
            ));
        }
        self.progress.inc(q.storage_size_in_bytes() as u64);
        Ok(q)
    }
}

fn check_type(path: &Path, name: &str, q: &QTensor) -> Result<()> {
    match q.dtype() {
        GgmlDType::F32
        | GgmlDType::F16
        | GgmlDType::BF16
        | GgmlDType::Q4_0
        | GgmlDType::Q4_1
        | GgmlDType::Q5_0
        | GgmlDType::Q5_1
        | GgmlDType::Q8_0
        | GgmlDType::Q2K
        | GgmlDType::Q3K
        | GgmlDType::Q4K
        | GgmlDType::Q5K
        | GgmlDType::Q6K
        | GgmlDType::Q8K => Ok(()),
        #[allow(unreachable_patterns)]
        other => Err(ModelError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            dtype: format!("{other:?}"),
        }),
    }
}

impl WeightReader for GgufReader {
    fn naming(&self) -> Naming {
        Naming::Gguf
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn kernels(&self) -> Kernels {
        self.kernels
    }

    fn activation_dtype(&self) -> DType {
        self.holding.activation_dtype()
    }

    fn matrix(&mut self, name: String, (out, inp): (usize, usize)) -> Result<WeightMatrix> {
        let q = self.load(&name, &[out, inp])?;
        check_type(&self.file.path, &name, &q)?;
        self.holding.matrix_from_q(q, &self.device)
    }

    fn matrices(&mut self, name: String, rows: &[usize], inp: usize) -> Result<Vec<WeightMatrix>> {
        let q = self.load(&name, &[rows.iter().sum(), inp])?;
        check_type(&self.file.path, &name, &q)?;
        // A row of ggml blocks is whole bytes: the fused matrix splits by byte ranges.
        let dt = q.dtype();
        let row_bytes = inp / dt.block_size() * dt.type_size();
        let data = q.data()?;
        let mut at = 0;
        rows.iter()
            .map(|&n| {
                let bytes = &data[at * row_bytes..(at + n) * row_bytes];
                at += n;
                let storage = QStorage::from_data(Cow::Borrowed(bytes), &self.device, dt)?;
                let part = QTensor::new(storage, (n, inp))?;
                self.holding.matrix_from_q(part, &self.device)
            })
            .collect()
    }

    fn vector(&mut self, name: String, len: usize, offset: f64) -> Result<Tensor> {
        let v = self.load(&name, &[len])?.dequantize(&self.device)?;
        offset_vector(v, offset, self.activation_dtype())
    }

    fn embedding(&mut self, vocab: usize, hidden: usize) -> Result<Embedding> {
        let name = Proj::Embed.name(Naming::Gguf, 0);
        let q = Arc::new(self.load(&name, &[vocab, hidden])?);
        check_type(&self.file.path, &name, &q)?;
        self.embed_q = Some(q.clone());
        let e = self.holding.embedding_from_q(q, &self.device)?;
        match &e {
            Embedding::Dense(t) => self.embed_dense = Some(t.clone()),
            Embedding::Packed(p) => self.embed_packed = Some(p.clone()),
            Embedding::Quantized(_) => {}
        }
        Ok(e)
    }

    fn lm_head(&mut self, tied: bool, shape: (usize, usize)) -> Result<WeightMatrix> {
        self.progress.finish();
        if !tied {
            return self.matrix(Proj::LmHead.name(Naming::Gguf, 0), shape);
        }
        if let Some(t) = self.embed_dense.take() {
            return Ok(WeightMatrix::Dense(t));
        }
        if let Some(p) = self.embed_packed.take() {
            return Ok(WeightMatrix::Packed(p));
        }
        let q = self
            .embed_q
            .take()
            .expect("embedding is loaded before the output projection");
        self.holding.shared_matrix(q, &self.device)
    }
}
