//! Hugging Face model directories: `config.json`, `model.safetensors` (or sharded with
//! `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`,
//! `generation_config.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use crate::error::{ModelError, Result};
use crate::kernels::Kernels;
use crate::layers::{Embedding, WeightMatrix};
use crate::progress::Progress;
use crate::tokenizer::SpecialTokens;
use crate::weights::{offset_vector, Holding, Naming, Proj, WeightDtype, WeightReader};

/// The safetensors files of a checkpoint, single or sharded.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(ModelError::Missing {
            path: dir.to_path_buf(),
            what: "model.safetensors or model.safetensors.index.json".into(),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
    let json: Json = serde_json::from_str(&text).map_err(|e| ModelError::corrupt(&index, e))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::corrupt(&index, "no weight_map"))?;
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|v| v.as_str())
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

pub(crate) struct SafetensorsReader {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    index: HashMap<String, usize>,
    holding: Holding,
    device: Device,
    kernels: Kernels,
    progress: Progress,
    embed: Option<Tensor>,
}

impl SafetensorsReader {
    pub fn open(
        paths: &[PathBuf],
        file_dtype: DType,
        dtype: WeightDtype,
        device: &Device,
        kernels: Kernels,
    ) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        let mut total = 0u64;
        for p in paths {
            if !p.exists() {
                return Err(ModelError::NotFound { path: p.clone() });
            }
            // SAFETY: the file is mapped read-only; a concurrent writer would be a user error in any
            // inference server, and candle's own loaders make the same assumption.
            let st = unsafe { MmapedSafetensors::new(p) }.map_err(|e| {
                ModelError::corrupt(p, format!("not a valid safetensors file: {e}"))
            })?;
            for (name, view) in st.tensors() {
                total += view.data().len() as u64;
                index.insert(name, files.len());
            }
            files.push((p.clone(), st));
        }
        Ok(Self {
            files,
            index,
            holding: dtype.resolve(false, file_dtype, device, kernels),
            device: device.clone(),
            kernels,
            progress: Progress::bytes(total, "loading weights"),
            embed: None,
        })
    }

    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let &i = self.index.get(name).ok_or_else(|| ModelError::Missing {
            path: self.files[0].0.clone(),
            what: format!("tensor {name}"),
        })?;
        let (path, st) = &self.files[i];
        let t = st
            .load(name, &self.device)
            .map_err(|e| ModelError::corrupt(path, format!("tensor {name}: {e}")))?;
        if t.dims() != shape {
            return Err(ModelError::corrupt(
                path,
                format!("tensor {name} has shape {:?}, expected {shape:?}", t.dims()),
            ));
        }
        match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => {}
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: path.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        }
        self.progress
            .inc((t.elem_count() * t.dtype().size_in_bytes()) as u64);
        Ok(t)
    }
}

impl WeightReader for SafetensorsReader {
    fn naming(&self) -> Naming {
        Naming::Hf
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
        let t = self.load(&name, &[out, inp])?;
        self.holding.matrix_from_dense(t)
    }

    fn matrices(&mut self, name: String, rows: &[usize], inp: usize) -> Result<Vec<WeightMatrix>> {
        let t = self.load(&name, &[rows.iter().sum(), inp])?;
        let mut at = 0;
        rows.iter()
            .map(|&n| {
                let part = t.narrow(0, at, n)?.contiguous()?;
                at += n;
                self.holding.matrix_from_dense(part)
            })
            .collect()
    }

    fn vector(&mut self, name: String, len: usize, offset: f64) -> Result<Tensor> {
        let v = self.load(&name, &[len])?;
        offset_vector(v, offset, self.activation_dtype())
    }

    fn embedding(&mut self, vocab: usize, hidden: usize) -> Result<Embedding> {
        let t = self
            .load(&Proj::Embed.name(Naming::Hf, 0), &[vocab, hidden])?
            .to_dtype(self.activation_dtype())?;
        self.embed = Some(t.clone());
        Ok(Embedding::Dense(t))
    }

    fn lm_head(&mut self, tied: bool, shape: (usize, usize)) -> Result<WeightMatrix> {
        self.progress.finish();
        let name = Proj::LmHead.name(Naming::Hf, 0);
        if !tied || self.index.contains_key(&name) {
            return self.matrix(name, shape);
        }
        let e = self
            .embed
            .take()
            .expect("embedding is loaded before the output projection");
        self.holding.matrix_from_dense(e)
    }
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::corrupt(path, format!("invalid JSON: {e}")))
}

/// A special token in `tokenizer_config.json`: a string or an `AddedToken` object.
fn token_str(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

/// Tokenizer settings and chat template of a directory.
pub(crate) struct HfTokenizerFiles {
    pub special: SpecialTokens,
    pub chat_template: Option<String>,
}

pub(crate) fn tokenizer_files(dir: &Path) -> Result<HfTokenizerFiles> {
    let cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let gen = read_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
    let jinja = dir.join("chat_template.jinja");
    // transformers v5 writes the template to its own file and prefers it over the config copy.
    let chat_template = if jinja.exists() {
        Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?)
    } else {
        match cfg.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template")?.as_str().map(String::from)),
            _ => None,
        }
    };
    let extra_stop_ids = match gen.get("eos_token_id") {
        Some(Json::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    };
    Ok(HfTokenizerFiles {
        special: SpecialTokens {
            bos_token: token_str(cfg.get("bos_token")),
            eos_token: token_str(cfg.get("eos_token")),
            add_bos_token: false,
            extra_stop_ids,
        },
        chat_template,
    })
}

/// The dtype the checkpoint was saved in (drives `auto` on GPUs).
pub(crate) fn file_dtype(name: Option<&str>) -> DType {
    match name {
        Some("float16") => DType::F16,
        Some("bfloat16") => DType::BF16,
        _ => DType::F32,
    }
}
